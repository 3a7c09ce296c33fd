"""Apply a crafted universal watermark to your own photos: `python -m advwm.protect`.

    python -m advwm.protect outputs/demo/runs/<time>/watermark.pt photo.jpg more_photos/ --out protected/

Each photo is read as a person sees it (upright, full bit depth, transparency kept; `advwm.data.decode`).
The watermark lives in the victims' input space: a face square resized to `image_size`. Every face found
in the photo (`advwm.protect.faces`: OpenCV's Haar cascades, framed like CelebA's aligned crops) gets the
watermark resized to its square's size in the original photo, so the photo keeps its resolution and
everything outside the face squares is untouched. Where two squares overlap, each pixel takes the
watermark of the face whose square centre is nearest, so no pixel moves by more than eps. A photo with
no face is left out (nothing written). `--no-detect` protects the largest central square instead (or
the centre `--center-crop` px, for aligned CelebA-style faces).

Output: `<out>/<path relative to the inputs' common folder>.png`, i.e. the original name with `.png`
appended (`face.jpg` -> `face.jpg.png`, `a/photo.jpg` -> `a/photo.jpg.png`), so no two photos share an
output. PNG, because JPEG compression would erase most of a perturbation this small; 16-bit when the
photo had more than 8 bits, with the photo's alpha channel when it had one; written atomically.

Exit status: 0 when every photo was protected or had no face; 1 when a photo was refused or could not
be written, or nothing was written at all. Each refusal is one line on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from advwm.data.decode import IMAGE_SUFFIXES, DecodedPhoto, PhotoError, list_photos, open_photo
from advwm.run_files import io
from advwm.run_files.watermark_file import WatermarkError, load_watermark

Square = tuple[int, int, int]  # left, top, side

RANDOM_VICTIMS_WARNING = (
    "WARNING: THIS WATERMARK WAS CRAFTED AGAINST RANDOMLY INITIALISED VICTIMS ({names}), NOT THE REAL MODELS: "
    "it does NOT protect these photos against real face editing. Craft one with the official weights "
    "(README, 'Victims and the official weights')."
)


class InputError(ValueError):
    """The inputs or --out cannot be used; the message (one line) says what to change."""


@dataclass(frozen=True)
class Job:
    """One photo to protect and where its protected copy goes."""

    source: Path
    target: Path


# ---- geometry and pixels ------------------------------------------------------------------------------

def face_square(width: int, height: int, center_crop: int | None) -> Square:
    """(left, top, side) of the central square the data modules crop (`--no-detect`)."""
    side = min(width, height) if center_crop is None else min(center_crop, width, height)
    return int(round((width - side) / 2.0)), int(round((height - side) / 2.0)), side


def watermark_map(watermark: torch.Tensor, squares: Sequence[Square], width: int,
                  height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta [3,H,W], covered [H,W]): the watermark resized into each square; in overlaps the nearest
    square centre wins, so every pixel gets at most one face's watermark."""
    delta = torch.zeros(3, height, width)
    nearest = torch.full((height, width), math.inf)
    for left, top, side in squares:
        resized = F.interpolate(watermark[None].float(), size=(side, side), mode="bilinear", align_corners=False,
                                antialias=True)[0]
        ys = torch.arange(top, top + side, dtype=torch.float32)[:, None] + 0.5 - (top + side / 2.0)
        xs = torch.arange(left, left + side, dtype=torch.float32)[None, :] + 0.5 - (left + side / 2.0)
        distance = ys**2 + xs**2
        region = nearest[top:top + side, left:left + side]
        wins = distance < region
        region[wins] = distance[wins]
        delta[:, top:top + side, left:left + side][:, wins] = resized[:, wins]
    return delta, torch.isfinite(nearest)


def protect_photo(photo: DecodedPhoto, watermark: torch.Tensor, squares: Sequence[Square],
                  strength: float = 1.0) -> DecodedPhoto:
    """The photo with the watermark added inside `squares`, in the victims' [-1, 1] units, clamped to the
    valid range; colour outside the squares and the alpha channel are kept exactly.

    The watermark is added to the photo's own (straight) colours: where it is partly transparent, what a
    victim sees on white carries the watermark scaled by the opacity.
    """
    width, height = photo.size
    delta, covered = watermark_map(watermark, squares, width, height)
    colour = torch.from_numpy(np.ascontiguousarray(photo.colour)).permute(2, 0, 1)
    protected = ((colour * 2.0 - 1.0) + strength * delta).clamp(-1.0, 1.0).add(1.0).div(2.0)
    result = torch.where(covered[None], protected, colour)
    return DecodedPhoto(result.permute(1, 2, 0).numpy(), photo.alpha, photo.bit_depth, [])


def encode_png(photo: DecodedPhoto) -> bytes:
    """PNG bytes: RGB or RGBA, 8- or 16-bit as the photo's `bit_depth` (values rounded, not truncated)."""
    import cv2

    top = 65535 if photo.bit_depth > 8 else 255
    planes = photo.colour if photo.alpha is None else np.dstack([photo.colour, photo.alpha])
    pixels = np.clip(np.rint(planes.astype(np.float64) * top), 0, top).astype(np.uint16 if top > 255 else np.uint8)
    order = [2, 1, 0] if pixels.shape[2] == 3 else [2, 1, 0, 3]  # OpenCV writes BGR(A)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(pixels[..., order]), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise OSError("PNG encoding failed")
    return encoded.tobytes()


