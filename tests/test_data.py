"""Data modules: the reference preprocessing, the splits, repeated batches, unreadable images."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from advwm.data import CelebADataModule, DemoDataModule, ImageFolderDataModule, NoImagesError, RepeatedBatchSampler
from advwm.data.labels import label_vector
from advwm.data.transforms import preprocess, to_unit_range
from advwm.victims import CELEBA_ATTRIBUTES


def _write_face(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 50)) -> None:
    Image.new("RGB", size, colour).save(path)


def test_preprocess_maps_to_minus_one_one_and_crops_centre() -> None:
    image = Image.new("RGB", (178, 218), (0, 0, 0))
    image.paste((255, 255, 255), (4, 24, 174, 194))  # exactly the central 170x170 square is white
    tensor = preprocess(image, 32, center_crop=170)
    assert tensor.shape == (3, 32, 32)
    assert torch.allclose(tensor, torch.ones_like(tensor))
    black = preprocess(Image.new("RGB", (10, 10)), 8)
    assert torch.allclose(black, -torch.ones_like(black))
    assert torch.allclose(to_unit_range(black), torch.zeros_like(black))


def test_label_vector_marks_named_attributes() -> None:
    vector = label_vector(["Male", "Young"])
    assert vector.shape == (40,)
    assert vector.sum() == 2
    assert vector[CELEBA_ATTRIBUTES.index("Male")] == 1 and vector[CELEBA_ATTRIBUTES.index("Young")] == 1
    with pytest.raises(ValueError, match="Blue_Hair"):
        label_vector(["Blue_Hair"])


def test_repeated_batch_sampler_repeats_each_batch_in_a_row() -> None:
    sampler = RepeatedBatchSampler([[0, 1], [2]], repeats=3)  # type: ignore[arg-type]
    assert list(sampler) == [[0, 1], [0, 1], [0, 1], [2], [2], [2]]
    assert len(sampler) == 6


@pytest.mark.parametrize("judges_held_out", [True, False], ids=["universal", "per-image"])
def test_no_held_out_face_is_said_only_where_held_out_faces_are_judged(tmp_path: Path, caplog,
                                                                       judges_held_out: bool) -> None:
    """All faces crafted on: a universal run judges the crafting faces instead (and says so); a per-image run judges
    each face it crafted anyway, so the warning would be noise there (the pipeline sets the flag from the scope)."""
    _write_face(tmp_path / "a.png", (255, 0, 0))
    module = ImageFolderDataModule(str(tmp_path), n_craft=5, image_size=16, detect=False)
    module.judges_held_out = judges_held_out
    with caplog.at_level(logging.WARNING):
        module.setup()
    assert [i.name for i in module.eval_items] == ["a.png#1"]
    assert ("no held-out image; evaluating on the crafting images" in caplog.text) == judges_held_out


def test_folder_skips_a_corrupt_image_with_a_warning_and_counts_it(tmp_path: Path, caplog) -> None:
    _write_face(tmp_path / "a.png", (255, 0, 0))
    _write_face(tmp_path / "b.png", (0, 255, 0))
    _write_face(tmp_path / "c.png", (0, 0, 255))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    module = ImageFolderDataModule(str(tmp_path), n_craft=2, image_size=16, batch_size=2, repeats=2,
                                   labels=["Male"], detect=False)
    with caplog.at_level(logging.WARNING):
        module.setup()
    assert module.skipped == [str(tmp_path / "broken.jpg")]
    assert "broken.jpg" in caplog.text
    assert [i.name for i in module.craft_items] == ["a.png#1", "b.png#1"]
    assert [i.name for i in module.eval_items] == ["c.png#1"]
    batches = list(module.train_dataloader())
    assert len(batches) == 2 and batches[0]["image"].shape == (2, 3, 16, 16)
    assert torch.equal(batches[0]["image"], batches[1]["image"])
    assert batches[0]["labels"][0, CELEBA_ATTRIBUTES.index("Male")] == 1


def test_folder_without_readable_images_stops_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(NoImagesError, match="no face found in any of its 0 readable photo"):
        ImageFolderDataModule(str(tmp_path), image_size=16).setup()
    with pytest.raises(NoImagesError, match="no image file"):
        ImageFolderDataModule(str(_empty(tmp_path)), image_size=16).setup()
    with pytest.raises(NoImagesError, match="does not exist"):
        ImageFolderDataModule(str(tmp_path / "missing"), image_size=16).setup()


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def _fake_celeba(root: Path, n: int) -> None:
    (root / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        _write_face(root / "img_align_celeba" / name, (i * 20 % 255, 0, 0), size=(178, 218))
    rows = [str(n), " ".join(CELEBA_ATTRIBUTES)]
    for i, name in enumerate(names):
        values = ["1" if (j + i) % 3 == 0 else "-1" for j in range(40)]
        rows.append(f"{name} {' '.join(values)}")
    (root / "list_attr_celeba.txt").write_text("\n".join(rows) + "\n")
    partition = [f"{name} {0 if i < 2 else 2}" for i, name in enumerate(names)]  # first two: train
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")


def test_celeba_uses_the_test_partition_first_n_craft_then_held_out(tmp_path: Path) -> None:
    _fake_celeba(tmp_path, 7)
    module = CelebADataModule(str(tmp_path), n_craft=3, n_eval=1, image_size=16, batch_size=2)
    module.setup()
    assert [i.name for i in module.craft_items] == ["000003.jpg", "000004.jpg", "000005.jpg"]
    assert [i.name for i in module.eval_items] == ["000006.jpg"]
    labels = module.craft_items[0].labels  # row index 2: attribute j is 1 where (j + 2) % 3 == 0
    assert labels.tolist() == [1.0 if (j + 2) % 3 == 0 else 0.0 for j in range(40)]


def test_celeba_missing_layout_names_the_missing_files(tmp_path: Path) -> None:
    with pytest.raises(NoImagesError, match="list_attr_celeba.txt"):
        CelebADataModule(str(tmp_path), image_size=16).setup()


def test_demo_faces_are_real_photos_split_craft_and_held_out() -> None:
    module = DemoDataModule(image_size=32, batch_size=2)
    module.setup()
    assert [i.name for i in module.craft_items] == ["astronaut", "astronaut@mirror"]
    assert [i.name for i in module.eval_items] == ["grace_hopper", "grace_hopper@mirror"]
    batch = next(iter(module.train_dataloader()))
    image = batch["image"]
    assert image.shape == (2, 3, 32, 32) and image.min() >= -1 and image.max() <= 1
    assert image.std() > 0.1  # a photo, not a flat colour
    assert torch.allclose(image[1], image[0].flip(-1), atol=1e-5)  # the mirrored variant


def test_craft_split_held_out_crafts_on_the_held_out_faces_and_a_wrong_split_is_named() -> None:
    """A per-image run in experiment=protection_modes protects the faces the other modes are judged on."""
    module = DemoDataModule(craft=["astronaut"], evaluate=["grace_hopper", "grace_hopper@mirror"], image_size=16,
                            craft_split="held_out")
    module.setup()
    assert [i.name for i in module.craft_items] == [i.name for i in module.eval_items] == [
        "grace_hopper", "grace_hopper@mirror"]
    plain = DemoDataModule(craft=["astronaut"], evaluate=["grace_hopper"], image_size=16)
    plain.setup()
    assert [i.name for i in plain.craft_items] == ["astronaut"]
    with pytest.raises(ValueError, match="data.craft_split must be one of"):
        DemoDataModule(craft_split="evaluation")
