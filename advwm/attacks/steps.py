"""Base attacks as ``torch.optim.Optimizer`` subclasses over the perturbation parameter.

Why optimizers: Lightning checkpoints an optimizer's ``state_dict`` for free, so momentum buffers and the
APGD schedule survive a resume. Every attack here *ascends* the loss (we maximise the distortion) and
projects onto the L_inf ball of radius ``eps``; the image-range projection (x + delta in [-1, 1]) is the
caller's job because only the caller knows x.

The perturbation has shape [P, 3, H, W] (P = 1 universal, P = B per image); "per row" means per index of
the first dimension.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from advwm.attacks.diversity import InputDiversity

__all__ = [
    "APGD",
    "IFGSM",
    "MIFGSM",
    "PGD",
    "BaseAttack",
    "SignStepAttack",
    "apgd_checkpoints",
]

_TINY = 1e-12


def _as_param_list(params: Any) -> Any:
    """Accept a bare tensor too: ``Optimizer`` rejects one, but a single perturbation is our common case."""
    if isinstance(params, Tensor):
        return [params]
    return params


def _rows(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-row vector [P] so it broadcasts against a [P, ...] tensor."""
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1)))


class SignStepAttack(Optimizer):
    """Common base: sign-gradient ascent step followed by projection onto the eps-ball.

    Subclasses change ``direction`` (e.g. momentum) or ``step`` (APGD's schedule). ``propose`` computes a
    step without writing the parameter, so the CMUA fusion aggregator can blend proposals itself.
    """

    #: True when the step follows a schedule over a known number of iterations (APGD): no stateless proposals
    scheduled: ClassVar[bool] = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Tensor,
        eps: float = 0.05,
        step_size: float = 0.01,
        start_radius: float | None = 0.0,
        **extra_defaults: Any,
    ) -> None:
        if not eps >= 0:  # also refuses NaN
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not step_size >= 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        if start_radius is not None and not start_radius >= 0:
            raise ValueError(f"start_radius must be >= 0 (or None for the whole eps-ball), got {start_radius}")
        defaults = {"eps": float(eps), "lr": float(step_size),
                    "start_radius": None if start_radius is None else float(start_radius)}
        defaults.update(extra_defaults)
        super().__init__(_as_param_list(params), defaults)

    # -- helpers -----------------------------------------------------------------------------------
    def _group_of(self, p: Tensor) -> dict[str, Any]:
        """The param group holding ``p`` (eps and step size may differ between groups)."""
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        return self.param_groups[0]

    # -- public API --------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, generator: torch.Generator | None = None) -> None:
        """Reset every parameter to its start point and forget all state.

        The start is U(-r, r) per entry with r = ``start_radius`` (None: the whole eps-ball, r = eps; 0: exactly
        zero). Noise is drawn on the CPU, so a seeded generator gives the same start on every device.
        """
        for group in self.param_groups:
            radius = group["eps"] if group["start_radius"] is None else min(group["start_radius"], group["eps"])
            for p in group["params"]:
                if radius > 0:
                    noise = torch.rand(p.shape, generator=generator, dtype=p.dtype, device="cpu")
                    p.copy_((noise * 2.0 - 1.0) * radius)
                else:
                    p.zero_()
                self.state[p] = {}

    def wants_final_loss(self) -> bool:
        """True when the attack has taken its last step and needs the loss there (APGD keeps the best point)."""
        return False

    @torch.no_grad()
    def finish(self, loss: Tensor) -> None:
        """Called with the per-row loss at the current point after the last step; sign attacks keep it."""

    def direction(self, p: Tensor, grad: Tensor) -> Tensor:
        """Ascent direction for a raw gradient: its sign (the L_inf steepest-ascent direction)."""
        return grad.sign()

    def project(self, delta: Tensor, eps: float | None = None) -> Tensor:
        """Clamp onto the L_inf ball of radius eps (the first group's eps unless given)."""
        if eps is None:
            eps = self.param_groups[0]["eps"]
        return delta.clamp(-eps, eps)

    @torch.no_grad()
    def propose(self, p: Tensor, grad: Tensor, step_size: float, signed: bool = True) -> Tensor:
        """``project(p + step_size * direction)`` without writing ``p`` (may update momentum).

        ``signed=False`` (CMUA's fused step ``mean``) steps along ``grad`` itself: for a universal
        watermark ``grad`` is then the batch mean of the signed per-image gradients, so the step is the
        batch mean of the per-image sign steps, as the released CMUA code takes it. Momentum attacks
        always sign their accumulated direction (MI-FGSM's definition), so for them both are the same.
        """
        eps = self._group_of(p)["eps"]
        direction = self.direction(p, grad) if signed or type(self).direction is not SignStepAttack.direction else grad
        return self.project(p + step_size * direction, eps)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, loss: Tensor | None = None
    ) -> Any:
        """One ascent step on every parameter that has a gradient; ``loss`` is unused by sign attacks."""
        result = None
        if closure is not None:
            with torch.enable_grad():
                result = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.copy_(self.propose(p, p.grad, group["lr"]))
        return result


