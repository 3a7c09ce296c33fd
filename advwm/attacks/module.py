"""`WatermarkAttack`: the LightningModule whose training steps update a perturbation, not weights.

One training step is one attack iteration on one batch (the data module repeats each batch as often as
the aggregator says). `training_step` prepares the iteration (the batch's conditions and clean outputs,
once per batch; the scope's fresh perturbations when a batch begins) and hands it to the aggregator,
which runs the whole iteration through this module's public services: `victim_gradient` (cross-domain
mode, input diversity, micro-batching, the non-finite check), `victim_loss`, `scope`, `regularizer`,
`base_attack` (a torch Optimizer over the perturbation), `log_victim`.

The victims are frozen and deliberately *not* registered as submodules: checkpoints then hold only the
perturbation and the attack's state, and DDP sees a single parameter.

Precision: with `trainer.precision=bf16-mixed` Lightning runs `training_step` under autocast. Only the
victims' forwards and backwards keep it (`victim_precision`); everything else (the perturbation, the base
attack's state, the aggregators' arithmetic, MGDA's Gram matrices, the projection, the released CMUA loop)
runs with autocast off in fp32, and the victims' outputs, losses and gradients come back in fp32
(`advwm.attacks.domains`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from advwm.attacks.aggregators.base import Aggregator, Iteration
from advwm.attacks.chunking import Chunker, CudaMemory, DeviceMemory, FixedChunks, MemoryAwareChunks
from advwm.attacks.diversity import PairTransform
from advwm.attacks.domains import CrossDomain, VictimGradient, clean_outputs
from advwm.attacks.eot import SharingEOT
from advwm.attacks.losses import NonFiniteLossError
from advwm.attacks.regularizers import Regularizer
from advwm.attacks.scopes import Scope
from advwm.attacks.steps import BaseAttack, SignStepAttack
from advwm.errors import ConfigError
from advwm.run_files.resume import DIGEST_KEY, SIGNATURE_VERSION, checkpoint_digest, loaded_checkpoint_problem
from advwm.victims.execution import check_precision

log = logging.getLogger(__name__)

class WatermarkAttack(LightningModule):
    """Crafts a universal watermark ([1,3,H,W]) or per-image perturbations ([B,3,H,W]) against victims.

    `signature`: the settings a checkpoint must share to be resumed (config key -> value); a checkpoint
    written with other values is refused with one line naming the first differing key.
    """

    def __init__(
        self,
        victims: Sequence[torch.nn.Module],
        *,
        aggregator: Aggregator,
        domains: CrossDomain,
        regularizer: Regularizer,
        attack: BaseAttack,
        scope: Scope,
        eps: float = 0.05,
        image_size: int = 256,
        batch_size: int = 8,
        step_scales: Mapping[str, float] | None = None,
        micro_batches: Mapping[str, int | str | None] | None = None,
        seed: int = 0,
        signature: Mapping[str, Any] | None = None,
        memory: DeviceMemory | None = None,
        memory_margin: float = 0.2,
        eot: SharingEOT | None = None,
    ) -> None:
        super().__init__()
        if not victims:
            raise ValueError("no victim: choose at least one, e.g. +victims=[stargan,attgan]")
        if not 0 < eps <= 1:
            raise ValueError(f"eps must lie in (0, 1] (image units in [-1, 1]), got {eps}")
        scope.check(attack=attack, aggregator=aggregator)
        aggregator.validate(attack=attack, scope=scope, victims=len(victims))
        if eot is not None:
            eot.check(attack=attack, aggregator=aggregator)
        self.automatic_optimization = False
        self.victims: list[torch.nn.Module] = list(victims)
        self.aggregator = aggregator
        self.domains = domains
        self.regularizer = regularizer
        self.attack = attack
        self.scope = scope
        self.eps = float(eps)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.step_scales = {v.name: float((step_scales or {}).get(v.name, 1.0)) for v in self.victims}
        self.micro_batches = dict(micro_batches or {})
        self.memory = memory  # None: the CUDA device's own (torch.cuda), read when `auto` needs it
        self.memory_margin = float(memory_margin)
        self._chunkers: dict[tuple[str, str], MemoryAwareChunks] = {}  # auto on CUDA: (victim, purpose)
        self._victim_autocast: tuple[str, torch.dtype] | None = None
        self.signature = dict(signature or {})
        self.eot = eot  # EOT over sharing transforms (advwm/attacks/eot.py); None = eot=none, the plain gradient
        self._create_trained_state(batch_size, image_size)
        self.register_buffer("started", torch.tensor(False))
        self.iteration = 0  # iterations done in this run, a resumed one included (the data module reads it)
        self._batch: tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]] | None = None
        self._iteration: Iteration | None = None
        self.finished_batch: dict | None = None  # per image: the batch whose last iteration just ended

    def _create_trained_state(self, batch_size: int, image_size: int) -> None:
        """What crafting updates: the perturbation's rows (the amortized engine: a generator's weights instead)."""
        self.perturbation = torch.nn.Parameter(torch.zeros(self.scope.rows(batch_size), 3, image_size, image_size))

    # ---- Lightning plumbing -------------------------------------------------------------------------
    def configure_optimizers(self) -> SignStepAttack:
        return self.attack.build([self.perturbation], eps=self.eps, schedule_length=self._schedule_length())

    def _schedule_length(self) -> int:
        """The iterations one perturbation gets (APGD's checkpoint schedule spans them): a batch's for per-image
        perturbations (reset per batch); for a universal watermark, the planned run, max_epochs passes over
        the crafting faces. `trainer.max_steps` cuts a run short without rescaling the schedule, so a run
        stopped early and resumed follows the uninterrupted run's schedule."""
        if not (self.attack.scheduled and self.scope.judges_held_out and self._trainer is not None):
            return self.attack.iterations
        epochs = self.trainer.max_epochs
        datamodule = getattr(self.trainer, "datamodule", None)
        if epochs is None or epochs < 1 or datamodule is None:
            return int(self.trainer.estimated_stepping_batches)
        return int(epochs) * len(datamodule.train_dataloader())

    def on_fit_start(self) -> None:
        check_precision(self.trainer.precision)
        for victim in self.victims:
            victim.to(self.device)

    def on_train_start(self) -> None:
        if self.aggregator.uses_random_start and not self.watermark_started:
            self.scope.start_run(self)
            self.mark_watermark_started()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["advwm_iteration"] = self.iteration
        checkpoint["advwm_signature"] = dict(self.signature)
        checkpoint["advwm_signature_version"] = SIGNATURE_VERSION
        checkpoint[DIGEST_KEY] = checkpoint_digest(checkpoint)  # Lightning calls this hook last: over everything

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """The pipeline checked the file before any work (`advwm.run_files.resume`); this guards the Python API too:
        the same settings, a sound perturbation and attack state, or one line naming ckpt_path."""
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        perturbation = getattr(self, "perturbation", None)  # scope=amortized trains a generator instead
        problem = loaded_checkpoint_problem(checkpoint, path, self.signature or None, eps=self.eps,
                                            image_size=self.image_size,
                                            rows=None if perturbation is None else int(perturbation.shape[0]),
                                            digest=False)
        if problem:
            raise ConfigError(problem)
        self.iteration = int(checkpoint.get("advwm_iteration", 0))
        saved_rows = checkpoint.get("state_dict", {}).get("perturbation")
        if saved_rows is not None:  # a per-image checkpoint taken in a smaller last batch
            self.perturbation.data = torch.zeros_like(saved_rows)

    def start_generator(self, batch_number: int) -> torch.Generator:
        """Random starts and restart noise depend on (seed, batch) only, not on the process or a resume:
        DDP ranks and a single process, an interrupted and a straight run, start from the same point."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + batch_number)

    @property
    def base_attack(self) -> SignStepAttack:
        optimizer = self.optimizers()
        return getattr(optimizer, "optimizer", optimizer)

    def take_step(self, loss: torch.Tensor | None = None) -> None:
        """The base attack's step (with the gradient the aggregator set, if any) through Lightning's optimizer
        wrapper, which counts the iteration (`trainer.global_step`: checkpoints, periodic evaluation)."""
        self.optimizers().step(loss=loss)

    @property
    def watermark_started(self) -> bool:
        return bool(self.started)

    def mark_watermark_started(self) -> None:
        self.started.fill_(True)

    # ---- services for the aggregators --------------------------------------------------------------
    def protect(self, x: torch.Tensor) -> torch.Tensor:
        """x + delta, kept in the valid image range [-1, 1]."""
        return (x + self.perturbation).clamp(-1.0, 1.0)

    def batch_protected(self, iteration: Iteration) -> torch.Tensor:
        """The iteration's protected faces, where the victims' gradients are taken."""
        return self.protect(iteration.x)

    def ascend(self, direction: torch.Tensor, loss: torch.Tensor, iteration: Iteration, needed: Sequence[int]) -> None:
        """One base-attack step along the combined direction [P,...] (`loss` [P]: the rows' loss, APGD's), the image
        range kept; after APGD's last step, its best point by the loss of the `needed` victims at the last one."""
        attack = self.base_attack
        self.perturbation.grad = self.scope.all_reduce(self, direction).to(self.perturbation.dtype)
        self.take_step(loss=loss)
        self.perturbation.grad = None
        self.scope.keep_in_image_range(self, iteration.x)
        if attack.wants_final_loss():  # APGD returns the best point it has seen, the last one included
            with torch.no_grad():
                final = sum(self.scope.loss_rows(self.victim_loss(j, iteration)) for j in needed)
            attack.finish(self.scope.all_reduce(self, final))
            self.scope.keep_in_image_range(self, iteration.x)

    def micro_batch(self, victim: torch.nn.Module, batch: int, purpose: str = "gradient") -> Chunker:
        """How the (image, condition) pairs go through `victim`: a `Chunker` (advwm.attacks.chunking).

        A number N: N pairs at a time; None: all at once. "auto": one pair at a time on the CPU (experiments/
        bench.py on two 2-core CPUs: fastest or within 12 % of the fastest plan for StarGAN and AttGAN, where
        stacking all conditions was slower; README, Speed); on a CUDA device (or with an injected `memory`)
        as many pairs as the free memory holds, probed once per victim and `purpose` ("gradient": forward
        and backward; "forward": no graph, far less memory), halved and remembered on out-of-memory; on
        other accelerators all pairs at once. A victim that cannot stack conditions gets at most `batch`.
        """
        size = self.micro_batches.get(victim.name, "auto")
        limit = None if getattr(victim, "stackable", True) else batch
        if size == "auto" and (self.memory is not None or self.device.type == "cuda"):
            key = (victim.name, purpose)
            if key not in self._chunkers:
                memory = self.memory if self.memory is not None else CudaMemory(self.device)
                self._chunkers[key] = MemoryAwareChunks(victim.name, memory, margin=self.memory_margin, limit=limit,
                                                        purpose=purpose)
            return self._chunkers[key]
        if size == "auto":  # a fixed choice off CUDA (README, Speed): nothing to probe, nothing to log
            size = 1 if self.device.type == "cpu" else None
        return FixedChunks(size, limit=limit, name=victim.name)

    def chunk_sizes(self) -> dict[str, int | None]:
        """`<victim>/<purpose>` -> the chunk `micro_batch: auto` settled on (memory-aware chunkers only): what
        the log said, for benchmarks and tests."""
        return {f"{name}/{purpose}": chunker.size for (name, purpose), chunker in self._chunkers.items()}

    @contextlib.contextmanager
    def victim_precision(self) -> Iterator[None]:
        """The autocast Lightning set around training_step (trainer.precision=bf16-mixed), for victim calls only."""
        if self._victim_autocast is None:
            yield
            return
        device_type, dtype = self._victim_autocast
        with torch.autocast(device_type, dtype=dtype):
            yield

    @staticmethod
    def _ambient_autocast(device_type: str) -> tuple[str, torch.dtype] | None:
        """(device type, dtype) of the autocast in force, if any (Lightning's precision plugin sets it)."""
        if not torch.is_autocast_enabled(device_type):
            return None
        return device_type, torch.get_autocast_dtype(device_type)

    def victim_gradient(self, j: int, iteration: Iteration) -> VictimGradient:
        """Victim j's per-image gradient and loss at the current perturbation under the cross-domain mode."""
        victim, x = self.victims[j], iteration.x
        transform = self._diversity_for(j, x, len(iteration.conditions[j]))
        protected = self.batch_protected(iteration).detach()
        gradient = self.domains.gradient if self.eot is None else self.eot.around(
            self.domains, x, seed=self.seed, step=self.iteration, victim_index=j)  # EOT: the mean over its draws
        with self.victim_precision():
            result = gradient(victim, protected, iteration.conditions[j], iteration.targets[j],
                              iteration.step, self.micro_batch(victim, x.shape[0]), transform)
        if not torch.isfinite(result.loss).all() or not torch.isfinite(result.grad).all():
            raise NonFiniteLossError(f"victim {victim.name} produced a non-finite loss or gradient at iteration "
                                     f"{self.iteration} (check its checkpoint and the input images)")
        return result

    def victim_loss(self, j: int, iteration: Iteration) -> torch.Tensor:
        """Victim j's per-image loss at the current perturbation, forward only (no input diversity)."""
        victim, x = self.victims[j], iteration.x
        protected = self.batch_protected(iteration)
        with self.victim_precision():
            return self.domains.loss(victim, protected, iteration.conditions[j], iteration.targets[j],
                                     iteration.step, self.micro_batch(victim, x.shape[0], "forward"))

    def _diversity_for(self, j: int, x: torch.Tensor, conditions: int) -> PairTransform | None:
        """This step's DI2 transforms for victim j, one per (condition, image) pair, seeded by (seed, step, j)
        so that chunking (micro_batch) and the device cannot change them."""
        if self.attack.diversity is None:
            return None
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.iteration) * 1009 + j)
        return PairTransform.for_step(self.attack.diversity, conditions, x.shape[0], x.shape[-2], x.shape[-1],
                                      generator)

    def log_victim(self, j: int, loss: torch.Tensor) -> None:
        self.log(f"loss/{self.victims[j].name}", loss.mean(), on_step=True, batch_size=1)

    # ---- one iteration ------------------------------------------------------------------------------
    def _targets(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
        """Every victim's conditions and clean outputs G(x, c) for this batch: the fixed targets."""
        conditions, targets = [], []
        for victim in self.victims:
            conds = [c.to(self.device) for c in victim.conditions(labels)]
            conditions.append(conds)
            with self.victim_precision():
                targets.append(clean_outputs(victim, x, conds, self.micro_batch(victim, x.shape[0], "forward")))
        return conditions, targets

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """One attack iteration; any autocast Lightning set is kept for the victims' calls only."""
        self._victim_autocast = self._ambient_autocast(self.device.type)
        with torch.autocast(self.device.type, enabled=False):
            return self._iteration_step(batch, batch_idx)

    def _iteration_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, labels = batch["image"], batch["labels"]
        repeats = self.aggregator.repeats(self.attack.iterations)
        repetition, batch_number = batch_idx % repeats, batch_idx // repeats
        if repetition == 0 or self._batch is None:  # a new batch, or the first step after a resume
            self._batch = self._targets(x, labels) if self.aggregator.uses_engine_gradients else ([], [])
        if repetition == 0:
            self.scope.start_batch(self, x, batch_number)
        iteration = Iteration(x=x, labels=labels, conditions=self._batch[0], targets=self._batch[1],
                              step=self.scope.local_step(self.iteration, repetition), batch_number=batch_number)
        total = self.aggregator.step(self, iteration)
        self.iteration += 1
        self.log("loss/total", total, prog_bar=True, on_step=True, batch_size=x.shape[0])
        finished = not self.scope.judges_held_out and repetition == repeats - 1
        self.finished_batch = {"image": x, "labels": labels, "name": batch.get("name")} if finished else None
        return total

    # ---- results ------------------------------------------------------------------------------------
    def watermark(self) -> torch.Tensor:
        """The current perturbation, detached, on the CPU: [3,H,W] universal, [B,3,H,W] per image."""
        return self.scope.watermark(self.perturbation.detach().cpu())
