"""CMUA-Watermark's two-level fusion, as the paper describes it (Huang et al., AAAI 2022, Algorithm 1).

Per iteration, victim by victim: the scope reduces the per-image gradients at the current watermark W
(image-level fusion: the batch mean of their signs), the base attack proposes P_j from W with victim j's
step size a_j = step_scale_j * attack.step_size, and model-level fusion blends W <- alpha W + (1 - alpha) P_j.

The first proposal is not blended: the paper's eq. 4 and its text ("the initial W_CMUA is just the P_avg calculated
from the first deepfake model") start W at the first victim's first proposal, which is made from the base attack's
start; every later proposal blends. The released loop does the same (`up = eta` the very first time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advwm.attacks.aggregators.base import Aggregator, Iteration

if TYPE_CHECKING:
    from advwm.attacks.module import WatermarkAttack
    from advwm.attacks.scopes import Scope
    from advwm.attacks.steps import BaseAttack

__all__ = ["CMUAFusion"]


class CMUAFusion(Aggregator):
    """Two-level fusion; `alpha` weighs the current watermark in the model-level blend (0.5 in the paper)."""

    def __init__(self, alpha: float = 0.5) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"aggregator.alpha must lie in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def validate(self, *, attack: BaseAttack, scope: Scope, victims: int) -> None:
        if not attack.proposes:
            raise ValueError(f"{attack.label} cannot drive CMUA fusion: its step depends on its own schedule and "
                             "history, so it cannot propose a step to blend; choose aggregator=uniform|mgda|"
                             "iterative|single, or attack=pgd|ifgsm|mifgsm with CMUA")

    def blend(self, watermark: Tensor, proposal: Tensor) -> Tensor:
        """Model-level fusion: alpha * W + (1 - alpha) * P."""
        return self.alpha * watermark + (1.0 - self.alpha) * proposal

    def step(self, engine: WatermarkAttack, iteration: Iteration) -> Tensor:
        attack = engine.base_attack
        signed = engine.scope.fused_step_signed()
        total = torch.zeros((), device=iteration.x.device)
        first = iteration.step == 0  # the perturbation's first iteration: its first proposal becomes W
        for j, victim in enumerate(engine.victims):
            result = engine.victim_gradient(j, iteration)
            grad, loss = engine.scope.reduce(result.grad, result.loss)
            grad = engine.scope.all_reduce(engine, engine.regularizer(grad, loss))
            step = engine.attack.step_size * engine.step_scales[victim.name]
            with torch.no_grad():
                proposal = attack.propose(engine.perturbation, grad, step, signed=signed)
                engine.perturbation.copy_(proposal if first and j == 0 else self.blend(engine.perturbation, proposal))
            engine.scope.keep_in_image_range(engine, iteration.x)
            total = total + loss.mean()
            engine.log_victim(j, result.loss)
        engine.take_step()  # no gradient set: counts the step without moving the watermark
        return total

    def __repr__(self) -> str:
        return f"CMUAFusion(alpha={self.alpha})"
