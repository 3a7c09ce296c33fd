"""`craft(cfg)`: one run from a composed Hydra config to saved outputs and the sweep objective.

Order matters for failing fast: victims (and their checkpoints) are resolved before any data is read
or any gradient is computed, so a missing or wrong file stops the run in seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from advwm import io, run_folder
from advwm.attacks.aggregators import make_aggregator
from advwm.attacks.domains import make_domains
from advwm.attacks.module import AttackSettings, WatermarkAttack
from advwm.attacks.regularizers import make_regularizer
from advwm.callbacks import EvaluationCallback, WatermarkExport
from advwm.callbacks.evaluation import settings_from
from advwm.callbacks.progress import AttackProgressBar
from advwm.callbacks.wandb_media import WatermarkSnapshots
from advwm.loggers import build_loggers, finish, log_results, say
from advwm.validation import check_config, check_image_size
from advwm.victims import CheckpointNotFoundError, Victim, build_victim, get_spec

log = logging.getLogger(__name__)

WEIGHT_MODES = ("checkpoint", "random", "auto")
RANDOM_WEIGHTS_NOTE = ("victims {names} are RANDOMLY INITIALISED (no official checkpoint): the numbers show "
                       "the machinery, not protection against the real models")


class ConfigError(ValueError):
    """The composed config asks for something advwm cannot do; the message says what to change."""


@dataclass
class ResolvedVictim:
    victim: Victim
    weights: str  # "official" or "random"
    checkpoint: str | None


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def resolve_weights(name: str, entry: DictConfig) -> tuple[str | None, str]:
    """(checkpoint path or None, "official" | "random") for one victim, by its `weights` mode."""
    mode = str(entry.get("weights", "checkpoint"))
    if mode not in WEIGHT_MODES:
        raise ConfigError(f"victims.{name}.weights must be one of {WEIGHT_MODES}, got {mode!r}")
    path = entry.get("checkpoint")
    if mode == "random":
        return None, "random"
    exists = path is not None and Path(str(path)).expanduser().is_file()
    if exists:
        return str(Path(str(path)).expanduser()), "official"
    if mode == "auto":  # the demo: said once for all victims by the random-weights note
        return None, "random"
    raise CheckpointNotFoundError(missing_weights_message({name: path}))


def missing_weights_message(missing: dict[str, Any]) -> str:
    """One line for every victim whose official file is missing: where it was looked for, how to get it."""
    parts = []
    for name, path in missing.items():
        spec = get_spec(name)
        how = f"`python -m advwm.weights fetch {name}`" if spec.url else spec.source.rstrip(".")
        parts.append(f"{name} ({path}; {how})")
    return (f"no official weights for {len(missing)} victim(s): " + "; ".join(parts) + ". Place each file there or "
            "pass victims.<name>.checkpoint=/path/to/file (`python -m advwm.weights list` shows every file and "
            "source), or add weights=random for a smoke run with random victims")


def check_weights(cfg: DictConfig) -> dict[str, tuple[str | None, str]]:
    """Every chosen victim's (checkpoint, "official" | "random"), before any work; all missing files in ONE error."""
    resolved, missing = {}, {}
    for name, entry in (cfg.get("victims") or {}).items():
        try:
            resolved[str(name)] = resolve_weights(str(name), entry)
        except CheckpointNotFoundError:
            missing[str(name)] = entry.get("checkpoint")
    if missing:
        raise CheckpointNotFoundError(missing_weights_message(missing))
    return resolved