# I-FGSM's start radius: the distortion's gradient at the clean image is exactly zero (G(x) is the target),
# so x0 = x never moves; the released CMUA code's comments start I-FGSM from x + U(-0.001, 0.001).
IFGSM_START_RADIUS = 0.001


class IFGSM(SignStepAttack):
    """I-FGSM / BIM (Kurakin et al. 2017): sign steps from x plus noise of a tiny radius (``start_radius``).

    ``start_radius=0`` is the textbook x0 = x, which stays stuck here (zero gradient at the clean image).
    """

    def __init__(
        self, params: Any, eps: float = 0.05, step_size: float = 0.01, start_radius: float = IFGSM_START_RADIUS
    ) -> None:
        super().__init__(params, eps=eps, step_size=step_size, start_radius=start_radius)


class PGD(SignStepAttack):
    """PGD (Madry et al. 2018): like I-FGSM but starting from a uniform point of the whole eps-ball."""

    def __init__(
        self, params: Any, eps: float = 0.05, step_size: float = 0.01, start_radius: float | None = None
    ) -> None:
        super().__init__(params, eps=eps, step_size=step_size, start_radius=start_radius)


class MIFGSM(SignStepAttack):
    """MI-FGSM (Dong et al. 2018): g <- decay * g + grad / ||grad||_1 (per row), step along sign(g).

    The L1 normalisation is per row so that, for per-image perturbations, each image's momentum is
    independent of the scale of the other images' gradients.
    """

    def __init__(
        self,
        params: Any,
        eps: float = 0.05,
        step_size: float = 0.01,
        start_radius: float | None = IFGSM_START_RADIUS,
        decay: float = 1.0,
    ) -> None:
        super().__init__(params, eps=eps, step_size=step_size, start_radius=start_radius, decay=float(decay))

    def direction(self, p: Tensor, grad: Tensor) -> Tensor:
        """Accumulate the L1-normalised gradient into the momentum buffer and return its sign."""
        state = self.state[p]
        decay = self._group_of(p)["decay"]
        l1 = grad.reshape(grad.shape[0], -1).abs().sum(dim=1).clamp_min(_TINY)
        normalised = grad / _rows(l1, grad)
        momentum = state.get("momentum")
        if momentum is None or momentum.shape != grad.shape:
            momentum = torch.zeros_like(grad)
        momentum = decay * momentum + normalised
        state["momentum"] = momentum
        return momentum.sign()


