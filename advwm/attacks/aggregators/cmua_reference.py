"""The released CMUA-Watermark loop as an aggregator: one batch per training step.

It runs the public `advwm.attacks.reference.cmua_reference_watermark` (the one implementation, which the
shared fixtures check bit for bit) on the step's batch, continuing from the current watermark, with the
restart noise drawn from a generator seeded by (seed, batch), so a resumed run draws the same noise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advwm.attacks.aggregators.base import Aggregator, Iteration
from advwm.attacks.reference import cmua_reference_watermark

if TYPE_CHECKING:
    from advwm.attacks.module import WatermarkAttack
    from advwm.attacks.scopes import Scope
    from advwm.attacks.steps import BaseAttack

__all__ = ["CMUAReference"]


class CMUAReference(Aggregator):
    """The released loop: per victim and condition, restart, `iterations` PGD steps, blend after each."""

    uses_random_start = False  # the released watermark starts empty: its first blend takes eta as it is
    uses_engine_gradients = False  # the loop computes its own targets and gradients, condition by condition

    def __init__(self, alpha: float = 0.5) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"aggregator.alpha must lie in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def repeats(self, iterations: int) -> int:
        return 1  # the whole inner loop of a batch is one training step

    def validate(self, *, attack: BaseAttack, scope: Scope, victims: int) -> None:
        if not scope.judges_held_out or scope.rows(2) != 1:
            raise ValueError("aggregator=cmua_reference crafts a universal watermark: use scope=universal")
        if not attack.replays_released_pgd:
            raise ValueError("aggregator=cmua_reference replays the released code's PGD loop: use attack=pgd "
                             "(no momentum, no input diversity)")

    def step(self, engine: WatermarkAttack, iteration: Iteration) -> Tensor:
        watermark, trace = cmua_reference_watermark(
            engine.victims, [(iteration.x, iteration.labels)], factors=engine.step_scales, eps=engine.eps,
            step_size=engine.attack.step_size, iterations=engine.attack.iterations,
            generator=engine.start_generator(iteration.batch_number),
            watermark=engine.perturbation.detach() if engine.watermark_started else None, alpha=self.alpha,
            reduce=lambda eta: engine.scope.all_reduce(engine, eta))
        with torch.no_grad():
            engine.perturbation.copy_(watermark.unsqueeze(0))
        engine.mark_watermark_started()
        for j, entry in enumerate(trace):
            engine.log_victim(j, torch.tensor(entry["loss"]))
        engine.take_step()  # no gradient set: counts the step
        return torch.tensor(sum(entry["loss"] for entry in trace))

    def __repr__(self) -> str:
        return f"CMUAReference(alpha={self.alpha})"