# ---- which photos, written where -----------------------------------------------------------------------

def plan(inputs: Sequence[str], out: Path, report=print) -> list[Job]:
    """Photos named by `inputs` (files, or folders searched recursively) and their output paths.

    Outputs keep the photos' paths relative to the deepest folder holding all inputs, with `.png`
    appended to the full original name, so two different photos never share an output.
    """
    sources: list[Path] = []
    roots: list[Path] = []
    for entry in inputs:
        path = Path(os.path.abspath(Path(entry).expanduser()))
        if not path.exists():
            raise InputError(f"{entry} does not exist: name photos or folders of photos")
        if path.is_dir():
            listing = list_photos(path, exclude=[out])
            for skipped, reason in listing.skipped:
                report(f"skipped {skipped}: {reason}", file=sys.stderr)
            if not listing.files:
                raise InputError(f"{entry} holds no photo ({', '.join(IMAGE_SUFFIXES)}): name a folder with photos")
            sources += listing.files
            roots.append(path)
        else:
            sources.append(path)
            roots.append(path.parent)
    base = Path(os.path.commonpath([str(r) for r in roots]))
    unique = list(dict.fromkeys(sources))  # a photo named twice (as a file and inside a folder) once
    return [Job(s, out / s.parent.relative_to(base) / f"{s.name}.png") for s in unique]


def refuse_collisions(jobs: Sequence[Job], report=print) -> tuple[list[Job], int]:
    """Drop jobs whose output would overwrite another's (e.g. on a case-insensitive disk) or an input photo."""
    sources = {os.path.normcase(str(j.source)) for j in jobs}
    taken: dict[str, Path] = {}
    kept: list[Job] = []
    refused = 0
    for job in jobs:
        key = str(job.target).casefold()
        if key in taken or os.path.normcase(str(job.target)) in sources:
            other = taken.get(key, job.target)
            report(f"refused {job.source}: its output {job.target} would overwrite {other}; "
                   "rename the photo or use another --out", file=sys.stderr)
            refused += 1
            continue
        taken[key] = job.source
        kept.append(job)
    return kept, refused


# ---- the command ------------------------------------------------------------------------------------------

def _strength(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m advwm.protect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("watermark", help="watermark.pt of a universal run")
    parser.add_argument("inputs", nargs="+", help="photos or folders of photos")
    parser.add_argument("--out", required=True, help="folder for the protected PNGs")
    parser.add_argument("--no-detect", action="store_true",
                        help="no face detection: protect the largest central square of each photo")
    parser.add_argument("--center-crop", type=int, default=None,
                        help="with --no-detect (implied): side of the centre square (170 for aligned CelebA)")
    parser.add_argument("--strength", type=_strength, default=1.0, help="scale of the watermark (1 = as crafted)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        watermark = load_watermark(args.watermark, scope="universal")
    except WatermarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for warning in watermark.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if watermark.random_victims:
        print(RANDOM_VICTIMS_WARNING.format(names=", ".join(watermark.random_victims)), file=sys.stderr)
    out = Path(args.out).expanduser()
    try:
        jobs, refused = refuse_collisions(plan(args.inputs, out))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    detect = not args.no_detect and args.center_crop is None
    written = faceless = 0
    for job in jobs:
        outcome = protect_one(job, watermark.tensor, detect, args.center_crop, args.strength)
        if outcome is None:
            written += 1
        elif outcome.startswith("no face"):
            faceless += 1
            print(f"warning: {outcome}", file=sys.stderr)
        else:
            refused += 1
            print(outcome, file=sys.stderr)
    print(f"protected {written} photo(s) into {out}; {refused} refused, {faceless} without a face")
    return 1 if refused or not written else 0


def protect_one(job: Job, watermark: torch.Tensor, detect: bool, center_crop: int | None,
                strength: float) -> str | None:
    """Protect and write one photo; None when written, else the one line that says why not."""
    try:
        photo = open_photo(job.source)
    except PhotoError as error:
        return f"refused {job.source}: {error}"
    for note in photo.warnings:
        print(f"warning: {job.source}: {note}", file=sys.stderr)
    width, height = photo.size
    if detect:
        from advwm.protect.faces import detect_faces

        squares = [face.square for face in detect_faces(photo.on_white())]
        if not squares:
            return f"no face found in {job.source}: left out, nothing written (--no-detect protects its centre)"
    else:
        squares = [face_square(width, height, center_crop)]
    try:
        io.write_bytes(job.target, encode_png(protect_photo(photo, watermark, squares, strength)))
    except OSError as error:
        return f"refused {job.source}: cannot write {job.target} ({error.strerror or error})"
    print(f"{job.source} -> {job.target} ({len(squares)} face square(s))")
    return None

