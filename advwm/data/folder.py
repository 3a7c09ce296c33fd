"""Any folder of photos (LFW, Films100, your own pictures) as crafting + held-out splits, one sample per face.

Files are found and decoded by `advwm.data.decode` (the rules protect uses too): EXIF orientation, bit
depth, alpha on white, CMYK/ICC to sRGB, first frame of animations; odd files are skipped, each named.
Each face found in a photo (`advwm.protect.faces`, framed like CelebA's aligned crops) is one sample, named
`<photo>#<k>` (k = 1, 2, ... top to bottom), cut out and resized by the crop a protected photo is pasted back
through (`advwm.protect.paste`); `detect=false` (or a `center_crop`) takes each photo's central square instead,
named `<photo>#1`. A photo without a face is listed in `faceless` (a per-image run writes it back unchanged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from advwm.data.base import FaceDataModule, FaceItem, NoImagesError
from advwm.data.decode import IMAGE_SUFFIXES, PhotoError, list_photos, open_photo
from advwm.data.labels import label_vector

__all__ = ["IMAGE_SUFFIXES", "ImageFolderDataModule", "PhotoRecord"]

log = logging.getLogger(__name__)


@dataclass
class PhotoRecord:
    """One readable photo of the folder: where it is, its face squares and the names of their samples."""

    name: str  # path relative to the data folder
    path: Path
    squares: list[tuple[int, int, int]] = field(default_factory=list)
    faces: list[str] = field(default_factory=list)
    detected: bool = True  # False: the central square was taken (detection off)


def face_name(photo: str, k: int) -> str:
    """The sample name of face k (1-based) of `photo`."""
    return f"{photo}#{k}"


class ImageFolderDataModule(FaceDataModule):
    """Photos under `root` (recursively, sorted by path, or the `files` named), one sample per face: the faces of
    the first `n_craft` photos with a face craft, those of the next `n_eval` judge (null: all the others).

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
        detect: bool = True,
        files: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if center_crop is not None and (isinstance(center_crop, bool) or int(center_crop) < 1):
            raise ValueError(f"data.center_crop must be a positive number of pixels or null, got {center_crop}")
        if isinstance(n_craft, bool) or int(n_craft) < 1:
            raise ValueError(f"data.n_craft must be a positive number of photos, got {n_craft}")
        self.root = Path(root).expanduser()
        self.n_craft = int(n_craft)
        self.n_eval = n_eval
        self.labels = label_vector(labels)
        self.center_crop = center_crop
        self.detect = bool(detect) and center_crop is None
        self.files = None if files is None else [str(f) for f in files]
        self.photos: list[PhotoRecord] = []  # readable photos with at least one face, in order
        self.faceless: list[PhotoRecord] = []  # readable photos in which no face was found
        self.craft_photos: list[PhotoRecord] = []
        self.cache = self.batch_size

    @property
    def source(self) -> str:
        return f"image folder {self.root}"

    def _listing(self) -> list[Path]:
        if not self.root.is_dir():
            raise NoImagesError(f"image folder {self.root} does not exist or is not a folder")
        if self.files is not None:
            return [self.root / f for f in self.files]
        listing = list_photos(self.root)
        for path, reason in listing.skipped:
            log.warning("skipping %s: %s", path, reason)
        self.unlisted = [str(path) for path, _ in listing.skipped]
        if not listing.files:
            raise NoImagesError(f"image folder {self.root} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
        return listing.files

    def load_items(self) -> tuple[list[FaceItem], list[FaceItem]]:
        from advwm.protect.paste import face_squares

        files = self._listing()
        if not self.detect:
            log.warning("face detection off (data.detect=false or data.center_crop): each photo's central square "
                        "is taken as its face")
        readable = 0
        for path in files:
            name = path.relative_to(self.root).as_posix()
            try:
                photo = open_photo(path)
            except PhotoError as error:
                log.warning("skipping image %s: %s", path, error)
                self.unlisted.append(str(path))
                continue
            readable += 1
            for note in photo.warnings:
                log.warning("image %s: %s", path, note)
            squares = face_squares(photo, self.detect, self.center_crop)
            record = PhotoRecord(name, path, squares, [face_name(name, k) for k in range(1, len(squares) + 1)],
                                 detected=self.detect)
            if squares:
                self.photos.append(record)
            else:
                self.faceless.append(record)
                log.warning("no face found in %s (its central square instead: data.detect=false, or --no-detect with "
                            "advwm.protect)", path)
        if not self.photos:
            raise NoImagesError(f"{self.source}: no face found in any of its {readable} readable photo(s); "
                                "data.detect=false protects each photo's central square")
        end = None if self.n_eval is None else self.n_craft + self.n_eval
        self.craft_photos = self.photos[: self.n_craft]
        return self._items(self.craft_photos), self._items(self.photos[self.n_craft:end])

    def _items(self, photos: Sequence[PhotoRecord]) -> list[FaceItem]:
        return [FaceItem(name=face, labels=self.labels, path=str(record.path), square=square, photo=record.name,
                         verified=True)
                for record in photos for face, square in zip(record.faces, record.squares, strict=True)]
