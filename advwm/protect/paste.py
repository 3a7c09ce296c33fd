"""The one crop -> protect -> paste path for a person's photos (universal watermark, per-image run, amortized).

1. **Find** the face squares (`face_squares`): `advwm.protect.faces` (OpenCV's Haar cascades, framed like
   CelebA's aligned crops), or without detection the largest central square (`central_square`; the centre
   `center_crop` px for aligned CelebA-style faces).
2. **Crop** each square out of the photo as the victims see it (on white, [-1, 1], full bit depth) and resize it
   to the victims' `image_size` (`crop_faces`).
3. **Protect**: a `Protector` gives each crop its perturbation in that space (`advwm.protect.protectors`: the
   universal watermark, the deltas a per-image run crafted, or later a network's forward pass).
4. **Paste**: each perturbation is resized back to its square's size and added to the photo at its own
   resolution (`paste`); only the squares change, in overlaps each pixel takes the perturbation of the face
   whose square centre is nearest (never two on one pixel), the result is clamped to the valid range, and the
   photo's alpha channel and bit depth are kept. `to_levels` writes the integer levels of the file so that no
   level moves by more than eps (8-bit rounding included).

**Interpolation.** The crop (photo -> victims) is **bilinear, antialiased** (`torch.nn.functional.interpolate(
mode="bilinear", antialias=True, align_corners=False)`: a triangle filter widened by the scale factor when
shrinking, PIL's BILINEAR). The paste (perturbation -> square) is **nearest-neighbour** (`mode="nearest-exact"`,
centred like PIL's NEAREST): each photo pixel takes the value of the perturbation pixel it falls in, so every
pasted value is one of the crafted values and |change| <= max |delta| <= eps at any size, by construction. Why not
bilinear back as well (also a convex combination, also within eps): a forger's crop resizes the pasted
perturbation down again, and bilinear up then antialiased down smooths the crafted pattern twice. Measured on
per-image perturbations of two portraits (`experiments/photos.py paste`, README): the victims' avg_L on the
written photo kept about 25 % of what the attack reached on the crop with bilinear, about 32 % with
nearest-neighbour; no upsizing within eps can keep it all, since the crop's filter averages neighbouring
perturbation pixels of opposite sign. `protection.csv` measures the file actually written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from advwm.data.decode import DecodedPhoto

Square = tuple[int, int, int]  # left, top, side (pixels of the upright photo)

CROP_INTERPOLATION = "bilinear, antialiased"
PASTE_INTERPOLATION = "nearest-neighbour (centred)"


class SquareError(ValueError):
    """A crop side that cannot be used (zero or negative); the message says which option to change."""


def resize_square(images: torch.Tensor, side: int) -> torch.Tensor:
    """[N,C,h,w] -> [N,C,side,side], bilinear and antialiased: the crop to the victims' size."""
    if side < 1:
        raise SquareError(f"cannot resize to {side} px")
    return F.interpolate(images.float(), size=(side, side), mode="bilinear", align_corners=False, antialias=True)


def upsize_perturbation(deltas: torch.Tensor, side: int) -> torch.Tensor:
    """[N,C,S,S] -> [N,C,side,side], nearest-neighbour (centred): every value one of the crafted values."""
    if side < 1:
        raise SquareError(f"cannot resize to {side} px")
    return F.interpolate(deltas.float(), size=(side, side), mode="nearest-exact")


def central_square(width: int, height: int, center_crop: int | None = None) -> Square:
    """(left, top, side) of the largest central square, or of the centre `center_crop` px (the data modules' crop)."""
    if center_crop is not None and center_crop < 1:
        raise SquareError(f"--center-crop must be a positive number of pixels, got {center_crop}")
    side = min(width, height) if center_crop is None else min(center_crop, width, height)
    return int(round((width - side) / 2.0)), int(round((height - side) / 2.0)), side


def face_squares(photo: DecodedPhoto, detect: bool = True, center_crop: int | None = None) -> list[Square]:
    """Where the faces are: one CelebA-framed square per detected face (top to bottom, then left to right), or
    with `detect=False` (or a `center_crop`) the central square. [] when detection finds no face."""
    if detect and center_crop is None:
        from advwm.protect.faces import detect_faces

        return [face.square for face in detect_faces(photo.on_white())]
    width, height = photo.size
    return [central_square(width, height, center_crop)]


def photo_tensor(photo: DecodedPhoto) -> torch.Tensor:
    """What the victims see of the photo: [3,H,W] in [-1, 1], composited on white, full bit depth."""
    return torch.from_numpy(np.ascontiguousarray(photo.on_white())).permute(2, 0, 1).float() * 2.0 - 1.0


def crop_faces(image: torch.Tensor, squares: Sequence[Square], size: int) -> torch.Tensor:
    """[3,H,W] -> [F,3,size,size]: each square cut out and resized to the victims' size."""
    if not squares:
        return torch.empty(0, 3, size, size)
    crops = [resize_square(image[None, :, top:top + side, left:left + side], size)[0] for left, top, side in squares]
    return torch.stack(crops)


def perturbation_map(deltas: torch.Tensor, squares: Sequence[Square], width: int,
                     height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta [3,H,W], covered [H,W]): face k's perturbation `deltas[k]` upsized into its square; in overlaps
    the face whose square centre is nearest wins, so every pixel gets at most one perturbation."""
    if len(deltas) != len(squares):
        raise ValueError(f"{len(deltas)} perturbations for {len(squares)} face squares")
    delta = torch.zeros(3, height, width)
    nearest = torch.full((height, width), math.inf)
    for perturbation, (left, top, side) in zip(deltas, squares, strict=True):
        resized = upsize_perturbation(perturbation[None], side)[0]
        ys = torch.arange(top, top + side, dtype=torch.float32)[:, None] + 0.5 - (top + side / 2.0)
        xs = torch.arange(left, left + side, dtype=torch.float32)[None, :] + 0.5 - (left + side / 2.0)
        distance = ys**2 + xs**2
        region = nearest[top:top + side, left:left + side]
        wins = distance < region
        region[wins] = distance[wins]
        delta[:, top:top + side, left:left + side][:, wins] = resized[:, wins]
    return delta, torch.isfinite(nearest)


def paste(photo: DecodedPhoto, squares: Sequence[Square], deltas: torch.Tensor) -> DecodedPhoto:
    """The photo with each face's perturbation (victims' [-1, 1] units) added inside its square, clamped to the
    valid range; colour outside the squares and the alpha channel are kept exactly.

    The perturbation is added to the photo's own (straight) colours: where the photo is partly transparent, what
    a victim sees on white carries it scaled by the opacity.
    """
    colour = torch.from_numpy(np.ascontiguousarray(photo.colour)).permute(2, 0, 1).float()
    if not squares:
        return DecodedPhoto(photo.colour.copy(), photo.alpha, photo.bit_depth, [])
    width, height = photo.size
    delta, covered = perturbation_map(deltas.detach().float().cpu(), squares, width, height)
    protected = ((colour * 2.0 - 1.0) + delta).clamp(-1.0, 1.0).add(1.0).div(2.0)
    result = torch.where(covered[None], protected, colour)
    return DecodedPhoto(result.permute(1, 2, 0).numpy(), photo.alpha, photo.bit_depth, [])


def top_level(bit_depth: int) -> int:
    """The largest integer level of a file of this depth: 255 (8 bits) or 65535 (16 bits, kept when deeper)."""
    return 65535 if bit_depth > 8 else 255


def levels(values: np.ndarray, top: int) -> np.ndarray:
    """[0, 1] floats -> the nearest integer levels 0..top (int64)."""
    return np.clip(np.rint(values.astype(np.float64) * top), 0, top).astype(np.int64)


def max_level_change(eps: float, top: int) -> int:
    """The most levels a pixel may move: eps is in [-1, 1] units, i.e. eps/2 of the [0, 1] range."""
    return int(math.floor(eps / 2.0 * top + 1e-9))


def to_levels(protected: DecodedPhoto, original: DecodedPhoto, eps: float) -> np.ndarray:
    """The protected colour as the file's integer levels [H,W,3], each within eps of the original's level.

    Rounding the protected value on its own could add half a level to a change of exactly eps; a change is
    clipped to `max_level_change` levels instead, so the written file never moves a pixel by more than eps.
    """
    top = top_level(original.bit_depth)
    base = levels(original.colour, top)
    limit = max_level_change(eps, top)
    return base + np.clip(levels(protected.colour, top) - base, -limit, limit)


def from_levels(values: np.ndarray, like: DecodedPhoto) -> DecodedPhoto:
    """Integer levels -> the photo the file holds (what reading it back gives), alpha and depth of `like`."""
    top = top_level(like.bit_depth)
    return DecodedPhoto((values.astype(np.float64) / top).astype(np.float32), like.alpha, like.bit_depth, [])


def encode_png(colour_levels: np.ndarray, alpha: np.ndarray | None, bit_depth: int) -> bytes:
    """PNG bytes: RGB or RGBA, 8- or 16-bit; `colour_levels` integer levels, alpha in [0, 1] (rounded)."""
    import cv2

    top = top_level(bit_depth)
    planes = colour_levels if alpha is None else np.dstack([colour_levels, levels(alpha, top)])
    pixels = planes.astype(np.uint16 if top > 255 else np.uint8)
    order = [2, 1, 0] if pixels.shape[2] == 3 else [2, 1, 0, 3]  # OpenCV writes BGR(A)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(pixels[..., order]), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise OSError("PNG encoding failed")
    return encoded.tobytes()
