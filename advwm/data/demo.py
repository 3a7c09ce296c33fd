"""Demo faces that ship inside installed packages, so `make demo` needs no download.

Two public-domain portraits: NASA's photo of astronaut Eileen Collins (scikit-image's `astronaut`) and
the US Navy's portrait of Grace Hopper (matplotlib's `grace_hopper.jpg` sample). Each can be used as
is or mirrored (`name@mirror`). By default the watermark is crafted on Eileen Collins and judged on
Grace Hopper, so the held-out numbers are about a face the watermark never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from advwm.data.base import FaceDataModule, FaceItem
from advwm.data.labels import label_vector


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
