"""What every face data module shares: the sample format, the repeated-batch sampler, the two splits.

A sample is a dict: ``image`` [3,H,W] in [-1,1], ``labels`` [40] CelebA 0/1 labels, ``index`` (position
in its split) and ``name`` (file name or id). The crafting split is served in batches that repeat
``repeats`` times in a row, so one Lightning training step is exactly one attack iteration on one batch
and the progress bar counts iterations.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, Subset

from advwm.data.decode import PhotoError, open_photo
from advwm.data.transforms import preprocess

log = logging.getLogger(__name__)


CRAFT_SPLITS = ("crafting", "held_out")


class NoImagesError(RuntimeError):
    """A data source has no readable image: nothing to craft on."""


@dataclass
class FaceItem:
    """One face: where its pixels come from, how to crop it, and its labels."""

    name: str
    labels: torch.Tensor
    path: str | None = None
    box: Sequence[int] | None = None
    center_crop: int | None = None
    mirror: bool = False
    opener: Callable[[], Image.Image] | None = field(default=None, repr=False)
    square: tuple[int, int, int] | None = None  # a face square (left, top, side) of a photo: advwm.protect.paste
    photo: str | None = None  # the photo this face belongs to (its path relative to the data folder)
    verified: bool = False  # decoded already by the data module: `readable` need not decode it again

    def open(self) -> Image.Image:
        """The photo as a person sees it, 8-bit RGB (see `advwm.data.decode`), or a package's bundled array."""
        if self.opener is not None:
            return self.opener()
        assert self.path is not None
        return open_photo(self.path).to_pil()

    def check(self) -> list[str]:
        """Decode once; returns the decoder's warnings (raises when the image cannot be used)."""
        if self.opener is not None:
            self.opener()
            return []
        assert self.path is not None
        return open_photo(self.path).warnings


def readable(items: Sequence[FaceItem], source: str) -> tuple[list[FaceItem], list[str]]:
    """Keep the items whose image decodes into a usable photo; warn about each other one (named, with the
    reason) and return them too. Decoder warnings (e.g. an animated GIF's first frame) are logged here, once."""
    kept: list[FaceItem] = []
    skipped: list[str] = []
    for item in items:
        if item.verified:
            kept.append(item)
            continue
        where = item.path or item.name
        try:
            notes = item.check()
        except PhotoError as error:
            log.warning("skipping image %s: %s", where, error)
            skipped.append(where)
        except Exception as error:  # an opener failing in a way nobody listed: skip that image only
            log.warning("skipping unreadable image %s (%s: %s)", where, type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "")
            skipped.append(where)
        else:
            for note in notes:
                log.warning("image %s: %s", where, note)
            kept.append(item)
    if skipped:
        log.warning("%s: skipped %d unreadable image(s) of %d", source, len(skipped), len(items))
    return kept, skipped


class FaceDataset(Dataset):
    """Faces preprocessed to the victims' size, as sample dicts.

    Items with a `square` are cut out of their photo by `advwm.protect.paste.crop_faces` (the crop the protected
    photo is pasted back through); the others by `preprocess` (the reference pipeline's PIL crop and resize).
    `cache`: how many recent samples to keep, since a batch is served `repeats` times in a row and decoding a
    large photo for every attack iteration would cost more than a small victim's step.
    """

    def __init__(self, items: Sequence[FaceItem], image_size: int, cache: int = 0) -> None:
        self.items = list(items)
        self.image_size = image_size
        self.cache = int(cache)
        self._recent: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def _crop(self, item: FaceItem) -> torch.Tensor:
        if item.square is not None:
            from advwm.protect.paste import crop_faces, photo_tensor

            assert item.path is not None
            return crop_faces(photo_tensor(open_photo(item.path)), [item.square], self.image_size)[0]
        tensor = preprocess(item.open(), self.image_size, center_crop=item.center_crop, box=item.box)
        if item.mirror:  # after cropping, so the crop box keeps framing the same face
            tensor = tensor.flip(-1)
        return tensor

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        tensor = self._recent.get(index)
        if tensor is None:
            try:
                tensor = self._crop(item)
            except Exception as error:
                raise RuntimeError(f"cannot read image {item.path or item.name}: {error}") from error
            if self.cache:
                self._recent[index] = tensor
                while len(self._recent) > self.cache:
                    self._recent.popitem(last=False)
        return {"image": tensor.clone(), "labels": item.labels.clone(), "index": index, "name": item.name}