def build_victims(cfg: DictConfig) -> list[ResolvedVictim]:
    """Every chosen victim, with its checkpoint resolved and loaded (fails before any other work)."""
    chosen = cfg.get("victims")
    if not chosen:
        raise ConfigError("no victim chosen: add e.g. +victims=[stargan,attgan] (see README, 'Victims')")
    resolved = []
    weights_of = check_weights(cfg)
    for name, entry in chosen.items():
        checkpoint, weights = weights_of[str(name)]
        try:
            victim = build_victim(str(name), checkpoint=checkpoint, arch=_plain(entry.get("arch")) or {},
                                  image_size=int(cfg.image_size), **(_plain(entry.get("options")) or {}))
        except (ValueError, TypeError) as error:  # a wrong arch/option/size: say which victim's config
            raise ConfigError(f"victims.{name}: {error}") from error
        if entry.get("compile", False):
            # experiments/bench.py --compile on the 2-core CPU: no gain (StarGAN 1.15 vs 1.09 s, AttGAN 0.30 vs
            # 0.30 s per image-condition, after 12-55 s of compiling); an option for accelerators, unmeasured here
            victim.network = torch.compile(victim.network)
        resolved.append(ResolvedVictim(victim, weights, checkpoint))
        log.info("victim %s: %s weights%s, %d conditions", name, weights,
                 f" from {checkpoint}" if checkpoint else "", len(victim.condition_names))
    return resolved


def build_module(cfg: DictConfig, victims: list[Victim]) -> WatermarkAttack:
    aggregator_cfg = dict(_plain(cfg.aggregator))
    aggregator = make_aggregator(aggregator_cfg.pop("name"), **aggregator_cfg)
    domains_cfg = dict(_plain(cfg.domains))
    domains = make_domains(domains_cfg.pop("name"), **domains_cfg)
    regularizer_cfg = dict(_plain(cfg.regularizer))
    regularizer = make_regularizer(regularizer_cfg.pop("name"), **regularizer_cfg)
    attack_cfg = _plain(cfg.attack)
    if attack_cfg["name"] == "apgd" and aggregator_cfg.get("variant") is not None:
        raise ConfigError("APGD cannot drive CMUA fusion: choose aggregator=uniform|mgda|iterative|single")
    settings = AttackSettings(name=attack_cfg["name"], step_size=float(attack_cfg["step_size"]),
                              options=dict(attack_cfg.get("options") or {}),
                              diversity_prob=float(attack_cfg.get("diversity_prob", 0.0)),
                              diversity_resize_rate=float(attack_cfg.get("diversity_resize_rate", 1.1)))
    try:
        return WatermarkAttack(
            victims,
            aggregator=aggregator,
            domains=domains,
            regularizer=regularizer,
            attack=settings,
            scope=str(cfg.scope.name),
            eps=float(cfg.eps),
            iterations=int(cfg.attack.iterations),
            image_size=int(cfg.image_size),
            batch_size=int(cfg.data.batch_size),
            step_scales={str(n): float(e.get("step_scale", 1.0)) for n, e in cfg.victims.items()},
            micro_batches={str(n): e.get("micro_batch") for n, e in cfg.victims.items()},
            batch_reduction=str(cfg.scope.get("batch_reduction", "sign_mean")),
            fused_step=str(cfg.scope.get("fused_step", "mean")),
            seed=int(cfg.seed),
        )
    except ValueError as error:  # a contradictory attack config: one line naming what to change
        raise ConfigError(str(error)) from error


def build_datamodule(cfg: DictConfig, repeats: int):
    return hydra.utils.instantiate(cfg.data, repeats=repeats, _convert_="all")


def metrics_table(metrics: dict[str, Any], victims: list[str]) -> str:
    """The terminal summary: one row per victim (pooled over its conditions) and the mean.

    Per-condition values are in metrics.json (`sr_mask/<victim>/<condition>`).
    """
    header = f"{'victim':<12} {'SR_mask':>8} {'L2_mask':>9} {'empty':>6} {'judged':>7}  weights"
    lines = [header, "-" * len(header)]
    for name in victims:
        lines.append(f"{name:<12} {metrics.get(f'sr_mask/{name}', float('nan')):>8.3f} "
                     f"{metrics.get(f'l2_mask/{name}', float('nan')):>9.4f} {metrics.get(f'empty_mask/{name}', 0):>6} "
                     f"{metrics.get(f'judged/{name}', 0):>7}  {metrics.get(f'weights/{name}', '?')}")
    lines.append(f"{'mean':<12} {metrics.get('sr_mask/mean', float('nan')):>8.3f}")
    lines.append(f"eps {metrics['eps']}, {metrics['steps']} steps, {metrics['seconds']} s, "
                 f"{metrics['data/craft_images']} crafting / {metrics['data/held_out_images']} judged images"
                 + (f", {metrics['data/skipped_images']} unreadable skipped" if metrics["data/skipped_images"] else ""))
    return "\n".join(lines)


