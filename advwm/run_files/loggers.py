"""Loggers of a run: a CSV log always (the local report reads it), W&B when configured.

W&B runs offline unless the user is logged in (an API key in the environment or ~/.netrc), so a run
never blocks on the network; `wandb sync <run>/wandb/offline-run-*` uploads such a run later. Runs are
grouped by experiment (`task_name`) and tagged with the chosen victims, scope, attack, aggregator,
cross-domain mode and regulariser, so the W&B dashboard groups ablations like the local report does.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    """True when W&B credentials exist (WANDB_API_KEY or a netrc entry for api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def ensure_wandb_mode() -> str:
    """Set WANDB_MODE=offline unless the user chose a mode or is logged in; returns the mode in force."""
    if "WANDB_MODE" not in os.environ and not wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"
        log.debug("W&B: not logged in, logging offline")
    return os.environ.get("WANDB_MODE", "online")


def group_choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for a config group: Hydra's record of it, else the name of the class it builds."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices[group])
    except (ValueError, KeyError):  # composed outside a Hydra run (tests, the Python API)
        node = cfg.get(group)
        return str(node.get("name") or str(node.get("_target_", "?")).rsplit(".", 1)[-1].lower())


def run_tags(cfg: DictConfig) -> list[str]:
    """The choices that tell ablation runs apart, as W&B tags."""
    victims = ",".join(sorted(cfg.get("victims") or {}))
    return [f"victims={victims}"] + [f"{group}={group_choice(cfg, group)}"
                                     for group in ("scope", "attack", "aggregator", "domains", "regularizer")]


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger without the noise: no "anonymous setting" warning (Lightning always passes
    that deprecated key), no start-up lines and no run-history block of sparklines when the run ends
    (`silent`); advwm prints one line itself: where the run is and how to upload it (`finish`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
        import wandb

        self._wandb_init.setdefault("settings", wandb.Settings(silent=True, console="off"))


def run_group(task_name: str) -> str:
    """The W&B group of a run: `<task>` alone, `<task>/<multirun folder>` for the runs of one multirun (so a
    sweep's trials sit together and compare in one table / parallel-coordinates panel)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        if str(hydra_cfg.mode).endswith("MULTIRUN"):
            return f"{task_name}/{Path(str(hydra_cfg.sweep.dir)).name}"
    except (ImportError, ValueError):  # no Hydra context (composed by hand, e.g. in tests)
        pass
    return str(task_name)


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate `cfg.logger.*`; W&B gets its mode, tags and the resolved config."""
    loggers: list[Logger] = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        if "WandbLogger" in str(node.get("_target_", "")):
            ensure_wandb_mode()
            Path(str(node.save_dir)).mkdir(parents=True, exist_ok=True)
            logger = hydra.utils.instantiate(node, tags=run_tags(cfg))
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        else:
            logger = hydra.utils.instantiate(node)
        loggers.append(logger)
        log.debug("logger %s: %s", name, type(logger).__name__)
    return loggers


def log_results(loggers: list[Logger], metrics: dict[str, Any], step: int, grids: list[Path],
                watermark_png: Path | None) -> None:
    """Final numbers to every logger; the comparison grids and the watermark picture to W&B as a table."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for logger in loggers:
        logger.log_metrics(numbers, step=step)
        if isinstance(logger, WandbLogger):
            import wandb

            rows = [[path.stem, wandb.Image(str(path)), metrics.get(f"sr_mask/{path.stem}")] for path in grids]
            if rows:
                logger.log_table(key="comparison", columns=["victim", "grid", "sr_mask"], data=rows, step=step)
                for path in grids:
                    sr_mask = metrics.get(f"sr_mask/{path.stem}", float("nan"))
                    logger.log_image(key=f"grid/{path.stem}", images=[str(path)], step=step,
                                     caption=[f"{path.stem}: SR_mask {sr_mask:.3f}"])
            if watermark_png is not None and watermark_png.is_file():
                logger.log_image(key="watermark", images=[str(watermark_png)], step=step)
            for key in ("note",):
                if key in metrics:
                    logger.experiment.summary[key] = metrics[key]
        logger.save()


def finish(loggers: list[Logger]) -> list[str]:
    """Close W&B runs explicitly (results are logged after `fit` returns, after Lightning finalised);
    returns one line per W&B run saying where it is (and, offline, how to upload it)."""
    lines = []
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            folder = Path(run.dir).parent if getattr(run, "dir", None) else None
            offline = bool(getattr(getattr(run, "settings", None), "_offline", False)) or \
                os.environ.get("WANDB_MODE") in ("offline", "dryrun")
            run.finish()
            if offline and folder is not None:
                lines.append(f"W&B (offline): {folder}  upload: wandb sync {folder}")
            elif getattr(run, "url", None):
                lines.append(f"W&B: {run.url}")
    return lines


def to_log_file(text: str, level: int = logging.INFO) -> None:
    """Write `text` to the run's log file(s) only (Hydra's file handler), not to the console.

    For what the console already shows in its own form (the results table, a one-line error): the log
    file keeps it too, once, without a second copy on screen."""
    record = log.makeRecord(log.name, level, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def say(text: str) -> None:
    """Print `text` for the person watching and keep it in the run's log file (results, time, output folder)."""
    print(text, flush=True)
    to_log_file(text)
