"""Image preprocessing shared by every data module.

The reference pipeline (CMUA-Watermark, StarGAN's CelebA loader) centre-crops the 178x218 aligned CelebA
image to 170x170, resizes to the victim's size and maps [0, 1] to [-1, 1]. Other photos use a square
crop around a given box, or the largest central square when no crop is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import functional as TF


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (the reference's Normalize(mean=0.5, std=0.5))."""
    return image * 2.0 - 1.0


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped, for saving and display."""
    return ((image + 1.0) / 2.0).clamp(0.0, 1.0)


def preprocess(
    image: Image.Image,
    image_size: int,
    center_crop: int | None = None,
    box: Sequence[int] | None = None,
) -> torch.Tensor:
    """PIL image -> float tensor [3, image_size, image_size] in [-1, 1].

    `box` (left, top, right, bottom) wins over `center_crop`; with neither, the largest central square.
    """
    image = image.convert("RGB")
    if box is not None:
        image = image.crop(tuple(int(v) for v in box))
    elif center_crop is not None:
        image = TF.center_crop(image, [center_crop, center_crop])
    else:
        side = min(image.size)
        image = TF.center_crop(image, [side, side])
    image = TF.resize(image, [image_size, image_size], interpolation=TF.InterpolationMode.BILINEAR)
    return to_model_range(TF.to_tensor(image))
