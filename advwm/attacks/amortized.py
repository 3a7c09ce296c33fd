"""Amortized protection (`scope=amortized`): train a generator whose one forward pass protects any new face.

TAFIM (Aneja et al., ECCV 2022) trains a network that outputs each image's perturbation against face-manipulation
models; here the same engine that crafts CMUA's universal watermark and CDMAA's per-image perturbations trains it.
One training step on a batch x:

    delta = eps * tanh(g_theta(x))            advwm.attacks.generator (|delta| <= eps by construction)
    p = clamp(x + delta, -1, 1)               the protected faces, once per step (`batch_protected`)
    d_b = the aggregator's direction          each victim's per-image gradient dL/dp at p (cross-domain mode, DI2,
                                              EOT, micro-batching, bf16 for the victims only: the engine's services),
                                              its regulariser, then MGDA / uniform / iterative / single, per face
    u_b = d_b / rms(d_b)                      each face one vote (see below)
    theta <- optimiser step on -(1/B) sum_b <p_b, u_b>    (`AmortizedAttack.ascend`)

The surrogate's gradient is -(1/B) sum_b J_b^T u_b with J_b = dp_b/dtheta: each face's ascent direction (for MGDA its
common-ascent direction over the victims) pulled back to the weights and averaged over the faces; the optimiser
descends the surrogate, so it ascends the victims' losses (tests/test_amortized.py checks the step against a hand
formula and finite differences). The clamp's zero derivative where x + delta leaves [-1, 1] reaches theta through
autograd.

Why each face's direction is scaled to unit root mean square: so that every face weighs alike in the update whatever
the scale of its loss (CMUA's reason for signing each image's gradient before a universal watermark's step), and
because the regularisers make the directions' scale arbitrary: with `regularizer=penalty` on small random victims
they were ~1e-14, which Adam's epsilon (1e-8) swallowed: measured, MGDA + penalty then left the weights unchanged
over 200 steps. A face whose direction is zero stays zero.

Refused, each in one line: sign-step base attacks (they step one perturbation; the weights need a gradient
optimiser, `attack=adam`), and CMUA fusion (`aggregator=cmua`, `cmua_reference`: it blends sign-step proposals of a
single watermark, and a generator has no proposal to blend; its image-level vote has no meaning per face either).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from advwm.attacks.aggregators.base import Aggregator, Iteration
from advwm.attacks.generator import PerturbationGenerator
from advwm.attacks.module import WatermarkAttack
from advwm.attacks.scopes import OneRowPerFace
from advwm.attacks.steps import BaseAttack, SignStepAttack

__all__ = ["Amortized", "AmortizedAttack", "GeneratorTraining"]


@dataclass
class GeneratorTraining(BaseAttack):
    """The optimiser over the generator's weights (`attack=adam`): a torch optimiser (`optimizer`, a partial of its
    class), learning rate `step_size`, `iterations` steps on each batch before the next (1: each batch once per
    epoch; the epochs are `trainer.max_epochs`). `diversity` (DI2) transforms the victims' inputs as for the other
    scopes."""

    trains_generator: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        kind = self.optimizer_class
        if not (isinstance(kind, type) and issubclass(kind, Optimizer)) or issubclass(kind, SignStepAttack):
            raise ValueError(f"attack.optimizer={getattr(kind, '__name__', kind)} is not a gradient optimiser for the "
                             "generator's weights: choose a torch.optim class, e.g. torch.optim.Adam (attack=adam)")

    @property
    def scheduled(self) -> bool:
        return False

    @property
    def proposes(self) -> bool:
        return False

    @property
    def replays_released_pgd(self) -> bool:
        return False

    def build(self, params: Any, eps: float, schedule_length: int) -> Optimizer:
        """The optimiser over the weights, learning rate `step_size` (eps bounds delta through tanh, not here)."""
        return self.optimizer(params, lr=self.step_size)


class Amortized(OneRowPerFace):
    """A generator g maps each face to its own perturbation eps * tanh(g(x)); trained on the crafting split, judged
    on the held-out faces (which it never saw), saved as generator.pt.

    `width`, `depth`, `gain`: the generator (advwm.attacks.generator). Rows are the batch's faces, like per image,
    but the step counter runs over the whole training (the iterative modes take their turns across steps).
    """

    name = "amortized"
    judges_held_out = True
    allows_ddp = True  # Lightning's DDP averages the weights' gradients over processes (manual_backward)
    saves = "generator"

    def __init__(self, width: int = 32, depth: int = 3, gain: float = 3.0) -> None:
        if isinstance(width, bool) or isinstance(depth, bool) or int(width) != width or int(depth) != depth \
                or width < 1 or depth < 1:
            raise ValueError(f"scope.width and scope.depth must be whole numbers >= 1, got {width} and {depth}")
        if isinstance(gain, bool) or not 0 < gain < float("inf"):
            raise ValueError(f"scope.gain must be a finite number > 0, got {gain}")
        self.width, self.depth, self.gain = int(width), int(depth), float(gain)

    def architecture(self) -> dict[str, Any]:
        return {"width": self.width, "depth": self.depth, "gain": self.gain}

    def local_step(self, iteration: int, repetition: int) -> int:
        return iteration  # one generator over the whole run

    def fused_step_signed(self) -> bool:
        return True  # not reached: CMUA fusion is refused (check)

    def check(self, *, attack: BaseAttack, aggregator: Aggregator) -> None:
        if not attack.trains_generator:
            raise ValueError(f"scope=amortized trains a generator's weights with a gradient optimiser, and "
                             f"{attack.label} takes sign steps on one perturbation: choose attack=adam")
        if not aggregator.combines_into_one_direction:
            raise ValueError("scope=amortized back-propagates one combined direction per face into the generator, and "
                             "CMUA fusion blends sign-step proposals of a single watermark, which a generator does not "
                             "have: choose aggregator=mgda, uniform, iterative or single")

    def engine_class(self) -> type[WatermarkAttack]:
        return AmortizedAttack

    def __repr__(self) -> str:
        return f"Amortized(width={self.width}, depth={self.depth}, gain={self.gain})"


class AmortizedAttack(WatermarkAttack):
    """The engine for `scope=amortized`: its training steps update the generator's weights (the only parameters,
    so the checkpoints hold them and the optimiser's state, and DDP all-reduces their gradients)."""

    scope: Amortized

    def _create_trained_state(self, batch_size: int, image_size: int) -> None:
        with torch.random.fork_rng(devices=[]):  # the start depends on the seed alone, not on what ran before
            torch.manual_seed(self.seed)
            self.generator = PerturbationGenerator(self.eps, **self.scope.architecture())
        self._current: tuple[Iteration, Tensor] | None = None

    def configure_optimizers(self) -> Optimizer:
        return self.attack.build(list(self.generator.parameters()), eps=self.eps,
                                 schedule_length=self.attack.iterations)

    def delta(self, x: Tensor) -> Tensor:
        """The generator's perturbation of each face, within [-eps, eps]."""
        return self.generator(x)

    def protect(self, x: Tensor) -> Tensor:
        """x + g(x), kept in the valid image range [-1, 1] (for any faces: the judge's held-out ones too)."""
        return (x + self.generator(x)).clamp(-1.0, 1.0)

    def batch_protected(self, iteration: Iteration) -> Tensor:
        """The iteration's protected faces, computed once with the graph to the weights (the victims' gradients are
        taken at it, detached; `ascend` back-propagates through it)."""
        if self._current is None or self._current[0] is not iteration:
            self._current = (iteration, self.protect(iteration.x))
        return self._current[1]

    def ascend(self, direction: Tensor, loss: Tensor, iteration: Iteration, needed: Sequence[int]) -> None:
        """The combined per-face direction d [B,3,H,W] into the weights: the surrogate -(1/B) sum_b <p_b, u_b>,
        u_b = d_b / rms(d_b), is back-propagated (Lightning's manual_backward: under DDP each process holds B/W faces
        and the gradients are averaged, the mean over the global batch) and the optimiser steps (counted as the
        iteration)."""
        protected = self.batch_protected(iteration)
        surrogate = -(protected * unit_rms(direction.detach()).to(protected.dtype)).sum() / protected.shape[0]
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(surrogate)
        optimizer.step()
        self._current = None  # the graph is spent

    def watermark(self) -> Tensor:
        raise TypeError("scope=amortized has no single watermark: its generator gives each face its own (delta(x))")


def unit_rms(direction: Tensor) -> Tensor:
    """Each row [b, ...] divided by its root mean square (a zero row stays zero)."""
    rms = direction.pow(2).flatten(1).mean(dim=1).sqrt()
    return direction / torch.where(rms > 0, rms, torch.ones_like(rms)).view(-1, *([1] * (direction.dim() - 1)))


def generator_optimizer(name: str = "adam", step_size: float = 1e-3, **options: Any) -> GeneratorTraining:
    """`attack=adam` from Python: torch.optim.Adam (`options` go to it), learning rate `step_size`, one step a batch."""
    return GeneratorTraining(functools.partial(torch.optim.Adam, **options), step_size=step_size, iterations=1,
                             name=name)
