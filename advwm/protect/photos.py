"""A folder of protected photos: each photo pasted, written, measured and listed, the same for every protector.

`PhotoFolder` is what `python -m advwm.protect` (a universal watermark) and a per-image run's export
(`scope=per_image data=folder`) both write through: `<out>/<photo>.png` (the photo's relative path with `.png`
appended, so `face.jpg` and `face.png` never share an output), `<out>/protection.csv` (`advwm.protect.ledger`),
`<out>/index.html` and `<out>/sheet/` (`advwm.protect.sheet`). Every file is written atomically, the table and
the page after every photo, so a kill keeps every finished photo and its row.

**Why PNG, also for a JPEG in**: the perturbation is at most eps = 0.05 (6.4 of 255 levels) and JPEG's
quantisation removes much of such fine detail; even quality 95 moves the victims' fakes measurably back towards
the unprotected ones (README, *Protect your photos*: measured). PNG keeps every level as crafted; a site that
re-encodes the photo is a separate question (`metrics.robustness`, `eot=sharing`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from advwm.data.decode import DecodedPhoto
from advwm.protect import ledger, sheet
from advwm.protect.measure import VictimScore, psnr, ssim
from advwm.protect.paste import (
    Square,
    crop_faces,
    encode_png,
    from_levels,
    paste,
    photo_tensor,
    to_levels,
)
from advwm.protect.protectors import Protector
from advwm.run_files import io

DETECTED = "faces"
CENTRAL = "off: central square"

Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Mapping[str, VictimScore]]


def output_name(photo: str) -> str:
    """`a/face.jpg` -> `a/face.jpg.png`: the full original name kept, so no two photos share an output."""
    return f"{photo}.png"


@dataclass
class PhotoOutcome:
    """What protecting one photo gave: its row and the photo as written."""

    row: ledger.Row
    written: DecodedPhoto


class PhotoFolder:
    """Protected photos, their table and their contact sheet in `out` (rows of earlier runs there are kept)."""

    def __init__(self, out: str | Path, *, eps: float, settings: str, victims: Mapping[str, str],
                 scorer: Scorer | None = None, pictures: bool = True) -> None:
        self.out = Path(out)
        self.eps = float(eps)
        self.settings = settings
        self.victims = dict(victims)
        self.scorer = scorer
        self.pictures = pictures
        self.rows: dict[str, ledger.Row] = ledger.read(self.out)

    def target(self, photo: str) -> Path:
        return self.out / output_name(photo)

    def done(self, photo: str, source_sha256: str) -> bool:
        """Already protected here with the same settings, from the same file content."""
        return ledger.already_done(self.rows.get(photo), self.out, self.settings, source_sha256)

    def protect(self, photo_name: str, source: Path, photo: DecodedPhoto, squares: Sequence[Square],
                protector: Protector, face_names: Sequence[str], labels: torch.Tensor | None = None,
                detection: str = DETECTED, source_sha256: str | None = None) -> PhotoOutcome:
        """Crop -> protect -> paste -> write -> measure one photo (no squares: written unchanged, named)."""
        size = protector.image_size
        crops = crop_faces(photo_tensor(photo), squares, size)
        deltas = protector(crops, list(face_names)) if squares else torch.empty(0, 3, size, size)
        colour_levels = to_levels(paste(photo, squares, deltas), photo, self.eps)
        written = from_levels(colour_levels, photo)
        io.write_bytes(self.target(photo_name), encode_png(colour_levels, photo.alpha, photo.bit_depth))
        row: ledger.Row = {
            "photo": photo_name, "output": output_name(photo_name),
            "status": ledger.PROTECTED if squares else ledger.NO_FACE, "faces": len(squares),
            "detection": detection, "psnr": psnr(photo, written), "ssim": ssim(photo, written, squares),
            "victims": ledger.victims_cell(self.victims), "settings": self.settings,
            "source_sha256": source_sha256 or ledger.file_digest(source)}
        scores: Mapping[str, VictimScore] = {}
        if squares and self.scorer is not None:
            protected_crops = crop_faces(photo_tensor(written), squares, size)
            face_labels = labels if labels is not None else torch.zeros(len(squares), 40)
            scores = self.scorer(crops, protected_crops, face_labels)
            for victim, score in scores.items():
                row[f"avg_l/{victim}"] = score.avg_l
                row[f"sr_mask/{victim}"] = score.sr_mask
        if self.pictures:
            sheet.save_pictures(self.out, photo_name, photo, written, scores)
        self.rows[photo_name] = row
        self.save()
        return PhotoOutcome(row, written)

    def save(self) -> None:
        """protection.csv, then index.html (atomically)."""
        ledger.write(self.out, self.rows.values())
        if self.pictures:
            sheet.write_page(self.out, self.rows.values())

    def rows_of(self, photos: Sequence[str]) -> list[ledger.Row]:
        """The rows of these photos, in order (those that have one)."""
        return [self.rows[p] for p in photos if p in self.rows]
