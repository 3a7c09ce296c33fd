"""Gradient regularisers (CDMAA §3.4): victim j's gradient g_j is divided by a per-row scale S_j.

Why: victims differ in loss scale by orders of magnitude, so without rescaling the largest one dominates
the aggregated direction. ``none``: S = 1; ``l2``: S = ||g_j||_2 (unit-norm gradients); ``log``: S = L_j
(the gradient of log L_j); ``penalty``: S = 1 / max(L_j, zeta), i.e. the gradient times the loss, which under
MGDA's min-norm combination *reduces* the effect on a victim with a large loss in exchange for a major attack on the
victim with a small loss (CDMAA §3.4, eq. 28: the losses rise in the ratio dL_1/dL_2 = L_2/L_1).
All scales are constants (detached) and computed per row of the [P, ...] gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "L2Regularizer",
    "LogRegularizer",
    "NoRegularizer",
    "PenaltyRegularizer",
    "Regularizer",
]

_TINY = 1e-12


def _per_row(loss: Tensor, grad: Tensor) -> Tensor:
    """The loss as a detached [P] vector matching grad's rows (a scalar loss is broadcast)."""
    loss = loss.detach().to(grad.dtype).reshape(-1)
    rows = grad.shape[0]
    if loss.numel() == 1 and rows != 1:
        loss = loss.expand(rows)
    if loss.numel() != rows:
        raise ValueError(f"loss has {loss.numel()} entries but the gradient has {rows} rows")
    return loss


class Regularizer:
    """Base: ``__call__(grad [P, ...], loss [P]) -> grad / S`` with S from ``scale``; S = 1 here."""

    name: str = "none"

    def scale(self, grad: Tensor, loss: Tensor) -> Tensor:
        """The per-row divisor S [P]."""
        return torch.ones(grad.shape[0], dtype=grad.dtype, device=grad.device)

    def __call__(self, grad: Tensor, loss: Tensor) -> Tensor:
        s = self.scale(grad, loss).to(device=grad.device, dtype=grad.dtype)
        return grad / s.reshape(grad.shape[0], *([1] * (grad.dim() - 1)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoRegularizer(Regularizer):
    """S = 1: raw gradients."""

    name = "none"


class L2Regularizer(Regularizer):
    """S = ||g_j||_2 per row (guarded against a zero gradient by a tiny epsilon)."""

    name = "l2"

    def __init__(self, tiny: float = _TINY) -> None:
        self.tiny = float(tiny)

    def scale(self, grad: Tensor, loss: Tensor) -> Tensor:
        return grad.detach().reshape(grad.shape[0], -1).norm(dim=1).clamp_min(self.tiny)


class LogRegularizer(Regularizer):
    """S = L_j per row: d log L / d delta = g / L. Guarded so L = 0 (delta = 0 at the first I-FGSM
    iteration, where the gradient is also 0) gives 0 rather than NaN."""

    name = "log"

    def __init__(self, tiny: float = _TINY) -> None:
        self.tiny = float(tiny)

    def scale(self, grad: Tensor, loss: Tensor) -> Tensor:
        return _per_row(loss, grad).clamp_min(self.tiny)


class PenaltyRegularizer(Regularizer):
    """S = 1 / max(L_j, zeta): the gradient is multiplied by max(L_j, zeta) (CDMAA eq. 25).

    zeta is CDMAA's "very small positive number": it only avoids a zero scale where L = 0 (the first I-FGSM
    step). A large zeta (0.01) would make every victim whose loss is below it weigh the same, i.e. turn the
    penalty into `none` exactly when losses are small; hence the default 1e-8.
    """

    name = "penalty"

    def __init__(self, zeta: float = 1e-8) -> None:
        if zeta <= 0:
            raise ValueError(f"zeta must be > 0, got {zeta}")
        self.zeta = float(zeta)

    def scale(self, grad: Tensor, loss: Tensor) -> Tensor:
        return 1.0 / _per_row(loss, grad).clamp_min(self.zeta)

    def __repr__(self) -> str:
        return f"PenaltyRegularizer(zeta={self.zeta})"