def apgd_checkpoints(n_iter: int) -> list[int]:
    """APGD checkpoint iterations w_j = ceil(p_j * n_iter), p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1.

    The fractions are multiples of 0.01, so they are kept in integer hundredths: floating point would make
    ceil(0.41 * 100) = 42.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    fractions = [0, 22]  # hundredths
    while True:
        nxt = fractions[-1] + max(fractions[-1] - fractions[-2] - 3, 6)
        if nxt > 100:
            break
        fractions.append(nxt)
    points: list[int] = []
    for f in fractions:
        w = -(-f * n_iter // 100)  # exact integer ceil
        if not points or w > points[-1]:
            points.append(w)
    return points


class APGD(SignStepAttack):
    """APGD, L_inf (Croce & Hein, ICML 2020), as ascent on our loss.

    Schedule: step size eta = 2 * eps (per row) unless ``step_size_override``; first step
    x_1 = P(x_0 + eta sign(g_0)); then z = P(x_k + eta sign(g_k)) and
    x_{k+1} = P(x_k + momentum (z - x_k) + (1 - momentum)(x_k - x_{k-1})). At checkpoint w_j (see
    ``apgd_checkpoints``), per row, halve eta and restart from the best point x_max if
    (1) fewer than rho * (w_j - w_{j-1}) of the transitions since w_{j-1} increased the loss, or
    (2) eta and the best loss are both unchanged since w_{j-1} (as in the paper, this can fire at the
    first checkpoint; the AutoAttack code disables it there).

    ``step(loss=...)`` must receive the loss PER ROW at the current point (before the step) with the
    parameter's ``.grad`` at that point; the iteration counter is the number of ``step`` calls since
    ``initialize``. Deviation kept on purpose: after a restart the momentum term is zero (x_{k-1} := x_max),
    and the step from x_max uses the gradient stored with x_max, as AutoAttack does.
    """

    scheduled = True

    def __init__(
        self,
        params: Any,
        eps: float = 0.05,
        step_size: float = 0.01,
        start_radius: float | None = None,
        n_iter: int = 100,
        rho: float = 0.75,
        momentum: float = 0.75,
        step_size_override: bool = False,
    ) -> None:
        super().__init__(params, eps=eps, step_size=step_size, start_radius=start_radius)
        self.n_iter = int(n_iter)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.step_size_override = bool(step_size_override)
        self.checkpoints: list[int] = apgd_checkpoints(self.n_iter)

    def _initial_step_size(self, group: dict[str, Any]) -> float:
        return float(group["lr"]) if self.step_size_override else 2.0 * float(group["eps"])

    @property
    def step_sizes(self) -> Tensor:
        """Current per-row step sizes of the first parameter (the initial ones before any step)."""
        group = self.param_groups[0]
        p = group["params"][0]
        state = self.state[p]
        if "step_size" in state:
            return state["step_size"].clone()
        return torch.full((p.shape[0],), self._initial_step_size(group), dtype=p.dtype, device=p.device)

    def propose(self, p: Tensor, grad: Tensor, step_size: float, signed: bool = True) -> Tensor:
        """Not meaningful for APGD, whose step depends on its own history and schedule."""
        raise NotImplementedError(
            "APGD cannot be used with CMUA fusion: its step depends on its own schedule and history, "
            "so it cannot propose a stateless step to blend; use pgd, ifgsm or mifgsm with cmua."
        )

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, loss: Tensor | None = None
    ) -> Any:
        """One APGD iteration per parameter; ``loss`` is the per-row loss at the current point."""
        result = None
        if closure is not None:
            with torch.enable_grad():
                result = closure()
        if loss is None and isinstance(result, Tensor):
            loss = result
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue  # nothing to do (also lets a caller count a step without moving delta)
                if loss is None:
                    raise ValueError("APGD.step needs the per-row loss at the current point: step(loss=...)")
                row_loss = loss.detach().to(device=p.device, dtype=p.dtype).reshape(-1)
                if row_loss.numel() == 1 and p.shape[0] != 1:
                    row_loss = row_loss.expand(p.shape[0])
                if row_loss.numel() != p.shape[0]:
                    raise ValueError(f"loss has {row_loss.numel()} entries, delta {p.shape[0]} rows")
                self._apgd_update(p, p.grad.detach(), row_loss, group)
        return result

    def wants_final_loss(self) -> bool:
        """After the n_iter-th step: the last point's loss decides whether it or an earlier one is returned."""
        state = self.state[self.param_groups[0]["params"][0]]
        return state.get("iteration", 0) >= self.n_iter and not state.get("finished", False)

    @torch.no_grad()
    def finish(self, loss: Tensor) -> None:
        """Return x_max, the best point seen (Croce & Hein 2020, Algorithm 1), not the last iterate.

        ``loss`` is the per-row loss at the current (last) point; per row, the parameter becomes the last
        point if its loss beats every earlier one, else the best earlier point.
        """
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "best" not in state:
                    continue
                row_loss = loss.detach().to(device=p.device, dtype=p.dtype).reshape(-1).expand(p.shape[0])
                improved = row_loss > state["best_loss"]
                state["best"][improved] = p.detach()[improved]
                state["best_loss"] = torch.where(improved, row_loss, state["best_loss"])
                p.copy_(state["best"])
                state["finished"] = True

    def _apgd_update(self, p: Tensor, grad: Tensor, loss: Tensor, group: dict[str, Any]) -> None:
        """The per-parameter APGD bookkeeping and update (writes ``p``)."""
        state = self.state[p]
        eps = group["eps"]
        x = p.detach().clone()
        g = grad.clone()
        if state.get("iteration", 0) == 0:
            eta = torch.full_like(loss, self._initial_step_size(group))
            state.update(
                iteration=0,
                step_size=eta,
                best=x.clone(),
                best_loss=loss.clone(),
                best_grad=g.clone(),
                last_loss=loss.clone(),
                increases=torch.zeros_like(loss),
                best_loss_at_check=loss.clone(),
                step_size_at_check=eta.clone(),
            )
            new = self.project(x + _rows(eta, x) * g.sign(), eps)
        else:
            t = state["iteration"]
            improved = loss > state["best_loss"]
            state["best"][improved] = x[improved]
            state["best_grad"][improved] = g[improved]
            state["best_loss"] = torch.where(improved, loss, state["best_loss"])
            state["increases"] = state["increases"] + (loss > state["last_loss"]).to(loss.dtype)
            state["last_loss"] = loss.clone()
            prev = state["prev"].clone()
            if t in self.checkpoints[1:]:
                j = self.checkpoints.index(t)
                span = self.checkpoints[j] - self.checkpoints[j - 1]
                cond1 = state["increases"] < self.rho * span
                cond2 = (state["step_size"] == state["step_size_at_check"]) & (
                    state["best_loss"] == state["best_loss_at_check"]
                )
                restart = cond1 | cond2
                # eta as it was when reaching this checkpoint: "unchanged" next time = not halved now
                state["step_size_at_check"] = state["step_size"].clone()
                state["step_size"] = torch.where(restart, state["step_size"] / 2.0, state["step_size"])
                state["best_loss_at_check"] = state["best_loss"].clone()
                state["increases"] = torch.zeros_like(loss)
                if bool(restart.any()):
                    x[restart] = state["best"][restart]
                    g[restart] = state["best_grad"][restart]
                    prev[restart] = state["best"][restart]
                    state["last_loss"] = torch.where(restart, state["best_loss"], state["last_loss"])
            eta = _rows(state["step_size"], x)
            z = self.project(x + eta * g.sign(), eps)
            m = self.momentum
            new = self.project(x + m * (z - x) + (1.0 - m) * (x - prev), eps)
        state["prev"] = x
        state["iteration"] = state["iteration"] + 1
        p.copy_(new)


