"""Imperceptibility of the watermark: PSNR and SSIM of the protected image x + delta against the clean x.

Images are in [-1, 1], so ``data_range = 2``. Both metrics compute one value per image (torchmetrics' functional
``peak_signal_noise_ratio(..., dim=(1, 2, 3), reduction='none')`` and ``structural_similarity_index_measure(...,
reduction='none')``, in float64) and report the mean over images; states are sums, so they pool over processes.

Note the difference from torchmetrics' ``PeakSignalNoiseRatio()`` with default arguments, which pools the squared
error over the whole set before the log (the PSNR of the average MSE, not the average PSNR). An image whose
perturbation is exactly zero has PSNR = +inf, and so does the mean. torchmetrics' PSNR uses float32 constants
(log(data_range), 10 / log(10)) even on float64 input, so values are exact to about 1e-7 relative (~3e-6 dB).

SSIM follows torchmetrics: Gaussian window 11 x 11, sigma 1.5, k1 = 0.01, k2 = 0.03, reflect padding, the SSIM map
averaged over channels and all pixels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = ["PerImagePSNR", "PerImageSSIM", "per_image_psnr", "per_image_ssim"]


def _check(protected: Tensor, clean: Tensor) -> None:
    if protected.shape != clean.shape or protected.dim() != 4:
        raise ValueError(
            f"protected and clean must share one [B, C, H, W] shape, got {tuple(protected.shape)}, {tuple(clean.shape)}"
        )


def per_image_psnr(protected: Tensor, clean: Tensor, data_range: float = 2.0) -> Tensor:
    """PSNR [B] in dB, one per image: 10 log10(data_range^2 / MSE)."""
    _check(protected, clean)
    return peak_signal_noise_ratio(
        protected.detach().double(),
        clean.detach().double(),
        data_range=float(data_range),
        reduction="none",
        dim=(1, 2, 3),
    )


def per_image_ssim(protected: Tensor, clean: Tensor, data_range: float = 2.0) -> Tensor:
    """SSIM [B], one per image."""
    _check(protected, clean)
    return structural_similarity_index_measure(
        protected.detach().double(), clean.detach().double(), data_range=float(data_range), reduction="none"
    )


class _PerImageMean(Metric):
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, data_range: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_range = float(data_range)
        self.add_state("value_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _values(self, protected: Tensor, clean: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, protected: Tensor, clean: Tensor) -> None:
        """Add a batch of protected images x + delta and their clean originals x ([B, C, H, W], [-1, 1])."""
        values = self._values(protected, clean)
        self.value_sum += values.sum().to(self.value_sum)
        self.total += torch.tensor(values.numel(), dtype=torch.long, device=self.total.device)

    def compute(self) -> Tensor:
        """Mean over images (NaN before any image)."""
        if int(self.total) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.value_sum / self.total.double()


class PerImagePSNR(_PerImageMean):
    """Mean over images of PSNR(x + delta, x) in dB, data_range 2 for [-1, 1] images."""

    def _values(self, protected: Tensor, clean: Tensor) -> Tensor:
        return per_image_psnr(protected, clean, self.data_range)


class PerImageSSIM(_PerImageMean):
    """Mean over images of SSIM(x + delta, x), data_range 2 for [-1, 1] images."""

    def _values(self, protected: Tensor, clean: Tensor) -> Tensor:
        return per_image_ssim(protected, clean, self.data_range)
