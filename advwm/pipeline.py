"""`craft(cfg)`: one run from a composed Hydra config to saved outputs and the sweep objective.

Order matters for failing fast: victims (and their checkpoints) are resolved before any data is read
or any gradient is computed, so a missing or wrong file stops the run in seconds.
"""

from __future__ import annotations

import copy
import logging
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from advwm.attacks.module import WatermarkAttack
from advwm.callbacks import EvaluationCallback, WatermarkExport
from advwm.errors import ConfigError
from advwm.run_files import folder as run_folder
from advwm.run_files import io, signals
from advwm.run_files.loggers import build_loggers, finish, log_results, say, to_log_file
from advwm.run_files.resume import (
    CRAFT_FILES,
    checkpoint_iteration,
    craft_files_hash,
    load_checkpoint,
    resume_signature,
)
from advwm.validation import check_config, check_image_size, missing_weights_message, weight_sources
from advwm.victims import CheckpointNotFoundError, Victim, build_victim
from advwm.victims.execution import apply_execution

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTE = ("victims {names} are RANDOMLY INITIALISED (no official checkpoint): the numbers show "
                       "the machinery, not protection against the real models")


@dataclass
class ResolvedVictim:
    victim: Victim
    weights: str  # "official" or "random"
    checkpoint: str | None


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def check_weights(cfg: DictConfig) -> dict[str, tuple[str | None, str]]:
    """Every chosen victim's (checkpoint, "official" | "random"), before any work; all missing files in ONE error
    (`advwm.validation.weight_sources`: no torch, so `advwm.run` says it before torch loads)."""
    resolved, missing = weight_sources(cfg)
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
        # experiments/bench.py on the 2-core CPU: neither option pays there (README, Speed); on a GPU they are the
        # fast path with trainer.precision=bf16-mixed (experiment=gpu_fast)
        apply_execution(victim, channels_last=bool(entry.get("channels_last", False)),
                        compile=bool(entry.get("compile", False)))
        resolved.append(ResolvedVictim(victim, weights, checkpoint))
        log.info("victim %s: %s weights%s, %d conditions", name, weights,
                 f" from {checkpoint}" if checkpoint else "", len(victim.condition_names))
    return resolved


