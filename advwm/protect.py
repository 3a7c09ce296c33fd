"""Apply a crafted universal watermark to your own photos: `python -m advwm.protect`.

    python -m advwm.protect outputs/demo/runs/<time>/watermark.pt photo.jpg more_photos/ --out protected/

The watermark lives in the victims' input space: the face square (largest central square, or a centre
crop of `--center-crop` pixels as for CelebA) resized to `image_size`. It is resized to the square's
size in the original photo and added there, so the photo keeps its resolution and everything outside
the square is untouched; re-cropping and resizing the protected photo as the victims do gives back the
watermarked face up to resampling. Output is PNG: JPEG compression would erase most of a perturbation
this small.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from advwm.data.folder import IMAGE_SUFFIXES


class WatermarkError(ValueError):
    """The file is not a universal watermark advwm wrote."""


def load_watermark(path: str | Path) -> torch.Tensor:
    """A universal watermark [3,S,S] from `watermark.pt` (per-image perturbations are refused)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict):
        raise WatermarkError(f"{path} holds per-image perturbations (scope=per_image); their protected faces "
                             "are already in the run's protected/ folder")
    if not isinstance(payload, torch.Tensor) or payload.dim() != 3 or payload.shape[0] != 3:
        raise WatermarkError(f"{path} is not a universal watermark (expected a [3,H,W] tensor)")
    return payload.float()


def face_square(width: int, height: int, center_crop: int | None) -> tuple[int, int, int]:
    """(left, top, side) of the square the victims see, by the same rule as the data modules."""
    side = min(width, height) if center_crop is None else min(center_crop, width, height)
    return int(round((width - side) / 2.0)), int(round((height - side) / 2.0)), side


def protect_image(image: Image.Image, watermark: torch.Tensor, center_crop: int | None = None,
                  strength: float = 1.0) -> Image.Image:
    """The photo with the watermark added on its face square, at the photo's own resolution."""
    rgb = TF.to_tensor(image.convert("RGB")) * 2.0 - 1.0  # [-1, 1], as the victims see it
    _, height, width = rgb.shape
    left, top, side = face_square(width, height, center_crop)
    delta = F.interpolate(watermark[None], size=(side, side), mode="bilinear", align_corners=False)[0]
    region = rgb[:, top:top + side, left:left + side]
    rgb[:, top:top + side, left:left + side] = (region + strength * delta).clamp(-1.0, 1.0)
    pixels = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)  # round, not truncate
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def image_files(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m advwm.protect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("watermark", help="watermark.pt of a universal run")
    parser.add_argument("inputs", nargs="+", help="photos or folders of photos")
    parser.add_argument("--out", required=True, help="folder for the protected PNGs")
    parser.add_argument("--center-crop", type=int, default=None,
                        help="side of the centre square the victims see (170 for aligned CelebA); default: largest")
    parser.add_argument("--strength", type=float, default=1.0, help="scale of the watermark (1 = as crafted)")
    args = parser.parse_args(argv)
    try:
        watermark = load_watermark(args.watermark)
    except (WatermarkError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for file in image_files(args.inputs):
        try:
            with Image.open(file) as image:
                protected = protect_image(image, watermark, args.center_crop, args.strength)
        except Exception as error:  # one unreadable photo must not stop the others
            print(f"skipped {file}: {type(error).__name__}: {error}", file=sys.stderr)
            failures += 1
            continue
        target = out / f"{file.stem}.png"
        protected.save(target)
        print(f"{file} -> {target}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