class RepeatedBatchSampler(Sampler[list[int]]):
    """Yields every batch of `batch_sampler` `repeats` times in a row (one repeat = one attack iteration).

    `start`: positions to skip in the first pass only, so a resumed run continues with the iteration it
    stopped at instead of crafting on the first batch again. The length stays the whole pass: Lightning
    counts the iterations done before the resume as part of the epoch.
    """

    def __init__(self, batch_sampler: Sampler[list[int]], repeats: int, start: int = 0) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.batch_sampler = batch_sampler
        self.repeats = repeats
        self.start = int(start)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.start = self.start, 0
        position = 0
        for batch in self.batch_sampler:
            for _ in range(self.repeats):
                if position >= skip:
                    yield list(batch)
                position += 1

    def __len__(self) -> int:
        return len(self.batch_sampler) * self.repeats  # type: ignore[arg-type]


class FaceDataModule(LightningDataModule):
    """Base class: subclasses say which faces are crafted on and which are held out for evaluation.

    The crafting split is what the watermark is optimised on; the held-out split is what it is judged
    on (for a per-image attack, the crafted images themselves are judged). `craft_split: held_out` crafts on the
    held-out faces instead: a per-image run then protects exactly the faces a universal or amortized run with the
    same data is judged on (experiment=protection_modes).
    """

    def __init__(
        self,
        image_size: int = 256,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        repeats: int = 1,
        num_workers: int = 0,
        craft_split: str = "crafting",
    ) -> None:
        super().__init__()
        if craft_split not in CRAFT_SPLITS:
            raise ValueError(f"data.craft_split must be one of {CRAFT_SPLITS}, got {craft_split!r}")
        self.craft_split = craft_split
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.repeats = repeats
        self.num_workers = num_workers
        self.craft_items: list[FaceItem] = []
        self.eval_items: list[FaceItem] = []
        self.skipped: list[str] = []
        self.unlisted: list[str] = []  # entries passed over while listing the source (e.g. symlink loops)
        self.cache = 0  # samples FaceDataset keeps (a subclass whose decoding is costly sets it)
        # whether the run judges held-out faces (the pipeline sets it from the scope before setup): a per-image run
        # judges each face it crafted, so an empty held-out split is no news there
        self.judges_held_out = True
        self._ready = False

    def load_items(self) -> tuple[list[FaceItem], list[FaceItem]]:
        """(crafting items, held-out items) before the readability check."""
        raise NotImplementedError

    @property
    def source(self) -> str:
        return type(self).__name__

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        craft, held_out = self.load_items()
        if self.craft_split == "held_out":
            craft = held_out
        self.craft_items, skipped_craft = readable(craft, self.source)
        self.eval_items, skipped_eval = readable(held_out, self.source)
        self.skipped = list(self.unlisted) + skipped_craft + skipped_eval
        if not self.craft_items:
            raise NoImagesError(f"{self.source}: no readable image to craft on"
                                f" ({len(craft)} candidate(s), {len(skipped_craft)} unreadable)")
        if not self.eval_items:
            if self.judges_held_out:
                log.warning("%s: no held-out image; evaluating on the crafting images", self.source)
            self.eval_items = list(self.craft_items)
        self._ready = True

    def _process_share(self) -> tuple[int, int]:
        """(rank, world size) of this process: under DDP every process takes a strided share of the faces."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        """Batches of `batch_size` faces in order, each repeated `repeats` times.

        Under DDP `batch_size` is the global batch: process r of W takes faces r, r+W, r+2W, ... in batches
        of batch_size / W, so the union of the processes' k-th batches is the k-th batch of one process.
        """
        rank, world = self._process_share()
        if self.batch_size % world:
            raise ValueError(f"data.batch_size={self.batch_size} must be divisible by the {world} processes")
        indices = list(range(len(self.craft_items)))[rank::world]
        batches = BatchSampler(indices, self.batch_size // world, drop_last=False)
        sampler = RepeatedBatchSampler(batches, self.repeats)
        sampler.start = self._iterations_done() % max(len(sampler), 1)
        return DataLoader(FaceDataset(self.craft_items, self.image_size, self.cache), batch_sampler=sampler,
                          num_workers=self.num_workers)

    def _iterations_done(self) -> int:
        """The attack's iterations done before this fit (a resumed run's, else 0): where crafting continues."""
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        return int(getattr(module, "iteration", 0) or 0)

    def eval_dataloader(self) -> DataLoader:
        """The held-out faces, each once, in order (under DDP: this process's strided share, no padding)."""
        rank, world = self._process_share()
        dataset = FaceDataset(self.eval_items, self.image_size, self.cache)
        if world > 1:
            dataset = Subset(dataset, list(range(len(self.eval_items)))[rank::world])
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers)
