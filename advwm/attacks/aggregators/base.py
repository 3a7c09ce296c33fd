"""The aggregator interface: one attack iteration, from the victims' gradients to the new perturbation.

Why the aggregator owns the step: the model-level rules of the papers are not one formula over gradients
(CMUA blends proposals victim by victim; the released CMUA loop restarts inner PGD runs; MGDA combines
gradients into one direction), so each aggregator runs its whole iteration through the engine's public
services (`victim_gradient`, `scope`, `regularizer`, `base_attack`, ...) and `training_step` only calls
`aggregator.step(engine, iteration)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from advwm.attacks.module import WatermarkAttack
    from advwm.attacks.scopes import Scope
    from advwm.attacks.steps import BaseAttack

__all__ = ["Aggregator", "Iteration"]


@dataclass
class Iteration:
    """One attack iteration on one batch, as the engine hands it to the aggregator.

    `conditions[j]` / `targets[j]`: victim j's conditions and clean outputs (computed once per batch).
    `step`: the iteration count of the current perturbation (per image since its batch began, universal
    since the run began); `batch_number`: the batch's position in the crafting split.
    """

    x: Tensor
    labels: Tensor
    conditions: list[list[Tensor]]
    targets: list[list[Tensor]]
    step: int
    batch_number: int


class Aggregator(ABC):
    """How the victims make one iteration: `step(engine, iteration) -> total loss` (a scalar, for logging)."""

    #: whether the run starts from the base attack's random start (the released CMUA loop starts empty)
    uses_random_start: bool = True
    #: whether the iteration goes through the engine's `victim_gradient` (so the engine computes every victim's
    #: conditions and clean outputs per batch, and EOT can wrap the gradient); the released loop runs its own
    uses_engine_gradients: bool = True
    #: whether each iteration ends in one combined direction per row (what a generator can back-propagate);
    #: CMUA fusion instead blends per-victim sign-step proposals of a single watermark
    combines_into_one_direction: bool = False

    def repeats(self, iterations: int) -> int:
        """How many training steps one batch gets (the data module repeats it that often)."""
        return iterations

    def validate(self, *, attack: BaseAttack, scope: Scope, victims: int) -> None:
        """Refuse a base attack, scope or victim count this aggregator cannot drive (ValueError, one line)."""
        return None

    @abstractmethod
    def step(self, engine: WatermarkAttack, iteration: Iteration) -> Tensor:
        """Run one iteration: update `engine.perturbation`; return the iteration's total loss."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