def instantiate_group(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """The object config group `key` names (its `_target_`); a wrong option is one line naming the group."""
    try:
        return hydra.utils.instantiate(cfg[key], **kwargs)
    except InstantiationException as error:
        message = str(error.__cause__ or error).strip().splitlines()[0]
        if not re.match(r"[\w.]+ ?[:=]", message):  # a message that names its key already (metrics.x: ...) stays
            message = f"{key}: {message}"
        raise ConfigError(message) from error


def build_module(cfg: DictConfig, victims: list[Victim]) -> WatermarkAttack:
    """The attack engine from the config groups (each instantiates its class) and the resolved victims; the scope
    names the engine (scope=amortized: one that trains a generator)."""
    try:
        scope = instantiate_group(cfg, "scope")
        return scope.engine_class()(
            victims,
            aggregator=instantiate_group(cfg, "aggregator"),
            domains=instantiate_group(cfg, "domains"),
            regularizer=instantiate_group(cfg, "regularizer"),
            attack=instantiate_group(cfg, "attack"),
            scope=scope,
            eps=float(cfg.eps),
            image_size=int(cfg.image_size),
            batch_size=int(cfg.data.batch_size),
            step_scales={str(n): float(e.get("step_scale", 1.0)) for n, e in cfg.victims.items()},
            micro_batches={str(n): e.get("micro_batch") for n, e in cfg.victims.items()},
            seed=int(cfg.seed),
            signature=resume_signature(cfg),
            eot=build_eot(cfg),
        )
    except ValueError as error:  # a contradictory attack config: one line naming what to change
        raise ConfigError(str(error)) from error


def build_eot(cfg: DictConfig) -> Any:
    """eot=sharing's object, or None for eot=none (the engine without EOT)."""
    node = cfg.get("eot")
    if node is None:
        return None
    if "_target_" not in node:
        raise ConfigError(f"eot: options {sorted(node)} without eot=sharing: choose eot=sharing to set them")
    return instantiate_group(cfg, "eot")


def build_datamodule(cfg: DictConfig, repeats: int):
    """The faces, each batch repeated `repeats` times (the aggregator says how often)."""
    return instantiate_group(cfg, "data", repeats=repeats, _convert_="all")


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks group, instantiated (its metrics settings checked: a bad option is one line, before any
    victim is loaded), in the order the run needs whatever the config's: the export first (when crafting ends it
    writes watermark.pt and the checkpoint before the evaluation judges), and last the stop at an iteration end
    (`advwm.run_files.signals`: its checkpoint then holds the export's and the evaluation's work of the iteration)."""
    callbacks = [c for c in (instantiate_group(cfg, "callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    first = [c for c in callbacks if isinstance(c, WatermarkExport)]
    return [*first, *[c for c in callbacks if c not in first], signals.IterationEnd()]


def the(callbacks: list[Callback], kind: type) -> Any:
    """The one callback of `kind` (the pipeline reads results from the evaluation and grids from the export)."""
    found = [c for c in callbacks if isinstance(c, kind)]
    if len(found) != 1:
        raise ConfigError(f"callbacks: exactly one {kind.__name__} is needed, found {len(found)}")
    return found[0]


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
    shared = [k.split("/")[1] for k in metrics if k.startswith("robust/") and k.endswith("/sr_mask/mean")]
    if shared:  # metrics.robustness: the mean SR_mask after each sharing transform (robust/... in metrics.json)
        lines.append("after sharing (SR_mask, mean): " + ", ".join(
            f"{t} {metrics[f'robust/{t}/sr_mask/mean']:.3f}" for t in shared))
    lines.append(f"eps {metrics['eps']}, {metrics['steps']} steps, {metrics['seconds']} s, "
                 f"{metrics['data/craft_images']} crafting / {metrics['data/held_out_images']} judged images"
                 + (f", {metrics['data/skipped_images']} unreadable skipped" if metrics["data/skipped_images"] else ""))
    return "\n".join(lines)


def craft(cfg: DictConfig) -> dict[str, Any]:
    """Craft, judge and save one watermark; returns the flat metrics (also written to metrics.json).

    The config is checked before any work (`advwm.validation`), and the run holds its folder's lock
    (`advwm.run_files.folder`) from its first write to its end: a second run in the same folder stops at once, and
    so does a run in a folder holding an earlier run's checkpoint that it does not resume. A signal ends the run
    cleanly in any phase (`advwm.run_files.signals`): the `RunStopped` it raises carries the line saying what is kept.
    """
    cfg = with_requeue_checkpoint(cfg)
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    with run_folder.exclusive(output_dir), signals.handled(), signals.phase("starting"):
        problem = None if run_folder.secondary_process() else run_folder.checkpoint_in_folder_problem(
            output_dir, cfg.get("ckpt_path"))
        if problem:
            raise run_folder.RunFolderError(problem)
        progress = Progress()
        try:
            return _craft(cfg, progress)
        except signals.RunStopped as stopped:
            stopped.line = stopped.line or stop_line(stopped, cfg, progress)
            raise


@dataclass
class Progress:
    """How far the run got (for the line a signal ends it with)."""

    planned: int | None = None  # attack iterations the run crafts
    done: int | None = None


def with_requeue_checkpoint(cfg: DictConfig) -> DictConfig:
    """On SLURM, a requeued job names no ckpt_path: it resumes from its folder's newest checkpoint (Lightning's
    hpc_ckpt_<n>.ckpt written at the requeue signal, or checkpoints/last.ckpt), checked like any other."""
    if cfg.get("ckpt_path") is not None:
        return cfg
    found = run_folder.requeue_checkpoint(cfg.paths.output_dir)
    if found is None:
        return cfg
    say(f"requeued SLURM job: resuming from {found} (iteration {checkpoint_iteration(found)})")
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.ckpt_path = str(found)
    return cfg


def check_craft_files(cfg: DictConfig, signature: dict[str, Any], faces: int) -> None:
    """The resumed checkpoint was crafted on the faces this run crafts on, in the same order (one line if not)."""
    value = cfg.get("ckpt_path")
    if value is None:
        return
    saved = (load_checkpoint(value).get("advwm_signature") or {}).get(CRAFT_FILES)
    if saved != signature[CRAFT_FILES]:
        source = OmegaConf.select(cfg, "data.root", default=None) or OmegaConf.select(cfg, "data._target_")
        raise ConfigError(f"ckpt_path={value}: the checkpoint was crafted on other faces than this run's {faces} "
                          f"(the photos of {source}, their order, crops or labels changed since): resume with the "
                          "same photos, or start a new run")


def _craft(cfg: DictConfig, progress: Progress) -> dict[str, Any]:
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    resolved_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    io.write_text(output_dir / "config.yaml", resolved_yaml)
    pl.seed_everything(int(cfg.seed), workers=True)

    if cfg.get("execution") is not None:
        instantiate_group(cfg, "execution")  # a wrong precision: one line, before any work
    callbacks = build_callbacks(cfg)
    evaluation, export = the(callbacks, EvaluationCallback), the(callbacks, WatermarkExport)
    resolved = build_victims(cfg)
    check_image_size([r.victim for r in resolved], int(cfg.image_size))  # before any face is read
    random_names = [r.victim.name for r in resolved if r.weights == "random"]
    random_note = RANDOM_WEIGHTS_NOTE.format(names=", ".join(random_names)) if random_names else None
    if random_note:  # the console showed it first (the banner) and shows it again with the results
        to_log_file(random_note, logging.WARNING)
    module = build_module(cfg, [r.victim for r in resolved])
    if not module.scope.allows_ddp and str(cfg.trainer.get("strategy", "auto")).startswith("ddp"):
        raise ConfigError(f"scope={module.scope.name} is not crafted under DDP: run one device per run and "
                          "parallelise over runs (multirun) instead")
    datamodule = build_datamodule(cfg, module.aggregator.repeats(module.attack.iterations))
    datamodule.judges_held_out = module.scope.judges_held_out
    datamodule.setup("fit")  # the faces are read now: their list joins the resume signature
    module.signature[CRAFT_FILES] = craft_files_hash(datamodule.craft_items)
    check_craft_files(cfg, module.signature, len(datamodule.craft_items))

    export.metadata = {  # what watermark.pt says about itself (advwm.run_files.watermark_file)
        "eps": float(cfg.eps), "image_size": int(cfg.image_size),
        "victims": {r.victim.name: r.weights for r in resolved}, "config": resolved_yaml}
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg))
    with signals.slurm_requeue(trainer):
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except SIGTERMException:  # Lightning's own SIGTERM stop (its flag is cleared by ours, so not expected)
            raise signals.RunStopped(signal.SIGTERM, signals.current_phase()) from None
        progress.planned = planned_iterations(trainer)
        progress.done = int(module.iteration)
        if not export.final_saved:  # the checkpoint's crafting had ended already: Lightning skipped the loop
            finish_crafted(trainer, module, evaluation, export)
        signals.set_phase("saving the results")
        metrics: dict[str, Any] = evaluation.results(module, trainer)  # collective under DDP: every process calls it
        if not trainer.is_global_zero:
            return metrics
        return _save_results(cfg, metrics, module, datamodule, resolved, trainer, export, evaluation, started,
                             random_note, progress)


def planned_iterations(trainer: pl.Trainer) -> int | None:
    """The attack iterations of the whole run (max_epochs passes; trainer.max_steps cuts them, the plan stays)."""
    batches, epochs = trainer.num_training_batches, trainer.max_epochs
    if not isinstance(batches, int) or epochs is None or epochs < 1:
        return None
    return int(batches) * int(epochs)


def finish_crafted(trainer: pl.Trainer, module: WatermarkAttack, evaluation: EvaluationCallback,
                   export: WatermarkExport) -> None:
    """Resuming a checkpoint whose crafting had ended (a run stopped while judging, or a finished run resumed in a new
    folder): Lightning restored it and skipped the loop; judge and export now, as the loop's end would have. The fit
    is over, so the perturbation goes back to the device the victims and metrics are on."""
    say(f"the checkpoint's crafting had ended ({module.iteration} iterations): judging and saving its watermark")
    module.to(trainer.strategy.root_device)
    export.crafting_ended(trainer, module)
    with signals.phase("judging"):
        evaluation.judge_held_out(trainer, module)


def _save_results(cfg: DictConfig, metrics: dict[str, Any], module: WatermarkAttack, datamodule: Any,
                  resolved: list[ResolvedVictim], trainer: pl.Trainer, export: WatermarkExport,
                  evaluation: EvaluationCallback, started: float, random_note: str | None,
                  progress: Progress) -> dict[str, Any]:
    output_dir = Path(cfg.paths.output_dir)
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
    protection = export.protection_rows()  # per image over photos: protected/protection.csv's rows
    if protection:
        metrics["protection"] = protection
    io.save_json(output_dir / "metrics.json", metrics)  # before the grids: a full disk then keeps the numbers
    grids = export.save_grids(evaluation.samples, {r.victim.name: list(r.victim.condition_names) for r in resolved})
    log_results(trainer.loggers, metrics, steps, grids, output_dir / "watermark.png")
    wandb_lines = finish(trainer.loggers)  # where each W&B run is, how to upload an offline one

    if not metrics.get("images_judged"):
        say(nothing_judged_line(cfg, progress))
    else:
        say("\n" + metrics_table(metrics, [r.victim.name for r in resolved]))
    saved = "generator.pt" if module.scope.saves == "generator" else "watermark.pt, watermark.png"
    say(f"\noutputs: {output_dir}  ({saved}, metrics.json, images/: {len(grids)} grid(s))")
    if protection:
        say(protected_line(protection, export.protected_dir))
    for line in wandb_lines:
        say(line)
    if random_note:
        say("NOTE: " + random_note)
    return metrics


def protected_line(rows: list[dict[str, Any]], folder: Path) -> str:
    """The per-image run's photos: how many protected, which had no face, where they and the table are."""
    faceless = [str(r["photo"]) for r in rows if r.get("status") != "protected"]
    line = (f"protected photos: {folder}  ({len(rows) - len(faceless)} protected at their own size; "
            "protection.csv, index.html)")
    if faceless:
        line += f"; no face, written back unchanged: {', '.join(faceless)}"
    return line


