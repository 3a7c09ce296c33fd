"""Run discovery: which folders are runs, and what each holds (flat config, Hydra choices, metrics).

A folder holding `metrics.json` or `.hydra/config.yaml` (a run that started) is a run. One without a readable
`metrics.json` is either *refused*: advwm stopped it with its one-line error (`error: ...` in its log: a bad
value, a missing file) before anything was crafted (no checkpoint, no `watermark.partial.pt`), the reason being
that line; or *failed*: anything else (a traceback, a kill, a crash mid-craft, an unreadable `metrics.json`),
the reason naming what is missing and the last ERROR line of its log.

Internal keys never tell runs apart (`is_noise_key`): `paths.*`, `hydra.*`, `callbacks.*` (the evaluation
callback repeats `metrics.*` under `callbacks.evaluation.settings`), `logger.*`, and folder keys anywhere.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NOISE_ROOTS = ("paths", "hydra", "callbacks", "logger")
NOISE_LEAVES = ("output_dir", "save_dir", "default_root_dir", "dirpath", "log_dir")
SKIP_DIRS = ("wandb", "checkpoints", "csv", "images", "report_files", "__pycache__")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[_T ]\d{2}[-:]\d{2}")
UNSET = "unset"
LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - ")  # `[time][logger][LEVEL] - ` of Hydra's job log
ADVWM_ERROR = "error: "  # how advwm's one-line refusals start (advwm.run.stop)


@dataclass
class Run:
    """One run folder: its flat config, its metrics and the label of its row."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, Any] = field(default_factory=dict)
    all_choices: bool = False  # choices come from .hydra/hydra.yaml (a group not in them was not chosen)
    error: str | None = None  # why the run has no metrics (no or unreadable metrics.json): one line
    refused: bool = False  # stopped by advwm's one-line error before anything was crafted
    parts: dict[str, str] = field(default_factory=dict)  # what differs from the other runs: {key: value}

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def status(self) -> str:
        return "refused" if self.refused else "failed" if self.failed else "ok"

    @property
    def random_victims(self) -> list[str]:
        return [key.split("/", 1)[1] for key, value in self.metrics.items()
                if key.startswith("weights/") and value == "random"]


# ---------------------------------------------------------------------------------------------- collecting


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists, scalars and empty dicts are values."""
    if not isinstance(node, dict) or (not node and prefix):
        return {prefix: node} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _is_run_dir(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() or (folder / ".hydra" / "config.yaml").is_file()


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run folder at or below the given paths (a path to a metrics.json counts as its folder)."""
    found: dict[Path, None] = {}
    for raw in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        path = Path(raw).expanduser()
        if path.is_file() and path.name == "metrics.json":
            path = path.parent
        if not path.is_dir():
            raise FileNotFoundError(f"no such folder: {path}")
        for root, dirs, _files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS]
            if _is_run_dir(Path(root)):
                found[Path(root).resolve()] = None
    return sorted(found, key=natural_key)


def read_yaml(file: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text()) if file.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _last_error(folder: Path) -> str | None:
    """The last ERROR line of the run's log(s), without the log's `[time][logger][LEVEL] - ` prefix."""
    last = None
    for log_file in sorted(folder.glob("*.log")):
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if "ERROR" in line or line.startswith(("error:", "Error")):
                last = LOG_PREFIX.sub("", line.strip())
    return last[:300] if last else None


def _crafted_anything(folder: Path) -> bool:
    partial = ("watermark.partial.pt", "generator.partial.pt")  # generator: scope=amortized
    return any((folder / name).is_file() for name in partial) or any((folder / "checkpoints").glob("*.ckpt"))


def _read_metrics(folder: Path) -> tuple[dict[str, Any], str | None, bool]:
    """(metrics, why there are none, refused): see the module docstring."""
    file = folder / "metrics.json"
    detail = None
    if not file.is_file():
        detail = _last_error(folder)
        if detail is not None and detail.startswith(ADVWM_ERROR) and not _crafted_anything(folder):
            return {}, detail[len(ADVWM_ERROR):], True
        reason = "no metrics.json (failed or unfinished)"
    else:
        try:
            metrics = json.loads(file.read_text())
        except (OSError, ValueError) as error:
            reason = f"metrics.json unreadable ({type(error).__name__}: {error})"
        else:
            if isinstance(metrics, dict):
                return metrics, None, False
            reason = "metrics.json is not a JSON object"
        detail = _last_error(folder)
    return {}, reason + (f"; log: {detail}" if detail else ""), False


def _override_pairs(overrides: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            continue
        key, value = item.split("=", 1)
        key = key.lstrip("+~").split("@", 1)[0].strip()
        if key:
            pairs.append((key, value.strip()))
    return pairs


def is_noise_key(key: str) -> bool:
    parts = re.split(r"[./]", key)
    return parts[0] in NOISE_ROOTS or parts[-1] in NOISE_LEAVES


def load_run(folder: Path) -> Run:
    """One run folder as a Run (label not set yet: labels depend on all runs, see `collect`)."""
    folder = Path(folder)
    config = read_yaml(folder / "config.yaml")
    if not isinstance(config, dict):
        config = read_yaml(folder / ".hydra" / "config.yaml")
    flat = flatten(config) if isinstance(config, dict) else {}
    overrides = read_yaml(folder / ".hydra" / "overrides.yaml")
    overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    hydra_cfg = read_yaml(folder / ".hydra" / "hydra.yaml")
    choices: dict[str, Any] = {}
    try:
        runtime_choices = hydra_cfg["hydra"]["runtime"]["choices"]
    except (TypeError, KeyError):
        runtime_choices = None
    all_choices = isinstance(runtime_choices, dict)
    if isinstance(runtime_choices, dict):
        choices.update({str(g): c for g, c in runtime_choices.items() if not is_noise_key(str(g))})
    for key, value in _override_pairs(overrides):
        # a group override (e.g. `+victims=[stargan,attgan]`, `aggregator=mgda`): not a leaf of the config
        if key not in flat and not is_noise_key(key):
            choices[key] = value
    metrics, error, refused = _read_metrics(folder)
    return Run(path=folder, config=flat, metrics=metrics, overrides=overrides, choices=choices,
               all_choices=all_choices, error=error, refused=refused)



def run_pictures(folder: Path) -> tuple[Path | None, dict[str, Path]]:
    """(`watermark.png` or None, {victim: `images/<victim>.png`}) of a run folder."""
    watermark = folder / "watermark.png"
    grids = {p.stem: p for p in sorted((folder / "images").glob("*.png"))} if (folder / "images").is_dir() else {}
    return (watermark if watermark.is_file() else None), grids
