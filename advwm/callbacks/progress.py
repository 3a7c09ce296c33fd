"""Progress a person can read: one bar over all attack iterations, and one over the evaluation.

Lightning's default bar restarts every epoch ("Epoch 0/0"), shows the logger's version (`v_num`) and only
the values logged with `prog_bar=True`. An attack iteration can take a minute on a CPU, so what matters
is "iteration i/N", seconds per iteration, the time left and each victim's loss: this bar runs once over
all `trainer.estimated_stepping_batches` iterations and shows `loss/<victim>` (logged by the attack
module every step) as `<victim>=...`. tqdm switches to s/it by itself when an iteration takes over a
second, and computes the ETA from the elapsed iterations.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm.auto import tqdm

LOSS_PREFIX = "loss/"


def victim_losses(metrics: dict[str, Any]) -> dict[str, float]:
    """`{"loss/stargan": t, "loss/total": t, ...}` -> `{"stargan": 0.0123, ..., "total": ...}` (total last)."""
    losses = {key[len(LOSS_PREFIX):]: float(value) for key, value in metrics.items()
              if key.startswith(LOSS_PREFIX) and key.count("/") == 1}
    total = losses.pop("total", None)
    if total is not None:
        losses["total"] = total
    return losses


class AttackProgressBar(TQDMProgressBar):
    """`iteration 3/8 |███   | [02:01<03:02, 60.5s/it, stargan=0.012, attgan=0.004, total=0.016]`."""

    # Lightning's format shows it/s always ("0.02it/s" for a minute per iteration); tqdm's rate_fmt turns
    # into s/it when an iteration takes longer than a second
    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=False)
        self._done = 0
        self._description = "iteration"

    @property
    def total_iterations(self) -> int | None:
        total = self.trainer.estimated_stepping_batches
        return None if total is None or math.isinf(total) else int(total)

    @property
    def train_description(self) -> str:
        return self._description

    def describe(self, text: str) -> None:
        """The bar's label, e.g. `photos 3/10 protected` (a per-image run over photos: its export says it); the
        time left stays the bar's, over all iterations."""
        self._description = text
        bar = self._train_progress_bar
        if bar is not None and not bar.disable:
            bar.set_description(text, refresh=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._done = int(trainer.global_step)  # a resumed run continues its count
        self.train_progress_bar.reset(total=self.total_iterations)
        self.train_progress_bar.initial = self._done
        self.train_progress_bar.n = self._done

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        """One bar over every epoch: no reset, no "Epoch k" description."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._done += 1
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.n = self._done
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)
            if bar.total is not None and self._done >= bar.total:
                bar.close()  # crafting is over: the evaluation bar takes the line

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the bar open across epochs (Lightning's closes it when `leave` is set)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Each victim's loss and the total, rounded; no `v_num`."""
        return {name: f"{value:.4g}" for name, value in victim_losses(dict(trainer.callback_metrics)).items()}


def evaluation_bar(total: int, description: str = "judging") -> tqdm:
    """The bar of the evaluation pass (SR_mask, L2_mask, ... and FID/liveness when on): one tick per victim
    and batch, so a slow metric never looks like a hang."""
    return tqdm(total=total, desc=description, unit="victim·batch", leave=False, dynamic_ncols=True)
