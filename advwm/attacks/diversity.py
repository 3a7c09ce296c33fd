"""Input diversity (DI2-FGSM, Xie et al. CVPR 2019) applied to the protected image before the victim.

Random resize-and-pad makes the perturbation less tied to one exact pixel alignment, which improves its
transfer. Unlike the original (which feeds the enlarged image to a classifier), we resize back to H x W,
because our victims (AttGAN, StarGAN...) need their exact native input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["InputDiversity"]


class InputDiversity(nn.Module):
    """With probability ``prob``: nearest-resize to a random size in [H, H * resize_rate), random-pad to
    the largest size, resize back to H x W; otherwise identity. Differentiable, shape-preserving.

    The same random transform is applied to the whole batch (as in DI2-FGSM). Pass a ``torch.Generator``
    (CPU) for reproducible draws.
    """

    def __init__(
        self,
        prob: float = 0.5,
        resize_rate: float = 1.1,
        pad_value: float = 0.0,
        resize_back_mode: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must lie in [0, 1], got {prob}")
        if resize_rate < 1.0:
            raise ValueError(f"resize_rate must be >= 1, got {resize_rate}")
        self.prob = float(prob)
        self.resize_rate = float(resize_rate)
        self.pad_value = float(pad_value)
        self.resize_back_mode = resize_back_mode
        self.generator = generator

    def _randint(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] (inclusive) from this module's generator."""
        return int(torch.randint(low, high + 1, (1,), generator=self.generator).item())

    def forward(self, x: Tensor) -> Tensor:
        """Apply the random transform to a batch [B, C, H, W] (or return it unchanged)."""
        if self.prob <= 0.0:
            return x
        if self.prob < 1.0 and float(torch.rand(1, generator=self.generator).item()) >= self.prob:
            return x
        h, w = int(x.shape[-2]), int(x.shape[-1])
        h_max, w_max = int(h * self.resize_rate), int(w * self.resize_rate)
        if h_max <= h:  # image too small for the rate to enlarge it by a pixel
            return x
        rh = self._randint(h, h_max - 1)  # [H, H * rate)
        rw = min(max(round(rh * w / h), w), w_max)
        resized = F.interpolate(x, size=(rh, rw), mode="nearest")
        top = self._randint(0, h_max - rh)
        left = self._randint(0, w_max - rw)
        padded = F.pad(resized, [left, w_max - rw - left, top, h_max - rh - top], value=self.pad_value)
        if self.resize_back_mode in ("bilinear", "bicubic"):
            return F.interpolate(padded, size=(h, w), mode=self.resize_back_mode, align_corners=False)
        return F.interpolate(padded, size=(h, w), mode=self.resize_back_mode)

    def extra_repr(self) -> str:
        return f"prob={self.prob}, resize_rate={self.resize_rate}, resize_back_mode={self.resize_back_mode}"
