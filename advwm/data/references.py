"""A reference face for reference-guided editors (HiSD): an image file or a bundled demo face, as a tensor.

Reading images is the data package's job; the victim receives a ready tensor [1, 3, S, S] in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch import Tensor

from advwm.data.demo import DEMO_FACES, demo_item
from advwm.data.transforms import preprocess

__all__ = ["reference_image"]


def reference_image(spec: str | Path, image_size: int, hint: str = "") -> Tensor:
    """An image file (largest central square, resized to image_size, like CMUA's Resize(256) of a square
    reference) or a demo face name ('astronaut', 'grace_hopper', optionally '@mirror') -> [1, 3, S, S]."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        with Image.open(path) as image:
            tensor = preprocess(image.convert("RGB"), image_size)
    elif spec.partition("@")[0] in DEMO_FACES:
        item = demo_item(spec)
        tensor = preprocess(item.open(), image_size, box=item.box)
        if item.mirror:
            tensor = tensor.flip(-1)
    else:
        raise FileNotFoundError(f"hisd: reference {spec!r} is neither an image file nor a demo face "
                                f"{sorted(DEMO_FACES)} {hint}".rstrip())
    return tensor.unsqueeze(0)
