"""Cross-domain losses (CDMAA §3.2): how the conditions (domains) of one victim enter its gradient.

Every mode returns, per image, the gradient of that victim's loss with respect to the protected image
and the loss itself. The conditions a mode uses are run as one stacked batch ([K*B] inputs) whenever the
victim allows it (per-sample normalisation only), optionally in micro-batches to bound memory; the
gradient of each chunk is taken on its own, so no graph outlives its chunk.

- ``uniform``: mean of the losses of all K conditions, one backward over the stacked batch.
- ``single``: one fixed condition (``index``).
- ``iterative``: condition ``step mod K``.
- ``mgda``: the K per-condition gradients combined, per image, by their min-norm point (K backwards).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from advwm.attacks.chunking import MicroBatch, as_chunker
from advwm.attacks.losses import distortion
from advwm.attacks.min_norm import min_norm_weights_batched

# A transform of stacked victim inputs: (chunk [N,3,H,W], the (condition, image) pair of each row) -> chunk.
Transform = Callable[[torch.Tensor, Sequence[tuple[int, int]]], torch.Tensor]


@dataclass
class VictimGradient:
    """One victim's contribution at one iteration."""

    grad: torch.Tensor  # [B,3,H,W]: d(loss_b)/d(protected image b)
    loss: torch.Tensor  # [B]: the loss of each image under this mode
    per_condition: dict[int, torch.Tensor]  # condition index -> [B] loss, for logging


def stack_conditions(conditions: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(conditions), dim=0)


@torch.no_grad()
def clean_outputs(victim: torch.nn.Module, x: torch.Tensor, conditions: Sequence[torch.Tensor],
                  micro_batch: MicroBatch, transform: Transform | None = None,
                  condition_ids: Sequence[int] | None = None) -> list[torch.Tensor]:
    """G(x, c_k) for every condition, computed once per batch (the fixed targets of the distortion), in the
    dtype of x (under autocast the victim computes in bf16; its outputs are kept in fp32).

    `transform` and `condition_ids` as in `stacked_gradients`: EOT's targets G(T_kb(x_b), c_k)."""
    batch = x.shape[0]
    ids = list(condition_ids) if condition_ids is not None else list(range(len(conditions)))
    pairs = [(k, b) for k in ids for b in range(batch)]
    inputs = x.repeat(len(conditions), 1, 1, 1)
    stacked = stack_conditions(conditions)
    pieces: dict[int, torch.Tensor] = {}

    def forward(rows: slice) -> None:
        fed = transform(inputs[rows], pairs[rows]) if transform is not None else inputs[rows]
        pieces[rows.start] = victim(fed, stacked[rows]).to(x.dtype)

    as_chunker(micro_batch).run(inputs.shape[0], forward)
    outputs = torch.cat([pieces[start] for start in sorted(pieces)])
    return list(outputs.split(batch))


