"""Any folder of face photos (LFW, Films100, your own pictures) as crafting + held-out splits.

Files are found and decoded by `advwm.data.decode` (the rules protect uses too): EXIF orientation, bit
depth, alpha on white, CMYK/ICC to sRGB, first frame of animations; odd files are skipped, each named.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from advwm.data.base import FaceDataModule, FaceItem, NoImagesError
from advwm.data.decode import IMAGE_SUFFIXES, list_photos
from advwm.data.labels import label_vector

__all__ = ["IMAGE_SUFFIXES", "ImageFolderDataModule"]

log = logging.getLogger(__name__)


class ImageFolderDataModule(FaceDataModule):
    """Files under `root` (recursively, sorted by path): the first `n_craft` craft, the next `n_eval` judge.

    Photos carry no attribute annotations, so every face gets the same label vector, built from the
    CelebA attribute names in `labels` (the victims derive their target conditions from it).
    """

    def __init__(
        self,
        root: str,
        n_craft: int = 128,
        n_eval: int | None = None,
        labels: Sequence[str] = ("Young",),
        center_crop: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.n_craft = n_craft
        self.n_eval = n_eval
        self.labels = label_vector(labels)
        self.center_crop = center_crop

    @property
    def source(self) -> str:
        return f"image folder {self.root}"

    def load_items(self) -> tuple[list[FaceItem], list[FaceItem]]:
        if not self.root.is_dir():
            raise NoImagesError(f"image folder {self.root} does not exist or is not a folder")
        listing = list_photos(self.root)
        for path, reason in listing.skipped:
            log.warning("skipping %s: %s", path, reason)
        self.unlisted = [str(path) for path, _ in listing.skipped]
        files = listing.files
        if not files:
            raise NoImagesError(f"image folder {self.root} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
        items = [FaceItem(name=str(p.relative_to(self.root)), labels=self.labels, path=str(p),
                          center_crop=self.center_crop) for p in files]
        end = None if self.n_eval is None else self.n_craft + self.n_eval
        return items[: self.n_craft], items[self.n_craft:end]
