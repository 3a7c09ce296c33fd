"""The released CMUA-Watermark loop, replayed exactly: `cmua_reference_watermark`.

Why a second CMUA: the paper's algorithm (`aggregator=cmua`) and the code the paper's numbers come from
differ (the released loop blends after every inner PGD step, restarts from noise for every condition,
scales the whole displacement by the per-victim factor, and runs HiSD differently). Researchers who
compare with the published tables need the released loop itself; this function is it, usable without
Lightning or Hydra, and `aggregator=cmua_reference` runs this same function one batch per training
step. `../shared/fixtures/cmua_reference/` (the released code run on seeded networks, its noise
recorded) checks it to the last bit.

The loop, per batch X_nat and per victim j in the given order, per condition c of victim j:
  y = G_j(X_nat, c) without gradients (HiSD: + 0.002, `CONTINUING`);
  X = X_nat + U(-eps, eps) (one draw per condition; HiSD: X_nat + W *unclamped*, or X_nat before W exists);
  `iterations` times:
      g = d MSE(G_j(X, c), y) / dX        (nn.MSELoss: the mean over every element of the batch)
      eta = mean over the batch of clamp(f_j * (X + a * sign(g) - X_nat), -eps, eps)
      W = eta the very first time, else alpha * W + (1 - alpha) * eta
      X = clamp(X_nat + W, -1, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from advwm.attacks.losses import NonFiniteLossError, distortion

__all__ = ["CONTINUING", "cmua_reference_watermark"]

# Victims whose released loop continues from X_nat + W instead of restarting from noise, with the offset
# that loop adds to the clean target (universal_perturb_HiSD: y = G(x) + 0.002, no random start).
CONTINUING: dict[str, float] = {"hisd": 0.002}

Reduce = Callable[[Tensor], Tensor]


def _uniform_noise(eps: float, generator: torch.Generator | None) -> Callable[[Tensor], Tensor]:
    """Fresh U(-eps, eps) restart noise shaped like the batch (drawn on the CPU so a seed is device-free)."""

    def draw(like: Tensor) -> Tensor:
        noise = torch.rand(like.shape, generator=generator, dtype=like.dtype) * (2.0 * eps) - eps
        return noise.to(like.device)

    return draw


def _given_noise(noise: Iterator[Tensor]) -> Callable[[Tensor], Tensor]:
    """Restart noise taken from `noise` in draw order, checked against the batch's shape."""

    def draw(like: Tensor) -> Tensor:
        try:
            tensor = next(noise)
        except StopIteration:
            raise ValueError("the noise iterator ran out before the loop finished") from None
        tensor = torch.as_tensor(tensor)
        if tuple(tensor.shape) != tuple(like.shape):
            raise ValueError(f"noise tensor of shape {tuple(tensor.shape)} for a batch of shape {tuple(like.shape)}")
        return tensor.to(device=like.device, dtype=like.dtype)

    return draw


def _ascent_gradient(victim: torch.nn.Module, current: Tensor, condition: Tensor,
                     target: Tensor) -> tuple[Tensor, Tensor]:
    """(d loss / d current, loss) with loss = the batch-mean MSE, as nn.MSELoss computes it."""
    current = current.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = distortion(victim(current, condition), target).mean()
        (grad,) = torch.autograd.grad(loss, current)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"victim {victim.name} produced a non-finite loss "
                                 "(check its checkpoint and the images)")
    return grad, loss.detach()


def cmua_reference_watermark(
    victims: Sequence[torch.nn.Module],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    factors: Mapping[str, float],
    eps: float,
    step_size: float,
    iterations: int,
    noise: Iterable[Tensor] | None = None,
    generator: torch.Generator | None = None,
    watermark: Tensor | None = None,
    alpha: float = 0.5,
    reduce: Reduce | None = None,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Run the released CMUA-Watermark loop over `batches`; returns (watermark [3,H,W], trace).

    victims: advwm `Victim`s in loop order (the released `universal_attack.py` runs stargan, aggan, hisd,
        attgan). batches: (images [B,3,H,W] in [-1,1], CelebA labels [B,40] 0/1) pairs, in loader order.
    factors: victim name -> the released code's per-victim factor f_j (missing names: 1).
    noise: restart tensors [B,3,H,W], consumed in the order the loop draws them (one per batch, restarting
        victim and condition); default: fresh U(-eps, eps) from `generator`.
    watermark: the watermark to continue from ([3,H,W] or [1,3,H,W]); None = the loop has not blended yet,
        so its first blend takes eta as it is.
    reduce: applied to each eta before blending (DDP: the mean over processes); identity by default.
    trace: one entry per (batch, victim), in order: {"batch", "victim", "up" [3,H,W], "loss"} where "up" is
        the watermark after that victim's last condition of that batch and "loss" its last inner loss.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    draw = _given_noise(iter(noise)) if noise is not None else _uniform_noise(eps, generator)
    up: Tensor | None = None if watermark is None else watermark.detach().reshape(1, *watermark.shape[-3:]).clone()
    trace: list[dict[str, Any]] = []
    for batch_number, (images, labels) in enumerate(batches):
        x_nat = images.detach()
        for victim in victims:
            factor = float(factors.get(victim.name, 1.0))
            offset = CONTINUING.get(victim.name)
            loss = torch.zeros((), device=x_nat.device)
            for condition in victim.conditions(labels.to(x_nat.device)):
                condition = condition.to(x_nat.device)
                with torch.no_grad():
                    target = victim(x_nat, condition)
                if offset is not None:
                    target = target + offset
                    current = x_nat + up if up is not None else x_nat.clone()  # not clamped, as released
                else:
                    current = x_nat + draw(x_nat)
                for _ in range(iterations):
                    grad, loss = _ascent_gradient(victim, current, condition, target)
                    with torch.no_grad():
                        moved = current + step_size * grad.sign()
                        eta = (factor * (moved - x_nat)).clamp(-eps, eps).mean(dim=0, keepdim=True)
                        if reduce is not None:
                            eta = reduce(eta)
                        up = eta if up is None else alpha * up + (1.0 - alpha) * eta
                        current = (x_nat + up).clamp(-1.0, 1.0)
            trace.append({"batch": batch_number, "victim": victim.name, "up": up[0].clone(), "loss": float(loss)})  # type: ignore[index]
    if up is None:
        raise ValueError("no batch to craft on")
    return up[0], trace
