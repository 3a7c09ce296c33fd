"""SR_mask and L2_mask (CMUA-Watermark's success metric), as torchmetrics ``Metric``s.

Only the pixels the victim actually edits count: mask = 1 where sum over channels |G(x) - x| > 0.5.
L2_mask = mean over masked pixels and channels of (G(x + delta) - G(x))^2; the protection succeeds on an
image when L2_mask > 0.05. An empty mask (the victim changed nothing visible) counts as a failure, and is
also counted on its own so that reports can tell "edit not disrupted" from "nothing to disrupt".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["L2Mask", "SRMask", "masked_l2"]


def masked_l2(
    x: Tensor, fake_clean: Tensor, fake_adv: Tensor, mask_threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Per-image L2_mask [B] (NaN where the mask is empty) and the empty-mask flags [B] (bool).

    Accumulated in float64 so a value next to the threshold is decided by the data, not by rounding.
    """
    if not (x.shape == fake_clean.shape == fake_adv.shape) or x.dim() != 4:
        raise ValueError(
            f"x, fake_clean, fake_adv must share one [B, C, H, W] shape, got "
            f"{tuple(x.shape)}, {tuple(fake_clean.shape)}, {tuple(fake_adv.shape)}"
        )
    x64, clean64, adv64 = x.double(), fake_clean.double(), fake_adv.double()
    mask = ((clean64 - x64).abs().sum(dim=1) > mask_threshold).double()  # [B, H, W]
    sq = ((adv64 - clean64) ** 2).sum(dim=1)  # [B, H, W], summed over channels
    count = mask.sum(dim=(1, 2))
    channels = x.shape[1]
    empty = count == 0
    l2 = (sq * mask).sum(dim=(1, 2)) / (channels * count)
    l2 = torch.where(empty, torch.full_like(l2, float("nan")), l2)
    return l2, empty


class SRMask(Metric):
    """Success rate: share of images (pooled over updates) with L2_mask > ``threshold``."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold: float = 0.05, mask_threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.mask_threshold = float(mask_threshold)
        self.add_state("successes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("empty", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, x: Tensor, fake_clean: Tensor, fake_adv: Tensor) -> None:
        """Add a batch of clean images, clean fakes and protected fakes ([B, C, H, W] each)."""
        l2, empty = masked_l2(x, fake_clean, fake_adv, self.mask_threshold)
        success = (~empty) & (l2 > self.threshold)  # NaN > t is False anyway; explicit for clarity
        self.successes += success.sum().to(self.successes.device)
        self.total += torch.tensor(l2.numel(), dtype=torch.long, device=self.total.device)
        self.empty += empty.sum().to(self.empty.device)

    def compute(self) -> Tensor:
        """successes / total (NaN before any image)."""
        if int(self.total) == 0:
            return torch.tensor(float("nan"))
        return self.successes.double() / self.total.double()

    def empty_count(self) -> Tensor:
        """Number of images whose mask was empty (counted as failures by ``compute``)."""
        return self.empty.clone()


class L2Mask(Metric):
    """Mean L2_mask over the images whose mask is non-empty."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, mask_threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mask_threshold = float(mask_threshold)
        self.add_state("sum_l2", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, x: Tensor, fake_clean: Tensor, fake_adv: Tensor) -> None:
        """Add a batch; images with an empty mask are skipped."""
        l2, empty = masked_l2(x, fake_clean, fake_adv, self.mask_threshold)
        valid = ~empty
        self.sum_l2 += l2[valid].sum().to(self.sum_l2)
        self.count += valid.sum().to(self.count.device)

    def compute(self) -> Tensor:
        """Mean L2_mask over non-empty masks (NaN if there were none)."""
        if int(self.count) == 0:
            return torch.tensor(float("nan"))
        return self.sum_l2 / self.count.double()
