"""Faces found anywhere in a photo, each framed the way the victims saw faces during their training.

**Detector.** OpenCV's Viola-Jones Haar cascades (`haarcascade_frontalface_default.xml`, and
`haarcascade_eye.xml` inside each face), which the opencv-python wheel ships under
`cv2.data.haarcascades`: nothing is downloaded at run time. (OpenCV 5 wheels no longer ship the
cascades, hence the opencv-python 4.14 pin; YuNet's ONNX model is not in any wheel; MediaPipe's current
wheels no longer bundle their face model.) Frontal faces only; no in-plane rotation is corrected, since
the watermark goes back into the photo as it stands.

**Framing (CelebA).** The victims were trained on CelebA's aligned faces: 178x218 images in which the
eye centres sit at about (69, 111) and (108, 111) (CelebA's `list_landmarks_align_celeba.txt`; the
values the alignment targets), of which the pipeline takes the central 170x170 square (left 4, top 24)
and resizes it to `image_size`. In that square the eyes are level, d = 39 px apart, their midpoint at
(84.5, 87). So for a face with eyes d px apart the square the victims expect has side 170/39 d
(= 4.36 d), and its left and top edges are 84.5/39 d and 87/39 d left of and above the eyes' midpoint.
When the eye cascade finds exactly one plausible eye in each half of the face box, that rule is used
directly. Otherwise the eyes are placed where they sit in an average Haar face box: d = 0.42 box widths
apart, on a line 0.37 box heights below the box's top, centred (measured with the eye cascade on the two
bundled demo portraits: d = 0.48 and 0.36 box widths, eye line 0.37 for both).

A square that leaves the photo is moved back inside it (and shrunk to the photo's shorter side when
larger), so it always holds real pixels: the crop a forger would take.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# CelebA aligned geometry (pixels of the 178x218 aligned image)
CELEBA_EYES = ((69.0, 111.0), (108.0, 111.0))
CELEBA_CROP = 170
CELEBA_CROP_ORIGIN = ((178 - CELEBA_CROP) / 2.0, (218 - CELEBA_CROP) / 2.0)  # (4, 24): the centre crop
_EYE_DISTANCE = CELEBA_EYES[1][0] - CELEBA_EYES[0][0]  # 39
_MID_IN_CROP = ((CELEBA_EYES[0][0] + CELEBA_EYES[1][0]) / 2.0 - CELEBA_CROP_ORIGIN[0],
                (CELEBA_EYES[0][1] + CELEBA_EYES[1][1]) / 2.0 - CELEBA_CROP_ORIGIN[1])  # (84.5, 87)
SIDE_PER_EYE_DISTANCE = CELEBA_CROP / _EYE_DISTANCE
# eyes in an average Haar frontal-face box (fractions of the box's width / height)
BOX_EYE_DISTANCE = 0.42
BOX_EYE_LINE = 0.37
# detection settings
DETECT_MAX_SIDE = 1024  # photos are searched at most this large (faces in larger photos are large too)
MIN_FACE = 24  # px at the detection scale
SCALE_FACTOR = 1.1
MIN_NEIGHBOURS = 5

Point = tuple[float, float]
Square = tuple[int, int, int]  # left, top, side


@dataclass(frozen=True)
class Face:
    """One detected face: the detector's box (left, top, width, height), the eyes if found, the square crop."""

    box: tuple[int, int, int, int]
    eyes: tuple[Point, Point] | None
    square: Square


def square_from_eyes(left_eye: Point, right_eye: Point) -> tuple[float, float, float]:
    """(left, top, side) of the CelebA-framed square for eyes at these image positions (left eye = smaller x)."""
    distance = float(np.hypot(right_eye[0] - left_eye[0], right_eye[1] - left_eye[1]))
    mid_x, mid_y = (left_eye[0] + right_eye[0]) / 2.0, (left_eye[1] + right_eye[1]) / 2.0
    scale = distance / _EYE_DISTANCE
    return mid_x - _MID_IN_CROP[0] * scale, mid_y - _MID_IN_CROP[1] * scale, CELEBA_CROP * scale


