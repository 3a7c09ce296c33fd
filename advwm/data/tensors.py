"""Faces already in memory: drive the engine from Python without files.

The benchmark, the precision experiment and the tests craft on tensors they made themselves; this is the one
data module they share (the file-backed ones in this package decode, resize and skip unreadable files, which
these callers neither need nor want to time).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from advwm.data.attributes import CELEBA_ATTRIBUTES
from advwm.data.base import RepeatedBatchSampler


class TensorFaces(LightningDataModule):
    """Images [N,3,H,W] in [-1,1] as both splits: crafting batches of `batch_size` (None: all N in one batch),
    each repeated `repeats` times (one repeat = one attack iteration), and the same faces held out.

    `labels` [N,40] are the CelebA attributes the victims' conditions are built from (default: all zero)."""

    def __init__(self, images: torch.Tensor, batch_size: int | None = None, repeats: int = 1,
                 labels: torch.Tensor | None = None) -> None:
        super().__init__()
        if labels is None:
            labels = torch.zeros(images.shape[0], len(CELEBA_ATTRIBUTES))
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{labels.shape[0]} label rows for {images.shape[0]} images")
        self.images, self.labels = images, labels
        self.batch_size = batch_size or images.shape[0]
        self.repeats = repeats
        self.craft_items = self.eval_items = list(range(images.shape[0]))
        self.skipped: list[str] = []

    def _samples(self) -> list[dict]:
        return [{"image": image, "labels": label, "index": i, "name": f"face{i}"}
                for i, (image, label) in enumerate(zip(self.images, self.labels, strict=True))]

    def train_dataloader(self) -> DataLoader:
        batches = BatchSampler(SequentialSampler(range(len(self.images))), self.batch_size, drop_last=False)
        return DataLoader(self._samples(), batch_sampler=RepeatedBatchSampler(batches, self.repeats))

    def eval_dataloader(self) -> DataLoader:
        return DataLoader(self._samples(), batch_size=self.batch_size)
