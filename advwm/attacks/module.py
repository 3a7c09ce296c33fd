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
from advwm.attacks.diversity import InputDiversity
from advwm.attacks.domains import CrossDomain, clean_outputs
from advwm.attacks.losses import distortion
from advwm.attacks.regularizers import Regularizer
from advwm.attacks.steps import SignStepAttack, make_base_attack

log = logging.getLogger(__name__)

SCOPES = ("universal", "per_image")
# Victims whose loop in the released CMUA code continues from x + W instead of restarting from noise,
# with the target offset that code adds to the clean output (universal_perturb_HiSD: y = G(x) + 0.002).
REFERENCE_CONTINUING: dict[str, float] = {"hisd": 0.002}
BATCH_REDUCTIONS = ("sign_mean", "mean")


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


class NonFiniteLossError(FloatingPointError):
    """A victim produced NaN/inf: the run stops with one line saying where (the watermark so far is kept)."""


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
        seed: int = 0,
    ) -> None:
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if batch_reduction not in BATCH_REDUCTIONS:
            raise ValueError(f"batch_reduction must be one of {BATCH_REDUCTIONS}, got {batch_reduction!r}")
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
        self.seed = int(seed)
        self.step_scales = {v.name: float((step_scales or {}).get(v.name, 1.0)) for v in self.victims}
        self.micro_batches = dict(micro_batches or {})
        self.diversity = (InputDiversity(prob=attack.diversity_prob, resize_rate=attack.diversity_resize_rate)
                          if attack.diversity_prob > 0 else None)
        self.reference_fusion = isinstance(aggregator, CMUAFusion) and aggregator.variant == "reference"
        if self.reference_fusion and scope != "universal":
            raise ValueError("the reference CMUA fusion crafts a universal watermark: use scope=universal")
        rows = 1 if scope == "universal" else batch_size
        self.perturbation = torch.nn.Parameter(torch.zeros(rows, 3, image_size, image_size))
        self.register_buffer("started", torch.tensor(False))
        self.iteration = 0
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
        result = self.domains.gradient(victim, self.protect(x).detach(), cache.conditions[j], cache.targets[j],
                                       self.iteration, self.micro_batch(victim, x.shape[0]), self.diversity)
        if not torch.isfinite(result.loss).all() or not torch.isfinite(result.grad).all():
            raise NonFiniteLossError(f"victim {victim.name} produced a non-finite loss or gradient at iteration "
                                     f"{self.iteration} (check its checkpoint and the input images)")
        return result

    def _keep_in_image_range(self, x: torch.Tensor) -> None:
        if self.scope == "per_image":
            self.perturbation.data.copy_(self.protect(x) - x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, labels = batch["image"], batch["labels"]
        repetition = batch_idx % self.iterations if not self.reference_fusion else 0
        cache = self._prepare(x, labels, new_batch=repetition == 0, batch_number=batch_idx // max(self.iterations, 1))
        if self.reference_fusion:
            total = self._reference_cmua_step(x, cache)
        elif isinstance(self.aggregator, CMUAFusion):
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

    def _combined_step(self, x: torch.Tensor, cache: _BatchCache) -> torch.Tensor:
        """Gradients of the needed victims -> regulariser -> aggregator -> one base-attack step."""
        needed = self.aggregator.needed(self.iteration, len(self.victims))
        grads, losses = [], []
        for j in needed:
            result = self._victim_gradient(j, x, cache)
            grad, loss = self._to_rows(result.grad, result.loss)
            grads.append(self.regularizer(grad, loss))
            losses.append(loss)
            self._log_victim(j, result.loss)
        stacked_losses = torch.stack(losses)
        direction = self.aggregator.combine(torch.stack(grads), stacked_losses, self.iteration)
        self.perturbation.grad = self._all_reduce(direction).to(self.perturbation.dtype)
        self.optimizers().step(loss=stacked_losses.sum(dim=0))
        self.perturbation.grad = None
        self._keep_in_image_range(x)
        return stacked_losses.sum(dim=0).mean()

    def _cmua_step(self, x: torch.Tensor, cache: _BatchCache) -> torch.Tensor:
        """CMUA (paper): victim by victim, propose a base-attack step with that victim's step size from the
        current W and blend it in, W <- alpha W + (1 - alpha) P_j."""
        attack = self.base_attack
        total = torch.zeros((), device=self.device)
        for j, victim in enumerate(self.victims):
            result = self._victim_gradient(j, x, cache)
            grad, loss = self._to_rows(result.grad, result.loss)
            grad = self._all_reduce(self.regularizer(grad, loss))
            step = self.attack.step_size * self.step_scales[victim.name]
            with torch.no_grad():
                proposal = attack.propose(self.perturbation, grad, step)
                self.perturbation.copy_(self.aggregator.blend(self.perturbation, proposal))
            self._keep_in_image_range(x)
            total = total + loss.mean()
            self._log_victim(j, result.loss)
        self.optimizers().step()  # no gradient set: counts the step (global_step) without moving delta
        return total

    def _reference_cmua_step(self, x: torch.Tensor, cache: _BatchCache) -> torch.Tensor:
        """CMUA-Watermark's released code, one batch: for each victim and each of its conditions, restart
        from x + U(-eps, eps) and run `iterations` PGD steps of size `attack.step_size`; after every step,
        blend the batch mean of clamp(s_j * (X_adv - x), -eps, eps) into W (the very first blend takes it
        as is), and continue from X = clamp(x + W, -1, 1). The per-victim factor s_j (`step_scale`)
        scales the whole displacement. The loss is the batch-mean MSE, as nn.MSELoss computes it.
        The released HiSD loop differs (REFERENCE_CONTINUING): it starts from x + W (x alone before the
        first blend), not from noise, and its target is the clean output plus 0.002.
        """
        alpha = self.aggregator.alpha
        random_start = bool(self.attack.options.get("random_start", self.attack.name == "pgd"))
        total = torch.zeros((), device=self.device)
        for j, victim in enumerate(self.victims):
            scale = self.step_scales[victim.name]
            offset = REFERENCE_CONTINUING.get(victim.name)
            for condition, target in zip(cache.conditions[j], cache.targets[j], strict=True):
                current = x.clone()
                if offset is not None:
                    target = target + offset
                    if bool(self.started):
                        current = (x + self.perturbation.detach()).clamp(-1.0, 1.0)
                elif random_start:
                    current = current + torch.empty_like(x).uniform_(-self.eps, self.eps)
                for _ in range(self.iterations):
                    current = current.detach().requires_grad_(True)
                    with torch.enable_grad():
                        fed = self.diversity(current) if self.diversity is not None else current
                        loss = distortion(victim(fed, condition), target).mean()
                        (grad,) = torch.autograd.grad(loss, current)
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(f"victim {victim.name} produced a non-finite loss")
                    with torch.no_grad():
                        moved = current + self.attack.step_size * grad.sign()
                        eta = (scale * (moved - x)).clamp(-self.eps, self.eps).mean(dim=0, keepdim=True)
                        eta = self._all_reduce(eta)
                        if bool(self.started):
                            self.perturbation.copy_(alpha * self.perturbation + (1 - alpha) * eta)
                        else:
                            self.perturbation.copy_(eta)
                            self.started.fill_(True)
                        current = (x + self.perturbation).clamp(-1.0, 1.0)
                    total = total + loss.detach()
                self._log_victim(j, loss.detach())
        self.optimizers().step()
        return total

    # ---- results ------------------------------------------------------------------------------------
    def watermark(self) -> torch.Tensor:
        """The current perturbation, detached, on the CPU: [3,H,W] universal, [B,3,H,W] per image."""
        delta = self.perturbation.detach().cpu()
        return delta[0] if self.scope == "universal" else delta
