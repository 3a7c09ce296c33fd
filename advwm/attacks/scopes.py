"""Scope: one universal watermark for every face (CMUA) or one perturbation per face (CDMAA).

The scope is the one object that knows what the perturbation's rows are, how a batch's per-image
gradients become those rows, what a new batch does to them and what the run saves and judges; the
engine, the aggregators and the callbacks ask it instead of comparing a scope name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from advwm.attacks.aggregators.base import Aggregator
    from advwm.attacks.module import WatermarkAttack
    from advwm.attacks.steps import BaseAttack

__all__ = ["BATCH_REDUCTIONS", "FUSED_STEPS", "OneRowPerFace", "PerImage", "Scope", "Universal", "image_level_fusion"]

BATCH_REDUCTIONS = ("sign_mean", "mean")
FUSED_STEPS = ("mean", "sign")


def image_level_fusion(per_image_grads: Tensor) -> Tensor:
    """CMUA image-level fusion: the batch mean of the signed per-image gradients, [B, ...] -> [1, ...].

    Signing first gives every image one vote per pixel, so a few images with large gradients cannot
    dominate the universal watermark.
    """
    return per_image_grads.sign().mean(dim=0, keepdim=True)


class Scope(ABC):
    """What the perturbation is: its rows, the reduction of a batch onto them, what a batch does to them."""

    name: ClassVar[str]
    judges_held_out: ClassVar[bool]  # True: judged on held-out faces at the end; False: each crafted batch
    allows_ddp: ClassVar[bool]
    saves: ClassVar[str]  # what the run writes: "watermark" (one [3,S,S]), "perturbations" (one per face), "generator"

    def check(self, *, attack: BaseAttack, aggregator: Aggregator) -> None:
        """Refuse a base attack or aggregator this scope cannot craft with (ValueError, one line)."""
        if attack.trains_generator:
            raise ValueError(f"{attack.label} trains the perturbation generator of scope=amortized: choose "
                             f"scope=amortized, or a sign-step attack (attack=pgd, ifgsm, mifgsm, di2fgsm, mdi2fgsm, "
                             f"apgd) for scope={self.name}")

    def engine_class(self) -> type[WatermarkAttack]:
        """The engine that crafts with this scope (the amortized scope trains a generator instead)."""
        from advwm.attacks.module import WatermarkAttack

        return WatermarkAttack

    @abstractmethod
    def rows(self, batch_size: int) -> int:
        """How many perturbation rows a batch of `batch_size` faces needs."""

    @abstractmethod
    def reduce(self, grad: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
        """Per-image gradient [B,...] and loss [B] -> the perturbation's rows ([P,...], [P])."""

    @abstractmethod
    def loss_rows(self, loss: Tensor) -> Tensor:
        """Per-image loss [B] -> per row [P]."""

    @abstractmethod
    def local_step(self, iteration: int, repetition: int) -> int:
        """The iteration count of the current perturbation (CDMAA's t in `t mod K`)."""

    @abstractmethod
    def fused_step_signed(self) -> bool:
        """Whether CMUA fusion's proposal signs the reduced gradient (else steps along it)."""

    def start_run(self, engine: WatermarkAttack) -> None:
        """At the start of crafting (not again on resume): the universal watermark's random start."""
        return None

    def start_batch(self, engine: WatermarkAttack, x: Tensor, batch_number: int) -> None:
        """At the first iteration of a new batch (per image: fresh perturbations)."""
        return None

    def keep_in_image_range(self, engine: WatermarkAttack, x: Tensor) -> None:
        """Per image: keep x + delta inside [-1, 1] by adjusting delta itself."""
        return None

    def all_reduce(self, engine: WatermarkAttack, tensor: Tensor) -> Tensor:
        """Identity; a universal direction is averaged over DDP processes."""
        return tensor

    def watermark(self, perturbation: Tensor) -> Tensor:
        """What `watermark()` hands out: [3,H,W] universal, [B,3,H,W] per image."""
        return perturbation


class Universal(Scope):
    """One watermark [1,3,H,W] for every face, crafted on the crafting split, judged on held-out faces.

    batch_reduction: `sign_mean` (CMUA's image-level fusion: the batch mean of the per-image gradient
    signs) or `mean` (the plain mean gradient). fused_step: how CMUA fusion steps with the reduced
    gradient: `mean` steps along it (a times the batch mean of the per-image sign steps, what the released
    CMUA code computes), `sign` along its sign (a per-pixel majority vote). Without image-level fusion
    there are no votes to average, so the mean gradient is signed whatever `fused_step` says.
    """

    name = "universal"
    judges_held_out = True
    allows_ddp = True
    saves = "watermark"

    def __init__(self, batch_reduction: str = "sign_mean", fused_step: str = "mean") -> None:
        if batch_reduction not in BATCH_REDUCTIONS:
            raise ValueError(f"scope.batch_reduction must be one of {BATCH_REDUCTIONS}, got {batch_reduction!r}")
        if fused_step not in FUSED_STEPS:
            raise ValueError(f"scope.fused_step must be one of {FUSED_STEPS}, got {fused_step!r}")
        self.batch_reduction = batch_reduction
        self.fused_step = fused_step

    def rows(self, batch_size: int) -> int:
        return 1

    def reduce(self, grad: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
        row = image_level_fusion(grad) if self.batch_reduction == "sign_mean" else grad.mean(dim=0, keepdim=True)
        return row, self.loss_rows(loss)

    def loss_rows(self, loss: Tensor) -> Tensor:
        return loss.mean().reshape(1)

    def local_step(self, iteration: int, repetition: int) -> int:
        return iteration  # one watermark over the whole run

    def fused_step_signed(self) -> bool:
        return self.fused_step == "sign" or self.batch_reduction != "sign_mean"

    def start_run(self, engine: WatermarkAttack) -> None:
        engine.base_attack.initialize(engine.start_generator(0))

    def all_reduce(self, engine: WatermarkAttack, tensor: Tensor) -> Tensor:
        if engine.trainer.world_size > 1:
            return engine.trainer.strategy.reduce(tensor, reduce_op="mean")
        return tensor

    def watermark(self, perturbation: Tensor) -> Tensor:
        return perturbation[0]

    def __repr__(self) -> str:
        return f"Universal(batch_reduction={self.batch_reduction!r}, fused_step={self.fused_step!r})"


class OneRowPerFace(Scope):
    """A row per face: each face's gradient and loss are its own row's (per image, and the amortized generator)."""

    def rows(self, batch_size: int) -> int:
        return batch_size

    def reduce(self, grad: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
        return grad, loss

    def loss_rows(self, loss: Tensor) -> Tensor:
        return loss


class PerImage(OneRowPerFace):
    """One perturbation per face ([B,3,H,W]): `attack.iterations` steps on each batch, judged on those faces."""

    name = "per_image"
    judges_held_out = False
    allows_ddp = False  # parallelise over runs (multirun) instead
    saves = "perturbations"

    def local_step(self, iteration: int, repetition: int) -> int:
        return repetition  # t restarts with every batch: the iteration of *this* image

    def fused_step_signed(self) -> bool:
        return True  # each image takes its own sign step

    def start_batch(self, engine: WatermarkAttack, x: Tensor, batch_number: int) -> None:
        engine.perturbation.data = torch.zeros_like(x)
        engine.base_attack.initialize(engine.start_generator(batch_number))
        self.keep_in_image_range(engine, x)

    def keep_in_image_range(self, engine: WatermarkAttack, x: Tensor) -> None:
        engine.perturbation.data.copy_(engine.protect(x) - x)

    def __repr__(self) -> str:
        return "PerImage()"
