"""CelebA face selection: the papers' two protocols (CMUA: the first 128 test faces; CDMAA: 100 at random)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from advwm.data import CelebADataModule
from advwm.data.attributes import CELEBA_ATTRIBUTES


def fake_celeba(root: Path, n: int, train: int = 2) -> list[str]:
    """n tiny aligned faces; the first `train` in the train partition, the rest in test. Returns the test names."""
    (root / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        Image.new("RGB", (178, 218), (i * 7 % 255, 40, 90)).save(root / "img_align_celeba" / name)
    rows = [str(n), " ".join(CELEBA_ATTRIBUTES)] + [f"{name} {' '.join(['-1'] * 40)}" for name in names]
    (root / "list_attr_celeba.txt").write_text("\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "\n".join(f"{name} {0 if i < train else 2}" for i, name in enumerate(names)) + "\n")
    return names[train:]


def test_random_sample_is_seeded_without_replacement_and_from_the_test_split(tmp_path: Path) -> None:
    test_names = fake_celeba(tmp_path, 30)
    chosen = {}
    for seed in (0, 0, 1):
        module = CelebADataModule(str(tmp_path), n_craft=5, n_eval=3, sample="random", sample_seed=seed,
                                  image_size=16, batch_size=2)
        module.setup()
        chosen.setdefault(seed, []).append([i.name for i in module.craft_items + module.eval_items])
    first, again = chosen[0]
    assert first == again  # a fixed seed picks the same faces
    assert first == random.Random(0).sample(sorted(test_names), 8)  # as random.sample draws them, in that order
    assert len(set(first)) == 8 and set(first) <= set(test_names)
    assert chosen[1][0] != first
    assert first != sorted(test_names)[:8]  # not simply the first faces


def test_first_is_the_default_and_an_unknown_sample_is_refused(tmp_path: Path) -> None:
    test_names = fake_celeba(tmp_path, 12)
    module = CelebADataModule(str(tmp_path), n_craft=4, n_eval=2, image_size=16, batch_size=2)
    module.setup()
    assert [i.name for i in module.craft_items] == test_names[:4]
    with pytest.raises(ValueError, match="data.sample"):
        CelebADataModule(str(tmp_path), sample="shuffled")
