"""Writes what a run produces besides its metrics: the watermark (tensor + picture), image grids, protected photos.

Per-image scope: over a folder of photos (`data=folder`), each photo is written back at its own size into
`protected/` once every face of it is crafted, each face's perturbation pasted where the face is
(`advwm.protect.photos.PhotoFolder`, the path `python -m advwm.protect` uses too), with `protected/protection.csv`
and `protected/index.html`; photos without a face are written back unchanged and named there. Other data
sources (the demo faces, CelebA) have no photo to paste into: their protected crops are written as
`protected/<name>.png`.

`watermark.pt` is the dict of `advwm.run_files.watermark_file.payload`: the tensor(s) plus what the run knew
(eps, image size, victims and whether their weights were official or random, the config), so that
`python -m advwm.protect` can check the file and warn about a watermark crafted against random victims.

`watermark.pt` and `checkpoints/last.ckpt` are written the moment crafting ends, before the evaluation judges
anything. On an exception before that (a NaN, a bad image, a signal) the perturbation crafted so far is still
saved, as `watermark.partial.pt`, so no finished work is lost; a run that never took a step has nothing to save
and writes none. Every file is written atomically (`advwm.run_files.io`): a kill or a full disk never leaves half
a file.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from advwm.callbacks.evaluation import MetricSettings
from advwm.data.transforms import to_unit_range
from advwm.metrics.sr_mask import masked_l2
from advwm.protect.photos import output_name
from advwm.protect.run_photos import RunPhotos
from advwm.run_files import io, signals
from advwm.run_files.generator_file import payload as generator_payload
from advwm.run_files.watermark_file import payload as watermark_payload

log = logging.getLogger(__name__)


def watermark_picture(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """[-eps, eps] -> [0, 1], i.e. amplified to full contrast so the pattern is visible."""
    return ((delta / max(eps, 1e-12)) + 1.0).div(2.0).clamp(0.0, 1.0)


COLUMNS = ("clean", "protected", "fake(clean)", "fake(protected)")


def comparison_grid(sample: dict[str, torch.Tensor], condition_names: list[str] | None = None) -> Image.Image:
    """Rows = conditions (named on the left, with the row's L2_mask); columns = clean | protected | fake(clean) |
    fake(protected)."""
    tiles = []
    for fake, fake_protected in zip(sample["fake"], sample["fake_protected"], strict=True):
        tiles.extend([sample["clean"], sample["protected"], fake, fake_protected])
    grid = make_grid(to_unit_range(torch.stack(tiles)), nrow=4, padding=2, pad_value=1.0)
    picture = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    rows = len(sample["fake"])
    names = condition_names or [str(i) for i in range(rows)]
    margin, header = 150, 16
    canvas = Image.new("RGB", (picture.width + margin, picture.height + header), "white")
    canvas.paste(picture, (margin, header))
    draw = ImageDraw.Draw(canvas)
    tile_w, tile_h = (picture.width - 2) / 4, (picture.height - 2) / rows
    for col, title in enumerate(COLUMNS):
        draw.text((margin + 4 + col * tile_w, 2), title, fill="black")
    for row, (name, value) in enumerate(zip(names, row_l2_mask(sample), strict=True)):
        metric = "L2_mask: empty mask" if math.isnan(value) else f"L2_mask {value:.4f}"
        draw.text((4, header + row * tile_h + tile_h / 2 - 11), f"{name[:24]}\n{metric}", fill="black")
    return canvas


def row_l2_mask(sample: dict[str, torch.Tensor], mask_threshold: float = 0.5) -> list[float]:
    """Each grid row's L2_mask (CMUA's metric, for the face shown): NaN where the victim edits nothing visible."""
    fakes = sample["fake"]
    clean = sample["clean"].unsqueeze(0).expand_as(fakes)
    values, _empty = masked_l2(clean, fakes, sample["fake_protected"], mask_threshold)
    return [float(v) for v in values]


class WatermarkExport(Callback):
    """Saves `watermark.pt` (+ `.png`) and, via `save_grids`, `images/<victim>.png` into `output_dir`.

    `metadata` (set by the pipeline: `eps`, `image_size`, `victims` {name: "official"|"random"}, `config`)
    goes into watermark.pt; what it leaves out is taken from the module (victims then marked "unknown").
    """

    def __init__(self, output_dir: str | Path, metadata: dict | None = None, metrics: MetricSettings | None = None,
                 measure: bool = True, protected_dir: str | Path | None = None) -> None:
        self.output_dir = Path(output_dir)
        self._protected_dir = None if protected_dir is None else Path(protected_dir)
        self.metadata = dict(metadata or {})
        self.metrics = metrics or MetricSettings()  # the success thresholds protection.csv is scored with
        self.measure = bool(measure)
        self.per_image: list[torch.Tensor] = []
        self.names: list[str] = []
        self.photos: RunPhotos | None = None
        self.photos_written: list[str] = []
        self.final_saved = False  # watermark.pt written for the finished crafting

    @property
    def protected_dir(self) -> Path:
        """`<run>/protected` unless set (`python -m advwm.protect --craft` writes the photos into its --out)."""
        return self._protected_dir or self.output_dir / "protected"

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if pl_module.scope.judges_held_out or getattr(datamodule, "craft_photos", None) is None:
            return
        if trainer.is_global_zero:  # per image over photos: paste into each photo (advwm.protect.photos)
            self.photos = RunPhotos(self, trainer, pl_module, datamodule)
            self.photos.write_faceless()
            self.photos.write_complete()  # a resumed run: photos whose faces were all crafted before the stop

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        finished = pl_module.finished_batch
        if finished is not None:  # per image: keep the batch's perturbations, write its protected faces now
            names = list(finished["name"])
            self.per_image.append(pl_module.watermark())
            self.names.extend(names)
            if self.photos is not None:
                self.photos.write_complete()
            elif trainer.is_global_zero:
                self.save_protected(pl_module.protect(finished["image"]).detach().cpu(), names)

    def state_dict(self) -> dict[str, Any]:
        """Per image: the finished batches' perturbations and names, so a resumed run saves them all, and the
        photos already written."""
        return {"per_image": list(self.per_image), "names": list(self.names),
                "photos_written": list(self.photos_written)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.per_image = list(state_dict.get("per_image", []))
        self.names = list(state_dict.get("names", []))
        self.photos_written = list(state_dict.get("photos_written", []))

    def save_protected(self, protected: torch.Tensor, names: list[str]) -> None:
        """Per-image scope without photos (demo, CelebA): each protected crop as `protected/<name>.png`, the name
        kept whole (`face.jpg` -> `face.jpg.png`) so two faces never share a file."""
        for image, name in zip(protected, names, strict=True):
            io.save_tensor_image(to_unit_range(image), self.protected_dir / output_name(name))

    def protection_rows(self) -> list[dict[str, Any]]:
        """protection.csv's rows of this run's photos (per image over photos; [] otherwise)."""
        return self.photos.rows() if self.photos is not None else []

    def payload(self, module: LightningModule) -> dict:
        """watermark.pt's content: the perturbation(s) and the run's metadata (`advwm.run_files.watermark_file`)."""
        size = int(module.image_size)
        victims = self.metadata.get("victims") or {v.name: "unknown" for v in module.victims}
        meta = {"eps": float(self.metadata.get("eps", module.eps)),
                "image_size": int(self.metadata.get("image_size", size)),
                "victims": dict(victims), "config": self.metadata.get("config")}
        if module.scope.saves == "generator":  # scope=amortized: generator.pt (advwm.run_files.generator_file)
            return generator_payload(module.generator, **meta)
        if module.scope.judges_held_out:
            return watermark_payload("universal", module.watermark(), **meta)
        stacked = torch.cat(self.per_image) if self.per_image else torch.empty(0, 3, size, size)
        return watermark_payload("per_image", stacked, list(self.names), **meta)

    def save(self, module: LightningModule, name: str = "watermark") -> Path:
        path = self.output_dir / f"{name}.pt"
        payload = self.payload(module)
        if module.scope.saves == "generator":  # no picture: each face gets its own perturbation
            path = self.output_dir / f"{name.replace('watermark', 'generator', 1)}.pt"
            io.torch_save(payload, path)
            return path
        io.torch_save(payload, path)
        picture = payload["watermark"] if payload["scope"] == "universal" else payload["perturbations"][:16]
        if picture.numel():
            grid = watermark_picture(picture, module.eps)
            io.save_tensor_image(grid if grid.dim() == 3 else make_grid(grid, nrow=4), self.output_dir / f"{name}.png")
        return path

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Crafting has ended (its last iteration wrote checkpoints/last.ckpt: `advwm.run_files.signals.IterationEnd`):
        `watermark.pt`/`.png` now, before anything is judged (the pipeline puts this callback first), so a kill while
        judging keeps both; from here a signal stops the run at once."""
        self.crafting_ended(trainer, pl_module)
        signals.set_phase("judging" if pl_module.scope.judges_held_out else "saving the results")

    def crafting_ended(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the finished watermark (also when a run resumes a checkpoint whose crafting had ended)."""
        if trainer.is_global_zero:
            self.save(pl_module)
        self.final_saved = True

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not trainer.is_global_zero or self.final_saved:  # watermark.pt is written: nothing partial to add
            return
        if int(pl_module.iteration) == 0 and not self.per_image:
            log.error("run stopped (%s) before its first step: no watermark to save", type(exception).__name__)
            return
        try:
            path = self.save(pl_module, "watermark.partial")
        except OSError as error:  # e.g. the disk is full: say so, and let the run's own error be the one shown
            log.error("run stopped (%s); the watermark crafted so far could not be saved: %s",
                      type(exception).__name__, error)
            return
        level = logging.INFO if isinstance(exception, signals.RunStopped) else logging.ERROR  # its line names it
        log.log(level, "run stopped (%s); the watermark crafted so far is in %s", type(exception).__name__, path)

    def save_grids(self, samples: dict[str, dict[str, torch.Tensor]],
                   condition_names: dict[str, list[str]] | None = None) -> list[Path]:
        """One picture per victim: `images/<victim>.png`, rows named by condition."""
        paths = []
        for victim, sample in samples.items():
            path = self.output_dir / "images" / f"{victim}.png"
            io.save_picture(comparison_grid(sample, (condition_names or {}).get(victim)), path)
            paths.append(path)
        return paths
