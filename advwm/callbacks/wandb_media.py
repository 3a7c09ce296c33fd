"""W&B pictures during crafting: the watermark at every checkpoint, so its growth can be watched.

Every `every` attack iterations (the run's `checkpoint_every`, and at the last one) the current
perturbation, amplified to full contrast, is logged to each W&B logger as `watermark` at that step; W&B's
image panel then has a slider over the checkpoints. Other loggers are left alone.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from advwm.callbacks.export import watermark_picture


class WatermarkSnapshots(Callback):
    """Logs the watermark picture to W&B every `every` iterations (universal scope: one picture per step)."""

    def __init__(self, every: int) -> None:
        self.every = max(int(every), 1)

    def _wandb(self, trainer: Trainer) -> list[WandbLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = int(trainer.global_step)
        last = step >= trainer.estimated_stepping_batches
        if pl_module.scope.saves != "watermark" or not (step % self.every == 0 or last) or not trainer.is_global_zero:
            return
        loggers = self._wandb(trainer)
        if not loggers:
            return
        picture = watermark_picture(pl_module.watermark().detach().cpu(), pl_module.eps)
        image = picture.permute(1, 2, 0).mul(255).round().byte().numpy()
        for logger in loggers:
            logger.log_image(key="watermark/checkpoints", images=[image], step=step, caption=[f"iteration {step}"])
