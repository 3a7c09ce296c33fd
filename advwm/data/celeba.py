"""CelebA in its official layout, split as both papers do: the test partition, first 128 craft, rest judge."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from advwm.data.attributes import CELEBA_ATTRIBUTES
from advwm.data.base import FaceDataModule, FaceItem, NoImagesError

PARTITIONS = {"train": 0, "val": 1, "test": 2}
SAMPLES = ("first", "random")


def read_attributes(path: Path) -> dict[str, torch.Tensor]:
    """`list_attr_celeba.txt` -> {file name: [40] 0/1 labels in CELEBA_ATTRIBUTES order}."""
    lines = path.read_text().splitlines()
    names = lines[1].split()
    if tuple(names) != tuple(CELEBA_ATTRIBUTES):
        raise ValueError(f"{path}: attribute header differs from the official 40 CelebA attributes")
    table: dict[str, torch.Tensor] = {}
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        values = [1.0 if v == "1" else 0.0 for v in fields[1:]]
        if len(values) != len(names):
            raise ValueError(f"{path}: row for {fields[0]} has {len(values)} values, expected {len(names)}")
        table[fields[0]] = torch.tensor(values)
    return table


def read_partition(path: Path) -> dict[str, int]:
    """`list_eval_partition.txt` -> {file name: 0 train | 1 val | 2 test}."""
    table: dict[str, int] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2:
            table[fields[0]] = int(fields[1])
    return table


class CelebADataModule(FaceDataModule):
    """`root/img_align_celeba/*.jpg`, `root/list_attr_celeba.txt`, `root/list_eval_partition.txt`.

    The reference preprocessing: centre crop 170 of the 178x218 aligned face, resize, [-1, 1].
    `sample`: `first` takes the partition's faces in file order (CMUA: the first 128 craft); `random` draws
    them without replacement with `sample_seed` (CDMAA section 4.1: 100 faces sampled from the test split).
    """

    def __init__(
        self,
        root: str,
        partition: str = "test",
        n_craft: int = 128,
        n_eval: int | None = None,
        center_crop: int = 170,
        images_dir: str = "img_align_celeba",
        sample: str = "first",
        sample_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {sorted(PARTITIONS)}, got {partition!r}")
        if sample not in SAMPLES:
            raise ValueError(f"data.sample must be one of {SAMPLES}, got {sample!r}")
        self.sample = sample
        self.sample_seed = int(sample_seed)
        self.root = Path(root).expanduser()
        self.partition = partition
        self.n_craft = n_craft
        self.n_eval = n_eval
        self.center_crop = center_crop
        self.images_dir = images_dir

    @property
    def source(self) -> str:
        return f"CelebA at {self.root}"

    def required_files(self) -> Sequence[Path]:
        return (self.root / self.images_dir, self.root / "list_attr_celeba.txt",
                self.root / "list_eval_partition.txt")

    def load_items(self) -> tuple[list[FaceItem], list[FaceItem]]:
        missing = [str(p) for p in self.required_files() if not p.exists()]
        if missing:
            raise NoImagesError(f"CelebA layout incomplete under {self.root}: missing {', '.join(missing)}")
        attributes = read_attributes(self.root / "list_attr_celeba.txt")
        partition = read_partition(self.root / "list_eval_partition.txt")
        wanted = PARTITIONS[self.partition]
        names = sorted(name for name, split in partition.items() if split == wanted and name in attributes)
        end = None if self.n_eval is None else self.n_craft + self.n_eval
        if self.sample == "random":
            names = random.Random(self.sample_seed).sample(names, len(names) if end is None else min(end, len(names)))
        items = [FaceItem(name=name, labels=attributes[name], path=str(self.root / self.images_dir / name),
                          center_crop=self.center_crop) for name in names[:end]]
        return items[: self.n_craft], items[self.n_craft:]
