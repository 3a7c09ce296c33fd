"""Unmasked distortion metrics of the protected fakes, as torchmetrics ``Metric``s.

L = per-image MSE(G(x + delta, c), G(x, c)), the mean over channels and pixels (float64). One ``update`` call per
condition (or a batch of stacked conditions); all states are sums, so the values pool over images x conditions and
over processes (DDP).

* `RuizSuccess` (Ruiz et al., "Disrupting deepfakes"): share of images with L > ``threshold`` (0.05).
* `AverageDistortion` (CDMAA's avg_L): mean of L.
* `AttackRate` (CDMAA's attack_rate): share of images with L > ``tau`` (0.05).

`RuizSuccess` and `AttackRate` compute the same quantity with the same default; both names are kept because the
papers report them under these names (and may use different thresholds).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["AttackRate", "AverageDistortion", "RuizSuccess", "per_image_mse"]


def per_image_mse(fake_clean: Tensor, fake_adv: Tensor) -> Tensor:
    """L [B] = mean over (C, H, W) of (fake_adv - fake_clean)^2, in float64."""
    if fake_clean.shape != fake_adv.shape or fake_clean.dim() < 2:
        raise ValueError(
            f"fake_clean and fake_adv must share one [B, ...] shape, got {tuple(fake_clean.shape)}, "
            f"{tuple(fake_adv.shape)}"
        )
    diff = fake_adv.detach().double() - fake_clean.detach().double()
    return diff.pow(2).flatten(1).mean(dim=1)


class _ThresholdShare(Metric):
    """Share of images with L > threshold (pooled over updates; NaN before any image)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.add_state("successes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, fake_clean: Tensor, fake_adv: Tensor) -> None:
        """Add a batch of clean fakes G(x, c) and protected fakes G(x + delta, c)."""
        loss = per_image_mse(fake_clean, fake_adv)
        self.successes += (loss > self.threshold).sum().to(self.successes.device)
        self.total += torch.tensor(loss.numel(), dtype=torch.long, device=self.total.device)

    def compute(self) -> Tensor:
        if int(self.total) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.successes.double() / self.total.double()


class RuizSuccess(_ThresholdShare):
    """Ruiz et al.'s success rate: share of images with unmasked MSE(G(x + delta), G(x)) > ``threshold``."""

    def __init__(self, threshold: float = 0.05, **kwargs: Any) -> None:
        super().__init__(threshold, **kwargs)


class AttackRate(_ThresholdShare):
    """CDMAA's attack_rate: share of images x conditions with L > ``tau``."""

    def __init__(self, tau: float = 0.05, **kwargs: Any) -> None:
        super().__init__(tau, **kwargs)

    @property
    def tau(self) -> float:
        return self.threshold


class AverageDistortion(Metric):
    """CDMAA's avg_L: mean of L over images x conditions (NaN before any image)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("sum_loss", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, fake_clean: Tensor, fake_adv: Tensor) -> None:
        """Add a batch of clean fakes and protected fakes."""
        loss = per_image_mse(fake_clean, fake_adv)
        self.sum_loss += loss.sum().to(self.sum_loss)
        self.total += torch.tensor(loss.numel(), dtype=torch.long, device=self.total.device)

    def compute(self) -> Tensor:
        if int(self.total) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.sum_loss / self.total.double()