def stacked_gradients(
    victim: torch.nn.Module,
    protected: torch.Tensor,
    conditions: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    micro_batch: MicroBatch,
    transform: Transform | None = None,
    condition_ids: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-condition, per-image gradients [K,B,3,H,W] and losses [K,B] of the distortion.

    `micro_batch` bounds how many (image, condition) pairs run through the victim at once (a number, None
    for all, or a `Chunker`); a victim that cannot mix conditions in one batch is given at most B by the
    caller. `transform` (input diversity) sees each row's (condition id, image) pair; `condition_ids` names
    the given conditions (default 0..K-1), so a pair keeps its transform whichever conditions a mode selects.
    """
    k, batch = len(conditions), protected.shape[0]
    ids = list(condition_ids) if condition_ids is not None else list(range(k))
    pairs = [(ids[i], b) for i in range(k) for b in range(batch)]
    inputs = protected.detach().repeat(k, 1, 1, 1)
    stacked_conditions = stack_conditions(conditions)
    stacked_targets = torch.cat(list(targets), dim=0)
    grads = torch.empty_like(inputs)
    losses = torch.empty(inputs.shape[0], device=inputs.device, dtype=inputs.dtype)

    def gradient(part: slice) -> None:
        chunk = inputs[part].clone().requires_grad_(True)
        fed = transform(chunk, pairs[part]) if transform is not None else chunk
        with torch.enable_grad():
            loss = distortion(victim(fed, stacked_conditions[part]), stacked_targets[part])
            (grad,) = torch.autograd.grad(loss.sum(), chunk)
        grads[part] = grad
        losses[part] = loss.detach()

    as_chunker(micro_batch).run(inputs.shape[0], gradient)
    return grads.view(k, batch, *protected.shape[1:]), losses.view(k, batch)


@torch.no_grad()
def stacked_losses(
    victim: torch.nn.Module,
    protected: torch.Tensor,
    conditions: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    micro_batch: MicroBatch,
) -> torch.Tensor:
    """Per-condition, per-image losses [K,B] at `protected`, forward only (no transform)."""
    fakes = clean_outputs(victim, protected, conditions, micro_batch)
    return torch.stack([distortion(fake, target) for fake, target in zip(fakes, targets, strict=True)])


class CrossDomain:
    """Base: which conditions a step uses and how their gradients combine."""

    name = "base"

    def selected(self, step: int, num_conditions: int) -> list[int]:
        return list(range(num_conditions))

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[K,B,...] gradients and [K,B] losses of the selected conditions -> [B,...], [B]."""
        return grads.mean(dim=0), losses.mean(dim=0)

    def gradient(
        self,
        victim: torch.nn.Module,
        protected: torch.Tensor,
        conditions: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        step: int,
        micro_batch: MicroBatch = None,
        transform: Transform | None = None,
    ) -> VictimGradient:
        """The victim's per-image gradient and loss under this mode; `step` counts this perturbation's
        iterations (per image: since its batch began; universal: since the run began)."""
        chosen = self.selected(step, len(conditions))
        grads, losses = stacked_gradients(victim, protected, [conditions[i] for i in chosen],
                                          [targets[i] for i in chosen], micro_batch, transform, chosen)
        grad, loss = self.combine(grads, losses)
        return VictimGradient(grad=grad, loss=loss, per_condition=dict(zip(chosen, losses, strict=True)))

    def loss(
        self,
        victim: torch.nn.Module,
        protected: torch.Tensor,
        conditions: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        step: int,
        micro_batch: MicroBatch = None,
    ) -> torch.Tensor:
        """The per-image loss [B] under this mode at `protected`, without a backward (APGD's last point)."""
        chosen = self.selected(step, len(conditions))
        losses = stacked_losses(victim, protected, [conditions[i] for i in chosen], [targets[i] for i in chosen],
                                micro_batch)
        return losses.mean(dim=0)


class UniformDomains(CrossDomain):
    """Mean of all conditions' losses: its gradient is the mean of their gradients (one stacked backward)."""

    name = "uniform"


class SingleDomain(CrossDomain):
    """One fixed condition: the single-domain baseline."""

    name = "single"

    def __init__(self, index: int = 0) -> None:
        self.index = index

    def selected(self, step: int, num_conditions: int) -> list[int]:
        if not 0 <= self.index < num_conditions:
            raise ValueError(f"domains.index={self.index} but the victim has {num_conditions} conditions")
        return [self.index]


class IterativeDomains(CrossDomain):
    """Condition `step mod K`: one condition per iteration, in turn."""

    name = "iterative"

    def selected(self, step: int, num_conditions: int) -> list[int]:
        return [step % num_conditions]


class MGDADomains(CrossDomain):
    """Per image, the min-norm point of the K per-condition gradients (CDMAA's cross-domain MGDA)."""

    name = "mgda"

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, batch = grads.shape[:2]
        per_image = grads.transpose(0, 1).reshape(batch, k, -1)  # [B,K,D]
        weights = min_norm_weights_batched(per_image).to(grads.dtype)  # [B,K]
        combined = torch.einsum("bk,bkd->bd", weights, per_image).view(batch, *grads.shape[2:])
        return combined, losses.mean(dim=0)
