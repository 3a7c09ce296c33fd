"""Input diversity (DI2-FGSM, Xie et al. CVPR 2019) applied to the protected image before the victim.

Random resize-and-pad makes the perturbation less tied to one exact pixel alignment, which improves its
transfer. Unlike the original (which feeds the enlarged image to a classifier), we resize back to H x W,
because our victims (AttGAN, StarGAN...) need their exact native input size.

One transform per (image, condition) pair, drawn up front for the whole step from a generator seeded by
(seed, step, victim): how the pairs are then chunked through the victim (one at a time on a CPU, all
stacked on a GPU) cannot change which transform a pair gets, so CPU and GPU runs craft the same watermark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DiversityDraw", "InputDiversity", "PairTransform"]


@dataclass(frozen=True)
class DiversityDraw:
    """One pair's transform: resize to (height, width), pad at (top, left) to the enlarged size; or identity."""

    applied: bool
    height: int = 0
    width: int = 0
    top: int = 0
    left: int = 0


class InputDiversity(nn.Module):
    """With probability ``prob``: nearest-resize to a random size in [H, H * resize_rate), random-pad to
    the largest size, resize back to H x W; otherwise identity. Differentiable, shape-preserving.

    ``forward`` applies one draw to a whole batch (DI2-FGSM's original form); the engine uses ``draw`` +
    ``apply``, one draw per (image, condition) pair.
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
        if not resize_rate >= 1.0:
            raise ValueError(f"resize_rate must be >= 1, got {resize_rate}")
        self.prob = float(prob)
        self.resize_rate = float(resize_rate)
        self.pad_value = float(pad_value)
        self.resize_back_mode = resize_back_mode
        self.generator = generator

    @staticmethod
    def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
        """Uniform integer in [low, high] (inclusive)."""
        return int(torch.randint(low, high + 1, (1,), generator=generator).item())

    def draw_one(self, height: int, width: int, generator: torch.Generator | None = None) -> DiversityDraw:
        """One random transform for an H x W image (always four draws, so later pairs' draws do not depend
        on whether this one was applied)."""
        coin = float(torch.rand(1, generator=generator).item())
        h_max, w_max = int(height * self.resize_rate), int(width * self.resize_rate)
        if h_max <= height:  # image too small for the rate to enlarge it by a pixel
            return DiversityDraw(False)
        rh = self._randint(height, h_max - 1, generator)  # [H, H * rate)
        rw = min(max(round(rh * width / height), width), w_max)
        top = self._randint(0, h_max - rh, generator)
        left = self._randint(0, w_max - rw, generator)
        return DiversityDraw(coin < self.prob, rh, rw, top, left)

    def draw(self, count: int, height: int, width: int,
             generator: torch.Generator | None = None) -> list[DiversityDraw]:
        """``count`` independent draws, in order."""
        return [self.draw_one(height, width, generator) for _ in range(count)]

    def apply(self, x: Tensor, draws: Sequence[DiversityDraw]) -> Tensor:
        """Apply draw i to image i of the batch x [N, C, H, W] (len(draws) == N)."""
        if len(draws) != x.shape[0]:
            raise ValueError(f"{len(draws)} draws for a batch of {x.shape[0]}")
        if not any(d.applied for d in draws):
            return x
        return torch.cat([self._transform(x[i:i + 1], d) if d.applied else x[i:i + 1] for i, d in enumerate(draws)])

    def _transform(self, x: Tensor, draw: DiversityDraw) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        h_max, w_max = int(h * self.resize_rate), int(w * self.resize_rate)
        resized = F.interpolate(x, size=(draw.height, draw.width), mode="nearest")
        pad = [draw.left, w_max - draw.width - draw.left, draw.top, h_max - draw.height - draw.top]
        padded = F.pad(resized, pad, value=self.pad_value)
        if self.resize_back_mode in ("bilinear", "bicubic"):
            return F.interpolate(padded, size=(h, w), mode=self.resize_back_mode, align_corners=False)
        return F.interpolate(padded, size=(h, w), mode=self.resize_back_mode)

    def forward(self, x: Tensor) -> Tensor:
        """One random transform (from this module's generator) applied to the whole batch x [B, C, H, W]."""
        if self.prob <= 0.0:
            return x
        draw = self.draw_one(int(x.shape[-2]), int(x.shape[-1]), self.generator)
        return self._transform(x, draw) if draw.applied else x

    def extra_repr(self) -> str:
        return f"prob={self.prob}, resize_rate={self.resize_rate}, resize_back_mode={self.resize_back_mode}"


class PairTransform:
    """The transforms of one step for one victim: pair (condition k, image b) gets ``draws[k][b]``.

    ``__call__(chunk, pairs)`` transforms the stacked inputs of the listed (k, b) pairs, so the result does
    not depend on how the caller chunks the pairs.
    """

    def __init__(self, diversity: InputDiversity, draws: Sequence[Sequence[DiversityDraw]]) -> None:
        self.diversity = diversity
        self.draws = draws

    @classmethod
    def for_step(cls, diversity: InputDiversity, conditions: int, images: int, height: int, width: int,
                 generator: torch.Generator) -> PairTransform:
        """Draw every pair's transform, condition-major, from ``generator``."""
        flat = diversity.draw(conditions * images, height, width, generator)
        return cls(diversity, [flat[k * images:(k + 1) * images] for k in range(conditions)])

    def __call__(self, chunk: Tensor, pairs: Sequence[tuple[int, int]]) -> Tensor:
        return self.diversity.apply(chunk, [self.draws[k][b] for k, b in pairs])
