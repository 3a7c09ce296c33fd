"""Judges the watermark: SR_mask (and L2_mask) per victim, per condition and pooled, after crafting.

Universal scope: on the held-out split once crafting ends. Per-image scope: each batch's protected
images as soon as their last iteration is done (CDMAA judges the images it attacked). Keeps, for the
image grids, the first image's clean/protected/fake outputs per victim and condition.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import Metric

from advwm.attacks.domains import clean_outputs
from advwm.metrics import L2Mask, SRMask

log = logging.getLogger(__name__)


class EvaluationCallback(Callback):
    """Owns the metrics; `results()` returns them flat: `sr_mask/<victim>[/<condition>]`, `sr_mask/mean`, ..."""

    def __init__(self, success_threshold: float = 0.05, mask_threshold: float = 0.5) -> None:
        self.success_threshold = success_threshold
        self.mask_threshold = mask_threshold
        self.metrics: dict[str, Metric] | None = None
        self.samples: dict[str, dict[str, torch.Tensor]] = {}
        self.images_judged = 0

    def _metric_set(self, module: LightningModule) -> dict[str, Metric]:
        metrics: dict[str, Metric] = {}
        for victim in module.victims:
            keys = [victim.name] + [f"{victim.name}/{c}" for c in victim.condition_names]
            for key in keys:
                metrics[f"sr_mask/{key}"] = SRMask(threshold=self.success_threshold,
                                                    mask_threshold=self.mask_threshold)
                metrics[f"l2_mask/{key}"] = L2Mask(mask_threshold=self.mask_threshold)
        return metrics

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.metrics = {key: metric.to(pl_module.device) for key, metric in self._metric_set(pl_module).items()}

    @torch.no_grad()
    def judge(self, module: LightningModule, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Update every metric with one batch of clean images and their protected versions."""
        assert self.metrics is not None
        x = x.to(module.device)
        protected = module.protect(x)
        for victim in module.victims:
            conditions = [c.to(module.device) for c in victim.conditions(labels.to(module.device))]
            micro = module.micro_batch(victim, x.shape[0])
            fakes = clean_outputs(victim, x, conditions, micro)
            fakes_protected = clean_outputs(victim, protected, conditions, micro)
            for name, fake, fake_protected in zip(victim.condition_names, fakes, fakes_protected, strict=True):
                for key in (victim.name, f"{victim.name}/{name}"):
                    self.metrics[f"sr_mask/{key}"].update(x, fake, fake_protected)
                    self.metrics[f"l2_mask/{key}"].update(x, fake, fake_protected)
            if victim.name not in self.samples:
                self.samples[victim.name] = {
                    "clean": x[0].cpu(), "protected": protected[0].cpu(),
                    "fake": torch.stack([f[0] for f in fakes]).cpu(),
                    "fake_protected": torch.stack([f[0] for f in fakes_protected]).cpu(),
                }
        self.images_judged += x.shape[0]

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if pl_module.scope == "per_image" and pl_module.last_batch is not None:
            self.judge(pl_module, pl_module.last_batch["image"], pl_module.last_batch["labels"])

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.scope != "universal":
            return
        loader = trainer.datamodule.eval_dataloader()
        was_training = pl_module.training
        for batch in loader:
            self.judge(pl_module, batch["image"], batch["labels"])
        pl_module.train(was_training)

    def results(self, module: LightningModule, trainer: Trainer | None = None) -> dict[str, float]:
        """Flat final values; `sr_mask/mean` is the mean over victims (the sweep objective).

        Under DDP every process must call this: the metrics synchronise across processes on compute.
        """
        assert self.metrics is not None
        flat: dict[str, float] = {}
        for key, metric in self.metrics.items():
            if metric.update_count == 0:
                continue
            flat[key] = float(metric.compute())
        for victim in module.victims:
            metric = self.metrics[f"sr_mask/{victim.name}"]
            if metric.update_count:
                counts = torch.stack([metric.empty.float(), metric.total.float()])
                if trainer is not None and trainer.world_size > 1:
                    counts = trainer.strategy.reduce(counts, reduce_op="sum")
                flat[f"empty_mask/{victim.name}"] = int(counts[0].item())
                flat[f"judged/{victim.name}"] = int(counts[1].item())
        victim_scores = [flat[f"sr_mask/{v.name}"] for v in module.victims if f"sr_mask/{v.name}" in flat]
        if victim_scores:
            flat["sr_mask/mean"] = sum(victim_scores) / len(victim_scores)
        judged = torch.tensor(float(self.images_judged), device=module.device)
        if trainer is not None and trainer.world_size > 1:
            judged = trainer.strategy.reduce(judged, reduce_op="sum")
        flat["images_judged"] = int(judged.item())
        return flat