def eyes_from_box(box: tuple[int, int, int, int]) -> tuple[Point, Point]:
    """Where the eyes of an average face sit in a Haar face box."""
    left, top, width, height = box
    mid_x, line = left + width / 2.0, top + BOX_EYE_LINE * height
    half = BOX_EYE_DISTANCE * width / 2.0
    return (mid_x - half, line), (mid_x + half, line)


def fit_square(left: float, top: float, side: float, width: int, height: int) -> Square:
    """Integer square of about `side` px, moved (and if needed shrunk) so that it lies inside the photo."""
    size = int(round(min(side, width, height)))
    centre_x, centre_y = left + side / 2.0, top + side / 2.0
    new_left = int(round(min(max(centre_x - size / 2.0, 0.0), width - size)))
    new_top = int(round(min(max(centre_y - size / 2.0, 0.0), height - size)))
    return new_left, new_top, size


@functools.lru_cache(maxsize=1)
def _cascades():
    import cv2

    folder = cv2.data.haarcascades
    face = cv2.CascadeClassifier(folder + "haarcascade_frontalface_default.xml")
    eye = cv2.CascadeClassifier(folder + "haarcascade_eye.xml")
    if face.empty() or eye.empty():
        raise RuntimeError(f"OpenCV's Haar cascades are missing from {folder}: reinstall opencv-python (pinned in "
                           "pyproject.toml)")
    return face, eye


def detect_faces(rgb: np.ndarray) -> list[Face]:
    """Frontal faces in an RGB photo [H,W,3] (uint8, or float in [0,1]), top to bottom then left to right."""
    import cv2

    if rgb.dtype != np.uint8:
        rgb = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    height, width = rgb.shape[:2]
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    face_cascade, eye_cascade = _cascades()
    boxes = face_cascade.detectMultiScale(grey, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBOURS,
                                          minSize=(MIN_FACE, MIN_FACE))
    faces = []
    for x, y, w, h in (tuple(int(v) for v in b) for b in boxes):
        eyes = _find_eyes(eye_cascade, grey, (x, y, w, h))
        box = tuple(int(round(v / scale)) for v in (x, y, w, h))
        if eyes is not None:
            eyes = tuple((float(ex / scale), float(ey / scale)) for ex, ey in eyes)
            square = square_from_eyes(*eyes)
        else:
            square = square_from_eyes(*eyes_from_box(box))
        faces.append(Face(box=box, eyes=eyes, square=fit_square(*square, width, height)))  # type: ignore[arg-type]
    return sorted(faces, key=lambda f: (f.box[1], f.box[0]))


def _find_eyes(cascade, grey: np.ndarray, box: tuple[int, int, int, int]) -> tuple[Point, Point] | None:
    """Exactly one eye in each half of the upper face, level and about as far apart as eyes are; else None."""
    x, y, w, h = box
    roi = grey[y:y + int(0.6 * h), x:x + w]
    found = cascade.detectMultiScale(roi, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBOURS,
                                     minSize=(max(1, w // 10), max(1, w // 10)))
    centres = [(x + ex + ew / 2.0, y + ey + eh / 2.0) for ex, ey, ew, eh in found]
    centres = [c for c in centres if y + 0.2 * h <= c[1] <= y + 0.55 * h]
    left = [c for c in centres if c[0] < x + w / 2.0]
    right = [c for c in centres if c[0] >= x + w / 2.0]
    if len(left) != 1 or len(right) != 1:
        return None
    (lx, ly), (rx, ry) = left[0], right[0]
    distance = float(np.hypot(rx - lx, ry - ly))
    if not (0.25 * w <= distance <= 0.65 * w) or abs(ry - ly) > 0.2 * distance:
        return None
    return left[0], right[0]
