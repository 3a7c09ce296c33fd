"""Photos read as a person sees them: one decoder for the data modules and `python -m advwm.protect`.

A viewer shows a photo upright (EXIF orientation), at its full tonal range whatever the bit depth
(8/16-bit integers, floats), in RGB (CMYK and embedded ICC profiles converted to sRGB), and shows
transparency over a background. `open_photo` does the same and returns a `DecodedPhoto`: straight
(not premultiplied) colour as float32 in [0, 1], the alpha channel when the photo has one, the bit
depth worth keeping when writing a protected copy, and warnings about anything it had to choose.

What is refused (`PhotoError`, one line naming the reason): files no decoder reads (empty, truncated,
not an image), decompression bombs (more pixels than PIL's `Image.MAX_IMAGE_PIXELS`), photos smaller
than `MIN_SIDE` pixels a side or longer than `MAX_ASPECT`:1 (no face fits them), non-finite pixels.
Every decoder error is caught per file, so a kind of breakage nobody listed still only skips that file.

`list_photos` walks a folder the same way for everyone: sorted, symlinked folders followed once (a link
back into a folder already walked is a loop and is skipped), and entries that cannot be opened as a
regular file (broken or looping links, FIFOs, devices) reported instead of hanging or crashing.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MIN_SIDE = 32  # px: below this no face survives the crop to the victims' size
MAX_ASPECT = 4.0  # longer side / shorter side: a panorama or a strip, not a face photo
ORIENTATION_TAG = 0x0112  # EXIF/TIFF "Orientation"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
SIXTEEN_BIT_RAWMODES = ("RGB;16", "RGBA;16")  # prefixes of PIL raw modes that PIL reduces to 8 bits on load
HAS_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class PhotoError(ValueError):
    """A file that is not decoded into a photo; the message says why, in one line."""


@dataclass
class DecodedPhoto:
    """An upright photo: colour [H,W,3] float32 in [0,1] (straight), alpha [H,W] or None, bit depth."""

    colour: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL says it."""
        return int(self.colour.shape[1]), int(self.colour.shape[0])

    def on_white(self) -> np.ndarray:
        """What a viewer shows on a white page: colour composited over white by the alpha channel."""
        if self.alpha is None:
            return self.colour
        alpha = self.alpha[..., None]
        return self.colour * alpha + (1.0 - alpha)

    def to_pil(self) -> Image.Image:
        """8-bit RGB PIL image of `on_white()` (what the data modules crop and resize)."""
        pixels = np.clip(np.rint(self.on_white() * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels, "RGB")


# ---- reading a file ---------------------------------------------------------------------------------

def open_photo(path: str | Path, min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT) -> DecodedPhoto:
    """Decode `path` as a viewer would; raises PhotoError (one line) for anything that is not a usable photo."""
    path = Path(path)
    try:
        return _decode(path, min_side, max_aspect)
    except PhotoError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PhotoError(f"refused as a possible decompression bomb: {_first_line(error)}") from None
    except MemoryError:
        raise PhotoError("too large to decode in memory") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure only skips this file
        raise PhotoError(f"cannot decode it ({type(error).__name__}: {_first_line(error)})") from None


def _decode(path: Path, min_side: int, max_aspect: float) -> DecodedPhoto:
    if not path.is_file():
        raise PhotoError("not a regular file (missing, a folder, a broken or looping link, a FIFO or a device)")
    if path.stat().st_size == 0:
        raise PhotoError("empty file (0 bytes)")
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # the warning level is refused as well
        try:
            image = Image.open(path)
        except UnidentifiedImageError:
            if _is_tiff(path):  # e.g. floating-point RGB TIFFs, which PIL does not read
                return _decode_tiff(path, min_side, max_aspect)
            raise PhotoError("not an image format that can be read (cannot identify image file)") from None
        with image:
            check_geometry(image.size, min_side, max_aspect)
            frames = int(getattr(image, "n_frames", 1) or 1)
            if frames > 1:
                if image.format != "MPO":  # a camera's multi-picture JPEG: the first picture is the photo
                    notes.append(f"has {frames} frames (animated or multi-page): only the first is used")
                image.seek(0)
            rawmode = _rawmode(image)  # before anything loads the pixels (loading clears the tile list)
            orientation = _orientation(image, notes)
            try:
                colour, alpha, depth = _pixels(path, image, rawmode, notes)
            except (PhotoError, Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
                raise
            except Exception:
                if not _is_tiff(path):  # a TIFF PIL opens but cannot decode may still be read by tifffile
                    raise
                return _decode_tiff(path, min_side, max_aspect)
    colour, alpha = orient(colour, orientation), None if alpha is None else orient(alpha, orientation)
    return DecodedPhoto(np.ascontiguousarray(colour), None if alpha is None else np.ascontiguousarray(alpha),
                        depth, notes)


def check_geometry(size: tuple[int, int], min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT) -> None:
    """Refuse photos too small or too elongated to hold a face the victims could edit."""
    width, height = size
    if min(width, height) < min_side:
        raise PhotoError(f"{width}x{height} px is smaller than {min_side} px on a side")
    if max(width, height) > max_aspect * min(width, height):
        raise PhotoError(f"{width}x{height} px is more elongated than 1:{max_aspect:g}")


def _orientation(image: Image.Image, notes: list[str]) -> int:
    try:
        value = int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception as error:  # noqa: BLE001 - a broken EXIF block must not lose the photo
        notes.append(f"unreadable EXIF ({type(error).__name__}): orientation not applied")
        return 1
    if value not in range(1, 9):
        notes.append(f"EXIF orientation {value} is not one of 1-8: used as stored")
        return 1
    return value


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels [H,W,...] -> upright, for EXIF orientation 1-8 (the transposes PIL's exif_transpose makes)."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, -1)
    if orientation == 7:
        return np.rot90(array, 2).swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, 1)
    return array


def _rawmode(image: Image.Image) -> str:
    """How the file stores its samples (e.g. 'RGB;16B'), which PIL's mode does not always say."""
    if not image.tile or len(image.tile[0]) < 4:
        return ""
    args = image.tile[0][3]
    args = args[0] if isinstance(args, tuple) and args else args
    return args if isinstance(args, str) else ""


def _pixels(path: Path, image: Image.Image, rawmode: str,
            notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(colour [H,W,3], alpha [H,W] or None, bit depth) in [0, 1], as stored (not yet oriented)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        return _grey16(image, notes)
    if mode == "F":
        grey = _unit_float(np.asarray(image, dtype=np.float32), notes)
        return np.repeat(grey[..., None], 3, axis=2), None, 16
    if rawmode.startswith(SIXTEEN_BIT_RAWMODES):
        wide = _sixteen_bit_colour(path)  # PIL would keep only 8 of the 16 bits
        if wide is not None:
            return wide
    image.load()
    image = _to_srgb(image, notes)
    has_alpha = mode in HAS_ALPHA_MODES or "transparency" in image.info
    rgba = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    return rgba[..., :3], (rgba[..., 3] if has_alpha else None), 8


def _grey16(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, int]:
    """16-bit greyscale (modes I;16*, and I, which is how PIL presents 16-bit samples): divided by 65535."""
    values = np.asarray(image).astype(np.float64)
    alpha = None
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha = (values != transparent).astype(np.float32)
    if values.size and (values.min() < 0 or values.max() > 65535):
        notes.append(f"integer pixels span {values.min():g}..{values.max():g}, outside 16 bits: clipped to 0..65535")
    grey = np.clip(values / 65535.0, 0.0, 1.0).astype(np.float32)
    return np.repeat(grey[..., None], 3, axis=2), alpha, 16


def _unit_float(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """Floating-point samples -> [0, 1]: taken as [0, 1] (the float convention), or as 8/16-bit numbers
    stored in floats when they go beyond 1; refused when not finite."""
    if not np.isfinite(values).all():
        raise PhotoError("has NaN or infinite pixel values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    scale = 1.0
    if high > 1.0:
        scale = 255.0 if high <= 255.0 else 65535.0
        notes.append(f"floating-point pixels reach {high:g}: read as 0..{scale:g}")
    if low < 0.0 or high / scale > 1.0:
        notes.append(f"floating-point pixels span {low:g}..{high:g}: clipped to 0..{scale:g}")
    return np.clip(values / scale, 0.0, 1.0).astype(np.float32)


def _sixteen_bit_colour(path: Path) -> tuple[np.ndarray, np.ndarray | None, int] | None:
    """48/64-bit RGB(A) PNG or TIFF at full precision (PIL reduces them to 8 bits); None if OpenCV cannot."""
    import cv2

    decoded = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.dtype != np.uint16 or decoded.ndim != 3 or decoded.shape[2] not in (3, 4):
        return None
    values = decoded.astype(np.float32) / 65535.0
    colour = values[..., 2::-1] if values.shape[2] == 3 else values[..., [2, 1, 0]]  # BGR(A) -> RGB
    return colour, (values[..., 3] if values.shape[2] == 4 else None), 16


def _to_srgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Convert RGB/CMYK pixels with an embedded ICC profile to sRGB, as a colour-managed viewer shows them."""
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ("RGB", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception as error:  # noqa: BLE001 - a broken profile: fall back to the plain conversion
        notes.append(f"embedded ICC profile unusable ({type(error).__name__}): colours converted without it")
        return image


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) in TIFF_MAGIC


def _decode_tiff(path: Path, min_side: int, max_aspect: float) -> DecodedPhoto:
    """TIFFs PIL cannot read (floating-point or many-sample colour), through tifffile."""
    import tifffile

    notes: list[str] = []
    with tifffile.TiffFile(path) as tiff:
        if len(tiff.pages) > 1:
            notes.append(f"has {len(tiff.pages)} pages: only the first is used")
        page = tiff.pages.first
        axes = page.axes
        width, height = int(page.imagewidth), int(page.imagelength)
        check_geometry((width, height), min_side, max_aspect)
        if width * height > (Image.MAX_IMAGE_PIXELS or float("inf")):
            raise PhotoError(f"refused as a possible decompression bomb: {width * height} pixels exceed "
                             f"the limit of {Image.MAX_IMAGE_PIXELS}")
        tag = page.tags.get(ORIENTATION_TAG)
        orientation = int(tag.value) if tag is not None and int(tag.value) in range(1, 9) else 1
        cmyk = int(page.photometric) == 5  # SEPARATED
        values = page.asarray()
    if "S" in axes and values.ndim == 3 and axes.index("S") == 0:
        values = np.moveaxis(values, 0, -1)
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or values.shape[2] > 4:
        raise PhotoError(f"TIFF layout {axes} {values.shape} is not a single greyscale or colour image")
    if np.issubdtype(values.dtype, np.floating):
        unit = _unit_float(values.astype(np.float32), notes)
    else:
        bits = 8 if values.dtype.itemsize == 1 else 16
        if values.dtype.itemsize > 2 or np.issubdtype(values.dtype, np.signedinteger):
            notes.append(f"{values.dtype} samples read as 16-bit (clipped to 0..65535)")
        unit = np.clip(values.astype(np.float64) / (2**bits - 1), 0.0, 1.0).astype(np.float32)
    depth = 8 if values.dtype == np.uint8 else 16
    samples = unit.shape[2]
    alpha = None
    if cmyk and samples == 4:
        colour = (1.0 - unit[..., :3]) * (1.0 - unit[..., 3:4])
    elif samples in (1, 2):
        colour = np.repeat(unit[..., :1], 3, axis=2)
        alpha = unit[..., 1] if samples == 2 else None
    else:
        colour = unit[..., :3]
        alpha = unit[..., 3] if samples == 4 else None
    colour, alpha = orient(colour, orientation), None if alpha is None else orient(alpha, orientation)
    return DecodedPhoto(np.ascontiguousarray(colour), None if alpha is None else np.ascontiguousarray(alpha),
                        depth, notes)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


# ---- finding photos in a folder -----------------------------------------------------------------------

@dataclass
class Listing:
    """Photo files found under a folder (sorted) and one line for each entry that was passed over."""

    files: list[Path]
    skipped: list[tuple[Path, str]]


def list_photos(root: str | Path, exclude: Iterable[str | Path] = ()) -> Listing:
    """Image files (by suffix, `IMAGE_SUFFIXES`) under `root`, recursively, sorted by path.

    Symlinked folders are followed unless they lead back to a folder already walked (a loop, reported);
    image-named entries that are not regular files (broken or looping links, FIFOs, devices) are reported
    and never opened. Folders in `exclude` (e.g. protect's output folder inside its input) are not walked.
    """
    root = Path(root)
    excluded = {_identity(Path(p)) for p in exclude if Path(p).is_dir()}
    seen: set[tuple[int, int]] = set()
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for folder, subfolders, names in os.walk(root, followlinks=True, onerror=lambda e: skipped.append(
            (Path(e.filename or root), f"folder not readable ({e.strerror})"))):
        here = _identity(Path(folder))
        seen.add(here)
        keep = []
        for name in sorted(subfolders):
            sub = Path(folder) / name
            try:
                ident = _identity(sub)
            except OSError as error:
                skipped.append((sub, f"folder not readable ({error.strerror})"))
                continue
            if ident in excluded:
                continue
            if ident in seen:
                skipped.append((sub, "symlink loop: a link back to a folder already searched"))
                continue
            seen.add(ident)
            keep.append(name)
        subfolders[:] = keep
        for name in names:
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = Path(folder) / name
            try:
                mode = os.stat(path).st_mode
            except OSError as error:
                reason = "symlink loop" if error.errno == errno.ELOOP else "broken link or unreadable entry"
                skipped.append((path, f"{reason} ({error.strerror})"))
                continue
            if not stat.S_ISREG(mode):
                skipped.append((path, "not a regular file (a FIFO, socket or device)"))
                continue
            files.append(path)
    return Listing(sorted(files), sorted(skipped))


def _identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino
