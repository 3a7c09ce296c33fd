"""Faces found anywhere in a photo (advwm.protect.faces) and protected where they are (advwm.protect)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from corpus import smooth_watermark, v1
from PIL import Image

from advwm.protect.cli import main
from advwm.protect.faces import CELEBA_EYES, detect_faces, fit_square, square_from_eyes
from advwm.protect.paste import perturbation_map

pytestmark = pytest.mark.usefixtures("single_thread")

ASTRONAUT_FACE = (224, 110)  # centre of Eileen Collins' face in skimage's astronaut (between the eyes)
HOPPER_FACE = (262, 200)  # centre of Grace Hopper's face in matplotlib's grace_hopper.jpg


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return np.asarray(image.convert("RGB"))


def canvas(*pasted: tuple[np.ndarray, tuple[int, int]], size: tuple[int, int] = (1300, 760)) -> np.ndarray:
    """A flat grey picture with photos pasted at (left, top)."""
    picture = np.full((size[1], size[0], 3), 128, np.uint8)
    for photo, (left, top) in pasted:
        picture[top:top + photo.shape[0], left:left + photo.shape[1]] = photo
    return picture


def covers(box: tuple[int, int, int, int], point: tuple[float, float]) -> bool:
    left, top, width, height = box
    return left <= point[0] <= left + width and top <= point[1] <= top + height


def test_celeba_eyes_give_back_celebas_own_centre_crop() -> None:
    # the geometry's source: the reference crop (left 4, top 24, side 170) of an aligned 178x218 face
    assert square_from_eyes(*CELEBA_EYES) == pytest.approx((4.0, 24.0, 170.0))
    left, top, side = square_from_eyes((1000 + 2 * 69, 500 + 2 * 111), (1000 + 2 * 108, 500 + 2 * 111))
    assert (left, top, side) == pytest.approx((1000 + 8, 500 + 48, 340))  # twice as large, moved


def test_a_square_leaving_the_photo_is_moved_back_inside_and_shrunk_when_too_large() -> None:
    assert fit_square(-10.0, -5.0, 50.0, 200, 100) == (0, 0, 50)
    assert fit_square(180.0, 70.0, 50.0, 200, 100) == (150, 50, 50)
    assert fit_square(20.0, -100.0, 400.0, 300, 200) == (100, 0, 200)  # centre x 220, kept inside


def test_a_face_pasted_anywhere_is_found_where_it_is() -> None:
    offset = (610, 180)
    faces = detect_faces(canvas((astronaut(), offset)))
    assert len(faces) == 1
    face = faces[0]
    centre = (offset[0] + ASTRONAUT_FACE[0], offset[1] + ASTRONAUT_FACE[1])
    assert covers(face.box, centre) and 60 <= face.box[2] <= 200
    left, top, side = face.square
    assert covers((left, top, side, side), centre) and side > face.box[2]  # the square holds the whole head


def test_two_faces_side_by_side_are_both_found() -> None:
    faces = detect_faces(canvas((astronaut(), (40, 120)), (grace_hopper(), (720, 80))))
    assert len(faces) == 2
    centres = [(40 + ASTRONAUT_FACE[0], 120 + ASTRONAUT_FACE[1]), (720 + HOPPER_FACE[0], 80 + HOPPER_FACE[1])]
    assert all(any(covers(f.box, c) for f in faces) for c in centres)


@pytest.mark.parametrize("picture", ["coffee", "noise"])
def test_no_face_in_a_coffee_cup_or_noise(picture: str) -> None:
    from skimage import data

    image = data.coffee() if picture == "coffee" else \
        (np.random.default_rng(0).random((400, 600, 3)) * 255).astype(np.uint8)
    assert detect_faces(image) == []


def test_overlapping_squares_give_each_pixel_the_nearest_faces_watermark() -> None:
    wm = smooth_watermark(8)
    delta, covered = perturbation_map(wm.expand(2, -1, -1, -1), [(0, 0, 40), (20, 0, 40)], 80, 50)
    first = F.interpolate(wm[None], size=(40, 40), mode="nearest-exact")[0]  # advwm.protect.paste's upsizing
    second = first
    assert torch.equal(delta[:, :40, :30], first[:, :, :30])  # nearer the first square's centre (x=20)
    assert torch.equal(delta[:, :40, 31:60], second[:, :, 11:40])  # nearer the second's (x=40)
    assert covered[:40, :60].all() and not covered[40:].any() and not covered[:, 60:].any()
    assert delta.abs().max() <= 0.05 + 1e-6  # never two watermarks added on one pixel


def test_protect_changes_only_the_face_squares_by_the_resized_watermark(tmp_path: Path) -> None:
    picture = canvas((astronaut(), (40, 120)), (grace_hopper(), (720, 80)))
    Image.fromarray(picture).save(tmp_path / "two.png")
    watermark = smooth_watermark(32)
    torch.save(v1(watermark), tmp_path / "watermark.pt")
    assert main([str(tmp_path / "watermark.pt"), str(tmp_path / "two.png"), "--out", str(tmp_path / "out")]) == 0
    protected = np.asarray(Image.open(tmp_path / "out" / "two.png.png")).astype(np.float64)
    squares = [f.square for f in detect_faces(picture)]
    assert len(squares) == 2
    inside = np.zeros(picture.shape[:2], bool)
    for left, top, side in squares:
        inside[top:top + side, left:left + side] = True
    assert np.array_equal(protected[~inside], picture[~inside])  # nothing outside the face squares moved
    delta, _ = perturbation_map(watermark.expand(2, -1, -1, -1), squares, picture.shape[1], picture.shape[0])
    expected = delta.permute(1, 2, 0).numpy() * 127.5  # [-1,1] units -> 8-bit levels
    change = protected - picture
    free = inside[..., None] & (picture > 8) & (picture < 247)  # away from clamping at 0 and 255
    assert np.abs(change - expected)[free].max() <= 0.5 + 1e-3  # up to 8-bit rounding
    assert np.abs(change[inside]).max() > 5  # the watermark is there


def test_a_photo_without_a_face_comes_back_unchanged_with_a_warning(tmp_path: Path, capsys) -> None:
    from skimage import data

    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    Image.fromarray(canvas((astronaut(), (10, 10)), size=(700, 600))).save(tmp_path / "face.png")
    torch.save(v1(smooth_watermark(16)), tmp_path / "w.pt")
    code = main([str(tmp_path / "w.pt"), str(tmp_path / "coffee.png"), str(tmp_path / "face.png"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0 and "no face" in err and "coffee.png" in err and "unchanged" in err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["coffee.png.png", "face.png.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "coffee.png.png")), data.coffee())
    rows = (tmp_path / "out" / "protection.csv").read_text().splitlines()
    assert rows[1].startswith("coffee.png,coffee.png.png,no face: unchanged,0,")
    assert rows[2].startswith("face.png,face.png.png,protected,1,faces,")
    code = main([str(tmp_path / "w.pt"), str(tmp_path / "coffee.png"), "--out", str(tmp_path / "out2")])
    assert code == 1  # no photo protected at all: an error, though the photo came back unchanged
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "coffee.png"), "--out", str(tmp_path / "out3"),
                 "--no-detect"]) == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "out3" / "coffee.png.png")), data.coffee())
