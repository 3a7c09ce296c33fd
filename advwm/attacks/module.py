"""`WatermarkAttack`: the LightningModule whose training steps update a perturbation, not weights.

One training step is one attack iteration on one batch (the data module repeats each batch
`iterations` times in a row). Per step, for the victims the aggregator needs: the cross-domain mode
gives each victim's per-image gradient and loss; the scope reduces them to the perturbation's rows
(universal: CMUA's image-level fusion, the mean of signed gradients over the batch); the regulariser
rescales each victim's gradient; the aggregator combines them (or, for CMUA fusion, updates victim by
victim); the base attack (a torch Optimizer) takes the step and projects onto the eps-ball; the
perturbation is then kept inside the valid image range.

The victims are frozen and deliberately *not* registered as submodules: checkpoints then hold only the
perturbation and the attack's state, and DDP sees a single parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from lightning.pytorch import LightningModule

from advwm.attacks.aggregators import CMUAFusion, image_level_fusion
from advwm.attacks.diversity import InputDiversity, PairTransform
from advwm.attacks.domains import CrossDomain, clean_outputs
from advwm.attacks.eot import SharingEOT
from advwm.attacks.losses import NonFiniteLossError
from advwm.attacks.reference import cmua_reference_watermark
from advwm.attacks.regularizers import Regularizer
from advwm.attacks.steps import SignStepAttack, make_base_attack

log = logging.getLogger(__name__)

SCOPES = ("universal", "per_image")
BATCH_REDUCTIONS = ("sign_mean", "mean")
FUSED_STEPS = ("mean", "sign")


@dataclass
class AttackSettings:
    """The base attack: which optimizer, its step, and whether the input is randomly diversified (DI2)."""

    name: str = "pgd"
    step_size: float = 0.01
    options: dict = field(default_factory=dict)
    diversity_prob: float = 0.0
    diversity_resize_rate: float = 1.1


@dataclass
class _BatchCache:
    """Per batch: every victim's conditions and clean outputs (the fixed targets), computed once."""

    conditions: list[list[torch.Tensor]]
    targets: list[list[torch.Tensor]]


