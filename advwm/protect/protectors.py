"""Protectors: what gives each face crop its perturbation, in the victims' input space ([F,3,S,S], |.| <= eps).

The crop -> protect -> paste path (`advwm.protect.paste`) asks a protector for the crops' perturbations and
knows nothing else about it, so the universal watermark (`python -m advwm.protect watermark.pt`), the deltas a
per-image run crafted (`scope=per_image data=folder`) and a network mapping a crop to its perturbation (an
amortized protector, any callable with this signature) share the same cropping, pasting and measuring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch


class Protector(Protocol):
    """Crops [F,3,S,S] in [-1, 1] and their names -> perturbations [F,3,S,S] within [-eps, eps]."""

    image_size: int
    eps: float

    def __call__(self, crops: torch.Tensor, names: Sequence[str]) -> torch.Tensor: ...


class UniversalWatermark:
    """One watermark for every face, scaled by `strength` in [0, 1] (more than 1 would go past eps: refused)."""

    def __init__(self, watermark: torch.Tensor, eps: float, strength: float = 1.0) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must lie in [0, 1] (1 = as crafted; more would exceed eps), got {strength}")
        if watermark.dim() != 3 or watermark.shape[0] != 3 or watermark.shape[1] != watermark.shape[2]:
            raise ValueError(f"a universal watermark is [3,S,S], got {list(watermark.shape)}")
        self.watermark = watermark.detach().float().cpu()
        self.eps = float(eps)
        self.strength = float(strength)
        self.image_size = int(watermark.shape[-1])

    def __call__(self, crops: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        return (self.strength * self.watermark).expand(len(crops), -1, -1, -1).clone()


class CraftedPerturbations:
    """The perturbation a per-image run crafted for each face crop, looked up by the crop's name."""

    def __init__(self, deltas: Mapping[str, torch.Tensor], eps: float, image_size: int) -> None:
        self.deltas = dict(deltas)
        self.eps = float(eps)
        self.image_size = int(image_size)

    def __call__(self, crops: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        missing = [n for n in names if n not in self.deltas]
        if missing:
            raise KeyError(f"no crafted perturbation for {missing}")
        if not names:
            return torch.empty(0, 3, self.image_size, self.image_size)
        return torch.stack([self.deltas[n].detach().float().cpu() for n in names])