@dataclass
class BaseAttack:
    """A base attack as configured: the optimizer that takes the steps, its step size, how many iterations a
    batch gets, and the input diversity (DI2) its victims' inputs go through.

    `optimizer` is the class or a partial of it (Hydra's `_partial_: true`, as lightning-hydra-template does
    for its optimizer): `build` completes it over the perturbation once the engine knows eps and how long
    one perturbation lives (APGD's checkpoint schedule needs that length).
    """

    optimizer: Callable[..., SignStepAttack]
    step_size: float = 0.01
    iterations: int = 10
    diversity: InputDiversity | None = None
    name: str | None = None
    #: True for the optimiser of scope=amortized's generator (advwm.attacks.amortized.GeneratorTraining)
    trains_generator: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"attack.step_size must be a finite number > 0, got {self.step_size}")
        if int(self.iterations) < 1:
            raise ValueError(f"attack.iterations must be >= 1, got {self.iterations}")
        self.iterations = int(self.iterations)
        if self.diversity is not None and self.diversity.prob <= 0:
            self.diversity = None  # DI2 with probability 0 is no input diversity

    @property
    def optimizer_class(self) -> type[SignStepAttack]:
        return self.optimizer.func if isinstance(self.optimizer, functools.partial) else self.optimizer

    @property
    def label(self) -> str:
        return f"attack={self.name}" if self.name else self.optimizer_class.__name__

    @property
    def scheduled(self) -> bool:
        """Whether the optimizer follows a schedule over a known number of steps (APGD)."""
        return self.optimizer_class.scheduled

    @property
    def proposes(self) -> bool:
        """Whether a stateless step can be proposed (CMUA fusion blends proposals): not APGD."""
        return not self.scheduled

    @property
    def replays_released_pgd(self) -> bool:
        """PGD with no input diversity: what the released CMUA loop runs."""
        return self.optimizer_class is PGD and self.diversity is None

    def build(self, params: Any, eps: float, schedule_length: int) -> SignStepAttack:
        """The optimizer over `params`; `schedule_length` = the steps one perturbation gets (APGD's n_iter)."""
        extra = {"n_iter": schedule_length} if self.scheduled else {}
        return self.optimizer(params, eps=eps, step_size=self.step_size, **extra)