class WatermarkAttack(LightningModule):
    """Crafts a universal watermark ([1,3,H,W]) or per-image perturbations ([B,3,H,W]) against victims."""

    def __init__(
        self,
        victims: Sequence[torch.nn.Module],
        *,
        aggregator,
        domains: CrossDomain,
        regularizer: Regularizer,
        attack: AttackSettings,
        scope: str = "universal",
        eps: float = 0.05,
        iterations: int = 10,
        image_size: int = 256,
        batch_size: int = 8,
        step_scales: dict[str, float] | None = None,
        micro_batches: dict[str, int | str | None] | None = None,
        batch_reduction: str = "sign_mean",
        fused_step: str = "mean",
        seed: int = 0,
        eot: SharingEOT | None = None,
    ) -> None:
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if batch_reduction not in BATCH_REDUCTIONS:
            raise ValueError(f"batch_reduction must be one of {BATCH_REDUCTIONS}, got {batch_reduction!r}")
        if fused_step not in FUSED_STEPS:
            raise ValueError(f"fused_step must be one of {FUSED_STEPS}, got {fused_step!r}")
        if not victims:
            raise ValueError("no victim: choose at least one, e.g. +victims=[stargan,attgan]")
        self.automatic_optimization = False
        self.victims: list[torch.nn.Module] = list(victims)
        self.aggregator = aggregator
        self.domains = domains
        self.regularizer = regularizer
        self.attack = attack
        self.scope = scope
        self.eps = eps
        self.iterations = iterations
        self.batch_reduction = batch_reduction
        self.fused_step = fused_step
        self.seed = int(seed)
        self.step_scales = {v.name: float((step_scales or {}).get(v.name, 1.0)) for v in self.victims}
        self.micro_batches = dict(micro_batches or {})
        self.diversity = (InputDiversity(prob=attack.diversity_prob, resize_rate=attack.diversity_resize_rate)
                          if attack.diversity_prob > 0 else None)
        self.reference_fusion = isinstance(aggregator, CMUAFusion) and aggregator.variant == "reference"
        if self.reference_fusion and scope != "universal":
            raise ValueError("the reference CMUA fusion crafts a universal watermark: use scope=universal")
        if self.reference_fusion and (attack.name != "pgd" or self.diversity is not None):
            raise ValueError("aggregator=cmua_reference replays the released code's PGD loop: use attack=pgd "
                             "(no momentum, no input diversity)")
        self.eot = eot  # EOT over sharing transforms (advwm/attacks/eot.py); None = eot=none, the plain gradient
        if eot is not None:
            eot.check(attack.name, self.reference_fusion)
        rows = 1 if scope == "universal" else batch_size
        self.perturbation = torch.nn.Parameter(torch.zeros(rows, 3, image_size, image_size))
        self.register_buffer("started", torch.tensor(False))
        self.iteration = 0
        self.local_step = 0  # iterations of the current perturbation: per image since its batch began
        self._cache: _BatchCache | None = None
        self.last_batch: dict | None = None  # x, labels, names of the batch just finished (per-image eval)

    # ---- Lightning plumbing -------------------------------------------------------------------------
    def configure_optimizers(self) -> SignStepAttack:
        options = dict(self.attack.options)
        if self.attack.name == "apgd":
            # APGD's checkpoint schedule spans the iterations one perturbation gets: a batch's for per-image
            # perturbations (reset per batch), the whole run's for a universal watermark.
            total = self.iterations
            if self.scope == "universal" and self._trainer is not None:
                total = int(self.trainer.estimated_stepping_batches)
            options.setdefault("n_iter", total)
        return make_base_attack(self.attack.name, [self.perturbation], eps=self.eps,
                                step_size=self.attack.step_size, **options)

    def on_fit_start(self) -> None:
        for victim in self.victims:
            victim.to(self.device)

    def on_train_start(self) -> None:
        if self.scope == "universal" and not self.reference_fusion and not bool(self.started):
            self.base_attack.initialize(self._start_generator(0))
            self.started.fill_(True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["advwm_iteration"] = self.iteration

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.iteration = int(checkpoint.get("advwm_iteration", 0))

    def _start_generator(self, batch_number: int) -> torch.Generator:
        """The random start depends on (seed, batch) only, not on the process: DDP ranks and a single
        process start from the same point."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + batch_number)

    @property
    def base_attack(self) -> SignStepAttack:
        optimizer = self.optimizers()
        return getattr(optimizer, "optimizer", optimizer)

    # ---- the attack ---------------------------------------------------------------------------------
    def protect(self, x: torch.Tensor) -> torch.Tensor:
        """x + delta, kept in the valid image range [-1, 1]."""
        return (x + self.perturbation).clamp(-1.0, 1.0)

    def micro_batch(self, victim: torch.nn.Module, batch: int) -> int | None:
        """How many (image, condition) pairs go through `victim` at once (None = all of them).

        "auto": one at a time on the CPU, everything stacked on an accelerator. On the 2-core CPU the
        benchmark (experiments/bench.py) measured one-at-a-time fastest for StarGAN and AttGAN (1.6x and
        1.8x the reference loop; stacking all conditions: 0.9x and 1.4x); stacking fills a GPU better.
        """
        size = self.micro_batches.get(victim.name, "auto")
        if size == "auto":
            size = 1 if self.device.type == "cpu" else None
        if not getattr(victim, "stackable", True):
            size = min(size or batch, batch)
        return size

    def _prepare(self, x: torch.Tensor, labels: torch.Tensor, new_batch: bool, batch_number: int = 0) -> _BatchCache:
        if new_batch or self._cache is None:
            conditions, targets = [], []
            for victim in self.victims:
                conds = [c.to(self.device) for c in victim.conditions(labels)]
                conditions.append(conds)
                targets.append(clean_outputs(victim, x, conds, self.micro_batch(victim, x.shape[0])))
            self._cache = _BatchCache(conditions, targets)
            if self.scope == "per_image":
                self.perturbation.data = torch.zeros_like(x)
                self.base_attack.initialize(self._start_generator(batch_number))
                self.perturbation.data.copy_(self.protect(x) - x)
        return self._cache

    def _to_rows(self, grad: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image gradient/loss -> the perturbation's rows (universal: one row for the whole batch)."""
        if self.scope == "per_image":
            return grad, loss
        if self.batch_reduction == "sign_mean":
            row = image_level_fusion(grad)
        else:
            row = grad.mean(dim=0, keepdim=True)
        return row, loss.mean().reshape(1)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average a universal direction over processes (DDP); identity on one device."""
        if self.scope == "universal" and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(tensor, reduce_op="mean")
        return tensor

    def _victim_gradient(self, j: int, x: torch.Tensor, cache: _BatchCache):
        victim = self.victims[j]
        micro = self.micro_batch(victim, x.shape[0])
        transform = self._diversity_for(j, x, len(cache.conditions[j]))
        gradient = self.domains.gradient if self.eot is None else self.eot.around(
            self.domains, x, seed=self.seed, step=self.iteration, victim_index=j)  # EOT: the mean over its draws
        result = gradient(victim, self.protect(x).detach(), cache.conditions[j], cache.targets[j], self.local_step,
                          micro, transform)
        if not torch.isfinite(result.loss).all() or not torch.isfinite(result.grad).all():
            raise NonFiniteLossError(f"victim {victim.name} produced a non-finite loss or gradient at iteration "
                                     f"{self.iteration} (check its checkpoint and the input images)")
        return result

    def _diversity_for(self, j: int, x: torch.Tensor, conditions: int) -> PairTransform | None:
        """This step's DI2 transforms for victim j, one per (condition, image) pair, seeded by (seed, step, j)
        so that chunking (micro_batch) and the device cannot change them."""
        if self.diversity is None:
            return None
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.iteration) * 1009 + j)
        return PairTransform.for_step(self.diversity, conditions, x.shape[0], x.shape[-2], x.shape[-1], generator)

    def _keep_in_image_range(self, x: torch.Tensor) -> None:
        if self.scope == "per_image":
            self.perturbation.data.copy_(self.protect(x) - x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, labels = batch["image"], batch["labels"]
        repetition = batch_idx % self.iterations if not self.reference_fusion else 0
        batch_number = batch_idx // max(self.iterations, 1) if not self.reference_fusion else batch_idx
        # CDMAA's iterative modes use t mod K with t the iteration of *this* perturbation: per image it
        # restarts with every batch; a universal watermark counts its iterations over the whole run.
        self.local_step = repetition if self.scope == "per_image" else self.iteration
        if self.reference_fusion:
            total = self._reference_cmua_step(x, labels, batch_number)
        else:
            cache = self._prepare(x, labels, new_batch=repetition == 0, batch_number=batch_number)
            if isinstance(self.aggregator, CMUAFusion):
                total = self._cmua_step(x, cache)
            else:
                total = self._combined_step(x, cache)
        self.iteration += 1
        self.log("loss/total", total, prog_bar=True, on_step=True, batch_size=x.shape[0])
        if self.reference_fusion or repetition == self.iterations - 1:
            self.last_batch = {"image": x, "labels": labels, "name": batch.get("name")}
        else:
            self.last_batch = None
        return total

    def _log_victim(self, j: int, loss: torch.Tensor) -> None:
        self.log(f"loss/{self.victims[j].name}", loss.mean(), on_step=True, batch_size=1)

    def _loss_rows(self, loss: torch.Tensor) -> torch.Tensor:
        """Per-image loss [B] -> per perturbation row (universal: the batch mean)."""
        return loss if self.scope == "per_image" else loss.mean().reshape(1)

    def _combined_step(self, x: torch.Tensor, cache: _BatchCache) -> torch.Tensor:
        """Gradients of the needed victims -> regulariser -> aggregator -> one base-attack step."""
        needed = self.aggregator.needed(self.local_step, len(self.victims))
        grads, losses = [], []
        for j in needed:
            result = self._victim_gradient(j, x, cache)
            grad, loss = self._to_rows(result.grad, result.loss)
            grads.append(self.regularizer(grad, loss))
            losses.append(loss)
            self._log_victim(j, result.loss)
        stacked_losses = torch.stack(losses)
        direction = self.aggregator.combine(torch.stack(grads), stacked_losses, self.local_step)
        self.perturbation.grad = self._all_reduce(direction).to(self.perturbation.dtype)
        self.optimizers().step(loss=stacked_losses.sum(dim=0))
        self.perturbation.grad = None
        self._keep_in_image_range(x)
        attack = self.base_attack
        if attack.wants_final_loss():  # APGD returns the best point it has seen, so it needs the last one's loss
            with torch.no_grad():
                final = sum(self._loss_rows(self.domains.loss(self.victims[j], self.protect(x), cache.conditions[j],
                                                              cache.targets[j], self.local_step,
                                                              self.micro_batch(self.victims[j], x.shape[0])))
                            for j in needed)
            attack.finish(self._all_reduce(final))
            self._keep_in_image_range(x)
        return stacked_losses.sum(dim=0).mean()

    def _cmua_step(self, x: torch.Tensor, cache: _BatchCache) -> torch.Tensor:
        """CMUA (paper): victim by victim, propose a base-attack step with that victim's step size from the
        current W and blend it in, W <- alpha W + (1 - alpha) P_j. For a universal watermark the proposal
        steps by the batch mean of the per-image sign steps (`fused_step=mean`, the released code's step)
        or by the sign of that mean, a per-pixel majority vote (`fused_step=sign`)."""
        attack = self.base_attack
        # fused_step=mean needs per-image sign votes to average: without image-level fusion (batch_reduction=mean,
        # CMUA Table 4's "off" rows) the raw mean gradient has no step size of its own, so it is signed.
        signed = self.scope == "per_image" or self.fused_step == "sign" or self.batch_reduction != "sign_mean"
        total = torch.zeros((), device=self.device)
        for j, victim in enumerate(self.victims):
            result = self._victim_gradient(j, x, cache)
            grad, loss = self._to_rows(result.grad, result.loss)
            grad = self._all_reduce(self.regularizer(grad, loss))
            step = self.attack.step_size * self.step_scales[victim.name]
            with torch.no_grad():
                proposal = attack.propose(self.perturbation, grad, step, signed=signed)
                self.perturbation.copy_(self.aggregator.blend(self.perturbation, proposal))
            self._keep_in_image_range(x)
            total = total + loss.mean()
            self._log_victim(j, result.loss)
        self.optimizers().step()  # no gradient set: counts the step (global_step) without moving delta
        return total

    def _reference_cmua_step(self, x: torch.Tensor, labels: torch.Tensor, batch_number: int) -> torch.Tensor:
        """One batch of the released CMUA-Watermark loop, through the public `cmua_reference_watermark`
        (restart noise from a generator seeded by (seed, batch), so a resumed run draws the same)."""
        watermark, trace = cmua_reference_watermark(
            self.victims, [(x, labels)], factors=self.step_scales, eps=self.eps, step_size=self.attack.step_size,
            iterations=self.iterations, generator=self._start_generator(batch_number),
            watermark=self.perturbation.detach() if bool(self.started) else None, alpha=self.aggregator.alpha,
            reduce=self._all_reduce)
        with torch.no_grad():
            self.perturbation.copy_(watermark.unsqueeze(0))
        self.started.fill_(True)
        for j, entry in enumerate(trace):
            self._log_victim(j, torch.tensor(entry["loss"]))
        self.optimizers().step()
        return torch.tensor(sum(entry["loss"] for entry in trace))

    # ---- results ------------------------------------------------------------------------------------
    def watermark(self) -> torch.Tensor:
        """The current perturbation, detached, on the CPU: [3,H,W] universal, [B,3,H,W] per image."""
        delta = self.perturbation.detach().cpu()
        return delta[0] if self.scope == "universal" else delta
