"""A per-image run's photos: each written back at its own size once all its faces are crafted.

The export callback (`advwm.callbacks.export`) hands over every finished batch; a photo is complete when each
of its faces (`<photo>#<k>`, `advwm.data.folder`) has its crafted perturbation, and then goes through the one
crop -> protect -> paste path (`advwm.protect.photos.PhotoFolder` with `CraftedPerturbations`), is measured
against the run's own victims and listed in `<run>/protected/protection.csv`. Photos without a face are
written back unchanged and named there when crafting starts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import yaml

from advwm.data.decode import PhotoError, open_photo
from advwm.protect import ledger
from advwm.protect.measure import score_victims
from advwm.protect.photos import CENTRAL, DETECTED, PhotoFolder
from advwm.protect.protectors import CraftedPerturbations

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from advwm.callbacks.export import WatermarkExport
    from advwm.data.folder import ImageFolderDataModule, PhotoRecord

log = logging.getLogger(__name__)

# config keys that do not change a protected photo's pixels: left out of protection.csv's `settings` digest
NOT_SETTINGS = ("paths", "hydra", "logger", "callbacks", "metrics", "task_name", "ckpt_path", "checkpoint_every",
                "objective", "hparams_search", "execution")
NOT_DATA_SETTINGS = ("root", "files", "n_craft", "n_eval", "num_workers", "eval_batch_size")


def settings_digest(config: dict[str, Any] | str | None) -> str:
    """The digest of a run's resolved config (a dict or its YAML) over what changes the protected pixels: victims,
    attack, aggregator, domains, regulariser, EOT, scope, eps, image size, seed, labels, detection, batch size,
    trainer.precision; not paths, loggers, metrics or which photos."""
    if isinstance(config, str):
        config = yaml.safe_load(config)
    settings = {k: v for k, v in dict(config or {}).items() if k not in NOT_SETTINGS}
    if isinstance(settings.get("data"), dict):
        settings["data"] = {k: v for k, v in settings["data"].items() if k not in NOT_DATA_SETTINGS}
    if isinstance(settings.get("trainer"), dict):
        settings["trainer"] = {"precision": settings["trainer"].get("precision")}
    return ledger.digest(settings)


class RunPhotos:
    """Writes the photos of a per-image run over `data=folder` into `<run>/protected/`."""

    def __init__(self, export: WatermarkExport, trainer: Trainer, module: LightningModule,
                 datamodule: ImageFolderDataModule) -> None:
        self.export = export
        self.module = module
        self.trainer = trainer
        self.records: list[PhotoRecord] = list(datamodule.craft_photos)
        self.faceless: list[PhotoRecord] = list(datamodule.faceless)
        self.labels = {item.name: item.labels for item in datamodule.craft_items}
        held_out = len(datamodule.photos) - len(self.records)
        if held_out:
            log.warning("%d photo(s) after the first data.n_craft=%d are not protected (per-image scope protects the "
                        "crafting photos): raise data.n_craft", held_out, datamodule.n_craft)
        metadata = export.metadata
        scorer = self._score if export.measure else None
        self.folder = PhotoFolder(export.protected_dir, eps=float(metadata.get("eps", module.eps)),
                                  settings=settings_digest(metadata.get("config")),
                                  victims=metadata.get("victims") or {v.name: "unknown" for v in module.victims},
                                  scorer=scorer)
        self.image_size = int(module.perturbation.shape[-1])
        self.this_run: list[str] = []

    def _score(self, crops: torch.Tensor, protected: torch.Tensor, labels: torch.Tensor):
        return score_victims(self.module.victims, crops, protected, labels, self.export.metrics,
                             self.module.micro_batch)

    def write_faceless(self) -> None:
        """Photos without a face: written back unchanged, named in protection.csv (once)."""
        for record in self.faceless:
            if record.name in self.export.photos_written:
                continue
            self._write(record, {})
            log.warning("no face found in %s: written back unchanged to %s", record.path,
                        self.folder.target(record.name))

    def write_complete(self) -> None:
        """Every photo whose faces all have their perturbation and that is not written yet."""
        done = set(self.export.names)
        crafted = None
        for record in self.records:
            if record.name in self.export.photos_written or not all(f in done for f in record.faces):
                continue
            if crafted is None:
                crafted = dict(zip(self.export.names, torch.cat(self.export.per_image), strict=True))
            self._write(record, {f: crafted[f] for f in record.faces})
        self._progress()

    def _write(self, record: PhotoRecord, deltas: dict[str, torch.Tensor]) -> None:
        try:
            photo = open_photo(record.path)
        except PhotoError as error:  # changed on disk since the run began: said, the run carries on
            log.error("cannot protect %s: %s", record.path, error)
            return
        squares = record.squares if deltas else []
        protector = CraftedPerturbations(deltas, self.folder.eps, self.image_size)
        labels = torch.stack([self.labels[f] for f in record.faces]) if deltas else None
        self.folder.protect(record.name, record.path, photo, squares, protector, record.faces if deltas else [],
                            labels, DETECTED if record.detected else CENTRAL)
        self.export.photos_written.append(record.name)
        self.this_run.append(record.name)

    def _progress(self) -> None:
        bar = getattr(self.trainer, "progress_bar_callback", None)
        if bar is not None and hasattr(bar, "describe"):
            written = sum(1 for r in self.records if r.name in self.export.photos_written)
            bar.describe(f"photos {written}/{len(self.records)} protected")

    def rows(self) -> list[dict[str, Any]]:
        """The rows of this run's photos (faceless ones included), in photo order."""
        names = [r.name for r in sorted(self.records + self.faceless, key=lambda r: r.name)]
        return self.folder.rows_of(names)
