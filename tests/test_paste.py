"""The one crop -> protect -> paste path (advwm.protect.paste) against hand values, and what it promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from advwm.data import ImageFolderDataModule
from advwm.data.decode import DecodedPhoto, open_photo
from advwm.protect.faces import detect_faces
from advwm.protect.paste import (
    central_square,
    crop_faces,
    face_squares,
    max_level_change,
    paste,
    perturbation_map,
    photo_tensor,
    resize_square,
    to_levels,
    upsize_perturbation,
)
from advwm.protect.protectors import CraftedPerturbations, UniversalWatermark

pytestmark = pytest.mark.usefixtures("single_thread")


def grey(width: int, height: int, value: float = 0.5) -> DecodedPhoto:
    return DecodedPhoto(np.full((height, width, 3), value, np.float32))


def test_a_known_perturbation_lands_where_the_face_square_says_upsized_pixel_by_pixel() -> None:
    delta = torch.tensor([[[0.04, -0.02], [0.00, 0.03]],
                          [[-0.05, 0.05], [0.01, -0.01]],
                          [[0.02, 0.02], [-0.04, 0.00]]])  # [3,2,2], image_size 2
    photo = grey(40, 30)
    protected = paste(photo, [(10, 5, 5)], delta[None])  # a 5 px square at left 10, top 5
    # by hand, nearest-neighbour centred: square pixel i samples delta at floor((i + 0.5) * 2 / 5) = 0, 0, 1, 1, 1
    source = [0, 0, 1, 1, 1]
    expected = np.array([[[float(delta[c, source[i], source[j]]) for j in range(5)] for i in range(5)]
                         for c in range(3)])
    change = (protected.colour - photo.colour) * 2.0  # back to the victims' [-1, 1] units
    assert np.allclose(change[5:10, 10:15].transpose(2, 0, 1), expected, atol=1e-6)
    outside = np.ones((30, 40), bool)
    outside[5:10, 10:15] = False
    assert np.array_equal(protected.colour[outside], photo.colour[outside])  # nothing else moved, bit for bit


def test_the_crop_is_the_documented_antialiased_bilinear_resize() -> None:
    # shrinking 4 -> 2 px: output 0 is centred at 1.0 in input pixels and the triangle filter is 2 px wide, so
    # inputs 0, 1, 2 weigh 0.75, 0.75, 0.25 (normalised by 1.75), PIL's BILINEAR weights
    values = torch.tensor([0.0, 0.4, -0.8, 0.2])
    image = values.view(1, 1, 4).expand(3, 4, 4).clone()  # varies along x only
    photo = torch.full((3, 20, 30), -1.0)
    photo[:, 6:10, 12:16] = image
    crop = crop_faces(photo, [(12, 6, 4)], 2)[0]
    first = (0.75 * 0.0 + 0.75 * 0.4 + 0.25 * -0.8) / 1.75
    second = (0.25 * 0.4 + 0.75 * -0.8 + 0.75 * 0.2) / 1.75
    assert torch.allclose(crop[:, :, 0], torch.full((3, 2), first), atol=1e-6)
    assert torch.allclose(crop[:, :, 1], torch.full((3, 2), second), atol=1e-6)
    same = torch.randn(1, 3, 7, 7)
    assert torch.equal(resize_square(same, 7), same)  # a square already at the victims' size is left as it is


@pytest.mark.parametrize("size", [2, 5, 8, 32])
def test_an_upsized_perturbation_only_holds_crafted_values_so_never_goes_past_eps(size: int) -> None:
    eps = 0.05
    delta = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 * eps - eps
    for side in (1, 3, max(size - 1, 1), size + 1, 2 * size + 3, 97, 301):
        upsized = upsize_perturbation(delta, side)
        for c in range(3):  # every pasted value is one of its channel's crafted values
            assert torch.isin(upsized[0, c], delta[0, c]).all(), (size, side)
        assert upsized.abs().max() <= eps
    assert torch.equal(upsize_perturbation(delta, size), delta)


def test_bilinear_upsizing_would_keep_less_of_the_perturbation_through_the_crop() -> None:
    # why nearest-neighbour (module docstring): a +-eps pattern pasted into a 3x larger square and cropped back
    eps = 0.05
    delta = torch.sign(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))) * eps
    kept = {}
    for name, upsized in (("nearest", upsize_perturbation(delta, 97)),
                          ("bilinear", F.interpolate(delta, size=(97, 97), mode="bilinear", antialias=True,
                                                     align_corners=False))):
        seen = resize_square(upsized, 32)  # what the crop gives the victims
        kept[name] = float((seen * delta).sum() / (delta * delta).sum())
    assert kept["nearest"] > kept["bilinear"] + 0.05


def test_each_face_gets_its_own_perturbation_and_overlaps_the_nearest_centres() -> None:
    photo = grey(100, 60)
    first, second = torch.full((3, 4, 4), 0.04), torch.full((3, 4, 4), -0.03)
    apart = paste(photo, [(0, 0, 20), (50, 10, 30)], torch.stack([first, second]))
    change = (apart.colour - photo.colour) * 2.0
    assert np.allclose(change[0:20, 0:20], 0.04, atol=1e-6) and np.allclose(change[10:40, 50:80], -0.03, atol=1e-6)
    assert np.count_nonzero(np.abs(change).sum(axis=2)) == 20 * 20 + 30 * 30
    # overlapping squares (0..40 and 20..60 wide): pixels left of x = 30 are nearer the first centre (x = 20)
    delta, covered = perturbation_map(torch.stack([first, second]), [(0, 0, 40), (20, 0, 40)], 100, 60)
    assert torch.allclose(delta[:, :40, :30], torch.tensor(0.04)) and torch.allclose(delta[:, :40, 31:60],
                                                                                    torch.tensor(-0.03))
    assert covered[:40, :60].all() and not covered[40:].any() and not covered[:, 60:].any()


def test_no_square_gives_the_photo_back_unchanged() -> None:
    photo = DecodedPhoto(np.random.default_rng(0).random((40, 50, 3)).astype(np.float32))
    same = paste(photo, [], torch.empty(0, 3, 8, 8))
    assert np.array_equal(same.colour, photo.colour)
    assert np.array_equal(to_levels(same, photo, 0.05), np.rint(photo.colour.astype(np.float64) * 255))


@pytest.mark.parametrize("eps", [0.05, 0.053, 0.0549])
def test_the_written_levels_never_move_a_pixel_by_more_than_eps(eps: float) -> None:
    rng = np.random.default_rng(1)
    photo = DecodedPhoto((rng.integers(30, 220, (16, 16, 3)) / 255.0).astype(np.float32))
    delta = torch.from_numpy(np.sign(rng.standard_normal((1, 3, 16, 16)))).float() * eps  # +-eps everywhere
    protected = paste(photo, [(0, 0, 16)], delta)
    levels = to_levels(protected, photo, eps)
    base = np.rint(photo.colour.astype(np.float64) * 255)
    change = (levels - base) / 127.5  # [-1, 1] units
    assert np.abs(change).max() <= eps + 1e-12
    assert np.abs(levels - base).max() == max_level_change(eps, 255) == int(eps * 127.5)
    # the check can fail: rounding the protected value alone moves by 7 levels (0.0549) at eps 0.053
    naive = np.rint(protected.colour.astype(np.float64) * 255)
    assert (eps == 0.05) or np.abs((naive - base) / 127.5).max() > eps


def test_strength_above_one_is_refused_by_the_protector() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        UniversalWatermark(torch.zeros(3, 8, 8), 0.05, strength=1.5)
    half = UniversalWatermark(torch.full((3, 8, 8), 0.04), 0.05, strength=0.5)
    assert torch.allclose(half(torch.zeros(2, 3, 8, 8), ["a", "b"]), torch.tensor(0.02))
    crafted = CraftedPerturbations({"p#1": torch.ones(3, 8, 8)}, 0.05, 8)
    with pytest.raises(KeyError, match="p#2"):
        crafted(torch.zeros(1, 3, 8, 8), ["p#2"])


def test_center_crop_zero_or_negative_is_refused() -> None:
    assert central_square(90, 60, None) == (15, 0, 60)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="positive"):
            central_square(90, 60, bad)
        with pytest.raises(ValueError, match="center_crop"):
            ImageFolderDataModule("/nowhere", center_crop=bad)


def portrait(size: tuple[int, int] = (512, 600)) -> np.ndarray:
    """Grace Hopper (matplotlib's sample, 512 x 600): a non-square portrait, so a sideways decode changes its shape."""
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return np.asarray(image.convert("RGB").resize(size))


def test_an_exif_rotated_photo_is_found_cropped_and_protected_upright(tmp_path: Path) -> None:
    upright = portrait()  # 600 high, 512 wide
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": the file stores the photo turned counter-clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1))).save(tmp_path / "sideways.png", exif=exif.tobytes())
    sideways = open_photo(tmp_path / "sideways.png")
    assert sideways.size == (512, 600) and np.array_equal(sideways.colour, open_photo(tmp_path / "upright.png").colour)
    squares = face_squares(sideways)
    assert len(squares) == 1 and squares == [f.square for f in detect_faces(upright)]
    module = ImageFolderDataModule(str(tmp_path), image_size=16, batch_size=2)
    module.setup()
    assert [i.name for i in module.craft_items] == ["sideways.png#1", "upright.png#1"]
    samples = list(module.train_dataloader())[0]["image"]
    assert torch.equal(samples[0], samples[1])  # the same face crop from both files
    delta = torch.full((1, 3, 16, 16), 0.05)
    protected = paste(sideways, squares, delta)
    left, top, side = squares[0]
    moved = np.abs(protected.colour - sideways.colour).sum(axis=2) > 0
    rows, cols = np.nonzero(moved)
    assert protected.colour.shape == (600, 512, 3)
    assert rows.min() >= top and rows.max() < top + side and cols.min() >= left and cols.max() < left + side


def test_the_data_module_serves_one_crop_per_face_named_photo_hash_k(tmp_path: Path) -> None:
    from skimage import data

    astronaut = data.astronaut()
    two = np.full((760, 1300, 3), 128, np.uint8)  # tests/test_faces.py's two-face layout
    two[120:632, 40:552] = astronaut
    two[80:680, 720:1232] = portrait()
    Image.fromarray(two).save(tmp_path / "b_two.png")
    Image.fromarray(data.coffee()).save(tmp_path / "a_coffee.png")
    Image.fromarray(astronaut).save(tmp_path / "c_one.png")
    module = ImageFolderDataModule(str(tmp_path), image_size=16, batch_size=4, n_craft=1)
    module.setup()
    assert [p.name for p in module.faceless] == ["a_coffee.png"]
    assert [p.name for p in module.photos] == ["b_two.png", "c_one.png"]
    assert [i.name for i in module.craft_items] == ["b_two.png#1", "b_two.png#2"]  # n_craft counts photos
    assert [i.name for i in module.eval_items] == ["c_one.png#1"]
    record = module.photos[0]
    batch = next(iter(module.train_dataloader()))
    expected = crop_faces(photo_tensor(open_photo(tmp_path / "b_two.png")), record.squares, 16)
    assert torch.equal(batch["image"], expected)
    assert record.squares[1][0] < 600 <= record.squares[0][0]  # Grace Hopper's face is higher: listed first