def task_overrides() -> list[str] | None:
    """This run's command-line overrides (None outside a Hydra run, e.g. craft() called from Python)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return [str(o) for o in HydraConfig.get().overrides.task]


def _command(cfg: DictConfig, checkpoint: Path | None, drop: tuple[str, ...] = ()) -> str:
    overrides = task_overrides()
    return signals.resume_command(overrides if overrides is not None else ["<the same overrides>"],
                                  Path(cfg.paths.output_dir), checkpoint, drop)


def nothing_judged_line(cfg: DictConfig, progress: Progress) -> str:
    """A run cut short (trainer.max_steps) before any face was judged: what happened and how to go on."""
    limit = OmegaConf.select(cfg, "trainer.max_steps", default=None)
    checkpoint = Path(cfg.paths.output_dir) / run_folder.LAST_CHECKPOINT
    of = f" of {progress.planned}" if progress.planned else ""
    return (f"stopped after {progress.done}{of} iterations (trainer.max_steps={limit}) before any face was judged: "
            f"nothing judged yet (per image, a batch is judged when its last iteration ends); the watermark so far is "
            f"in checkpoints/last.ckpt; go on with: "
            f"{_command(cfg, checkpoint, drop=('trainer.max_steps',))} (and a larger trainer.max_steps, or none)")


def stop_line(stopped: signals.RunStopped, cfg: DictConfig, progress: Progress) -> str:
    """The one line a signal ends the run with: what stopped it and when, what is kept, the command that goes on."""
    output_dir = Path(cfg.paths.output_dir)
    name = signals.signal_name(stopped.signum)
    checkpoint = output_dir / run_folder.LAST_CHECKPOINT
    if not checkpoint.is_file():
        given = cfg.get("ckpt_path")
        checkpoint = Path(str(given)).expanduser() if given is not None else None
    iteration = checkpoint_iteration(checkpoint) if checkpoint is not None else None
    if iteration is None:
        checkpoint = None
    files = [f for f in ("watermark.pt", "watermark.partial.pt", "generator.pt", "generator.partial.pt", "metrics.json")
             if (output_dir / f).is_file()]
    if checkpoint is not None:
        where = "checkpoints/last.ckpt" if checkpoint.parent == output_dir / "checkpoints" else str(checkpoint)
        files.append(f"{where} (iteration {iteration})")
    when = stopped.phase
    if stopped.phase == "crafting":
        when = ("crafting, at the end of an iteration" if stopped.at_iteration_end
                else "crafting, in the middle of an iteration")
    kept = ", ".join(files) if files else "nothing yet"
    search = search_note()
    if search:
        go_on = search
    elif checkpoint is not None:
        go_on = f"resume with: {_command(cfg, checkpoint)}"
    else:
        every = cfg.get("checkpoint_every")
        go_on = (f"nothing to resume from (the first checkpoint comes after checkpoint_every={every} iterations): "
                 "run the same command again")
    return f"error: stopped by {name} while {when}: kept in {output_dir}: {kept}; {go_on}"


def search_note() -> str | None:
    """For a trial of an Optuna search: how the search goes on (None for any other run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sweeper = str(OmegaConf.select(HydraConfig.get(), "sweeper._target_", default="") or "")
    if "optuna" not in sweeper.lower():
        return None
    study = OmegaConf.select(HydraConfig.get(), "sweeper.study_name", default=None)
    return (f"the search (study {study}) keeps its finished trials and marks this one failed: run the same command "
            "again to continue it")


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float:
    """The number a sweep optimises (config key `objective`, default sr_mask/mean); NaN when the run was cut short
    before any face was judged (the run said so; a sweeper counts the trial as failed)."""
    key = str(cfg.get("objective", "sr_mask/mean"))
    if key not in metrics and metrics.get("images_judged") == 0:
        return float("nan")
    if key not in metrics:
        raise ConfigError(f"objective {key!r} is not among the metrics: {sorted(metrics)}")
    return float(metrics[key])

