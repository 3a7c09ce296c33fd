"""Demo faces that ship inside installed packages, so `make demo` needs no download.

Two public-domain portraits: NASA's photo of astronaut Eileen Collins (scikit-image's `astronaut`) and
the US Navy's portrait of Grace Hopper (matplotlib's `grace_hopper.jpg` sample). Each can be used as
is or mirrored (`name@mirror`). By default the watermark is crafted on Eileen Collins and judged on
Grace Hopper, so the held-out numbers are about a face the watermark never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from advwm.data.base import FaceDataModule, FaceItem
from advwm.data.labels import label_vector
from advwm.data.transforms import preprocess


def _astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def _grace_hopper() -> Image.Image:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return image.convert("RGB")


@dataclass(frozen=True)
class DemoFace:
    """A bundled photo, a square box around the face (CelebA-like framing) and hand-given labels."""

    opener: Callable[[], Image.Image]
    box: tuple[int, int, int, int]
    labels: tuple[str, ...]


DEMO_FACES: dict[str, DemoFace] = {
    "astronaut": DemoFace(_astronaut, (132, 14, 312, 194), ("Brown_Hair", "Smiling", "Young", "Wavy_Hair")),
    "grace_hopper": DemoFace(_grace_hopper, (110, 30, 420, 340), ("Eyeglasses", "Gray_Hair", "Wearing_Hat")),
}


def demo_item(spec: str) -> FaceItem:
    """`astronaut` or `astronaut@mirror` -> a FaceItem."""
    name, _, variant = spec.partition("@")
    if name not in DEMO_FACES or variant not in ("", "mirror"):
        raise ValueError(f"unknown demo face {spec!r}; choose from {sorted(DEMO_FACES)}, optionally '@mirror'")
    face = DEMO_FACES[name]
    return FaceItem(name=spec, labels=label_vector(face.labels), box=face.box, mirror=variant == "mirror",
                    opener=face.opener)


class DemoDataModule(FaceDataModule):
    """The bundled faces: `craft` to optimise the watermark on, `evaluate` to judge it."""

    def __init__(
        self,
        craft: Sequence[str] = ("astronaut", "astronaut@mirror"),
        evaluate: Sequence[str] = ("grace_hopper", "grace_hopper@mirror"),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.craft = list(craft)
        self.evaluate = list(evaluate)

    @property
    def source(self) -> str:
        return "demo faces"

    def load_items(self) -> tuple[list[FaceItem], list[FaceItem]]:
        return [demo_item(s) for s in self.craft], [demo_item(s) for s in self.evaluate]


def demo_variants(spec: str, count: int, image_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` framings of demo face `spec` ([count,3,S,S] in [-1, 1]) and its labels ([count,40]): the face's box
    shifted by up to 10 % of its side and scaled by 0.9-1.1, every second one mirrored, drawn with `seed`.

    Why: the bundled photos are two people; training a generator and judging it on a person it never saw (the
    amortized scope's tests and experiments/protection_modes.py) need more than one image per person, without a
    download. Different framings are different inputs to the generator; the held-out person stays unseen.
    """
    name, _, _ = spec.partition("@")
    item = demo_item(name)
    face = DEMO_FACES[name]
    photo = item.open()
    left, top, right, bottom = face.box
    side = right - left
    generator = torch.Generator().manual_seed(seed)
    images = []
    for index in range(count):
        shift_x, shift_y, scale = (torch.rand(3, generator=generator) * 2 - 1).tolist()
        half = side * (1 + 0.1 * scale) / 2
        cx, cy = (left + right) / 2 + 0.1 * side * shift_x, (top + bottom) / 2 + 0.1 * side * shift_y
        box = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
        image = preprocess(photo, image_size, box=box)
        images.append(image.flip(-1) if index % 2 else image)
    return torch.stack(images), item.labels.expand(count, -1).clone()