def craft(cfg: DictConfig) -> dict[str, Any]:
    """Craft, judge and save one watermark; returns the flat metrics (also written to metrics.json).

    The config is checked before any work (`advwm.validation`), and the run holds its folder's lock
    (`advwm.run_folder`) from its first write to its end: a second run in the same folder stops at once.
    """
    check_config(cfg)
    with run_folder.exclusive(Path(cfg.paths.output_dir)):
        return _craft(cfg)


def _craft(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    io.write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(int(cfg.seed), workers=True)

    if str(cfg.scope.name) == "per_image" and str(cfg.trainer.get("strategy", "auto")).startswith("ddp"):
        raise ConfigError("per-image perturbations are not crafted under DDP: run one device per run and "
                          "parallelise over runs (multirun) instead")
    resolved = build_victims(cfg)
    check_image_size([r.victim for r in resolved], int(cfg.image_size))  # before any face is read
    random_names = [r.victim.name for r in resolved if r.weights == "random"]
    random_note = RANDOM_WEIGHTS_NOTE.format(names=", ".join(random_names)) if random_names else None
    if random_note:
        log.warning(random_note)
    module = build_module(cfg, [r.victim for r in resolved])
    repeats = 1 if module.reference_fusion else int(cfg.attack.iterations)
    datamodule = build_datamodule(cfg, repeats)

    evaluation = EvaluationCallback(settings_from(cfg.get("metrics")))
    export = WatermarkExport(output_dir, metadata={  # what watermark.pt says about itself (advwm.watermark_file)
        "eps": float(cfg.eps), "image_size": int(cfg.image_size),
        "victims": {r.victim.name: r.weights for r in resolved}, "config": OmegaConf.to_yaml(cfg, resolve=True)})
    checkpoints = ModelCheckpoint(dirpath=output_dir / "checkpoints", save_last=True, save_top_k=0,
                                  every_n_train_steps=int(cfg.get("checkpoint_every", 50)))
    extras = [WatermarkSnapshots(int(cfg.get("checkpoint_every", 50)))]  # W&B: the watermark at each checkpoint
    extras += [AttackProgressBar()] if cfg.trainer.get("enable_progress_bar", True) else []  # iteration i/N, s/it
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[evaluation, export, checkpoints, *extras],
                                                  logger=build_loggers(cfg))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    metrics: dict[str, Any] = evaluation.results(module, trainer)  # collective under DDP: every process calls it
    if not trainer.is_global_zero:
        return metrics
    steps = int(module.iteration)
    metrics.update({
        "eps": float(cfg.eps),
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 2),
        "data/craft_images": len(datamodule.craft_items),
        "data/held_out_images": len(datamodule.eval_items),
        "data/skipped_images": len(datamodule.skipped),
    })
    for r in resolved:
        metrics[f"weights/{r.victim.name}"] = r.weights
    if random_note:
        metrics["note"] = random_note
    io.save_json(output_dir / "metrics.json", metrics)  # before the grids: a full disk then keeps the numbers
    grids = export.save_grids(evaluation.samples, {r.victim.name: list(r.victim.condition_names) for r in resolved})
    log_results(trainer.loggers, metrics, steps, grids, output_dir / "watermark.png")
    wandb_lines = finish(trainer.loggers)  # where each W&B run is, how to upload an offline one

    say("\n" + metrics_table(metrics, [r.victim.name for r in resolved]))
    say(f"\noutputs: {output_dir}  (watermark.pt, watermark.png, metrics.json, images/: {len(grids)} grid(s))")
    for line in wandb_lines:
        say(line)
    if random_note:
        say("NOTE: " + random_note)
    return metrics


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float:
    """The number a sweep optimises (config key `objective`, default sr_mask/mean)."""
    key = str(cfg.get("objective", "sr_mask/mean"))
    if key not in metrics:
        raise ConfigError(f"objective {key!r} is not among the metrics: {sorted(metrics)}")
    return float(metrics[key])

