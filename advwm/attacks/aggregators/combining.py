"""Aggregators that combine the victims' gradients into one direction for one base-attack step.

The iteration: the victims this step needs -> each one's per-image gradient and loss (cross-domain mode,
input diversity) -> the scope's rows -> the regulariser -> `combine` -> `engine.ascend`: the base attack's step
and projection (-> for APGD, the loss at its last point, so it can return the best point it has seen), or, for
scope=amortized, the direction back-propagated into the generator's weights and its optimiser's step.

MGDA (CDMAA section 3.3) and the ablation baselines of CDMAA Table 3: uniform, iterative, single.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advwm.attacks.aggregators.base import Aggregator, Iteration
from advwm.attacks.min_norm import min_norm_weights_batched

if TYPE_CHECKING:
    from advwm.attacks.module import WatermarkAttack
    from advwm.attacks.scopes import Scope
    from advwm.attacks.steps import BaseAttack

__all__ = ["MGDA", "CombiningAggregator", "Iterative", "Single", "Uniform"]


class CombiningAggregator(Aggregator):
    """Gradients of the needed victims -> regulariser -> `combine` -> one base-attack step."""

    combines_into_one_direction = True

    def needed(self, step: int, num: int) -> list[int]:
        """Indices of the victims whose gradient this step uses (default: all), so only those run a backward."""
        return list(range(num))

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        """grads [J, P, ...] (only the `needed` rows, in order), losses [J, P] -> direction [P, ...]."""
        raise NotImplementedError

    def step(self, engine: WatermarkAttack, iteration: Iteration) -> Tensor:
        needed = self.needed(iteration.step, len(engine.victims))
        grads, losses = [], []
        for j in needed:
            result = engine.victim_gradient(j, iteration)
            grad, loss = engine.scope.reduce(result.grad, result.loss)
            grads.append(engine.regularizer(grad, loss))
            losses.append(loss)
            engine.log_victim(j, result.loss)
        stacked_losses = torch.stack(losses)
        direction = self.combine(torch.stack(grads), stacked_losses, iteration.step)
        engine.ascend(direction, stacked_losses.sum(dim=0), iteration, needed)
        return stacked_losses.sum(dim=0).mean()


class MGDA(CombiningAggregator):
    """Per row p, the min-norm point of the convex hull of the victims' gradients (CDMAA / Sener-Koltun).

    At the optimum w . g_j >= ||w||^2 for every j, so a small step along w does not decrease any victim's
    loss (CDMAA Theorem 1). ``last_weights`` [P, J] keeps the weights for logging.
    """

    def __init__(self, max_iter: int = 250, tol: float = 1e-8) -> None:
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.last_weights: Tensor | None = None

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        num, rows = grads.shape[0], grads.shape[1]
        flat = grads.reshape(num, rows, -1).transpose(0, 1)  # [P, J, D]
        weights = min_norm_weights_batched(flat, max_iter=self.max_iter, tol=self.tol)  # [P, J]
        self.last_weights = weights.detach()
        w = weights.T.to(grads.dtype).reshape(num, rows, *([1] * (grads.dim() - 2)))
        return (w * grads).sum(dim=0)


class Uniform(CombiningAggregator):
    """Plain mean of the victims' gradients (the ensemble baseline)."""

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        return grads.mean(dim=0)


class Iterative(CombiningAggregator):
    """One victim per step, in turn: g_{t mod J} with t the perturbation's own iteration (one backward a step)."""

    def needed(self, step: int, num: int) -> list[int]:
        return [step % num]

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        if grads.shape[0] != 1:
            raise ValueError(f"Iterative.combine expects only the needed gradient, got {grads.shape[0]}")
        return grads[0]


class Single(CombiningAggregator):
    """Always the same victim's gradient (default the first): the single-model baseline."""

    def __init__(self, index: int = 0) -> None:
        self.index = int(index)

    def validate(self, *, attack: BaseAttack, scope: Scope, victims: int) -> None:
        if not 0 <= self.index < victims:
            raise ValueError(f"aggregator.index={self.index} but only {victims} victim(s) are chosen")

    def needed(self, step: int, num: int) -> list[int]:
        return [self.index]

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        if grads.shape[0] != 1:
            raise ValueError(f"Single.combine expects only the needed gradient, got {grads.shape[0]}")
        return grads[0]

    def __repr__(self) -> str:
        return f"Single(index={self.index})"
