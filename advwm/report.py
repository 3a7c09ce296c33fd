"""The comparison report: one table (and charts) over many runs, plus an Optuna sweep's history.

    python -m advwm.report outputs/craft/multiruns/2026-01-01_12-00-00
    python -m advwm.report outputs/ablation/multiruns/* --metrics sr_mask,l2_mask --out reports/ablation
    python -m advwm.report outputs/cmua_search/multiruns/<time> --study sqlite:///outputs/optuna/cmua_stargan.db \
        --study-name cmua_stargan

Arguments are run folders, multirun folders or any parent of them: every folder below them holding a
`metrics.json` (or a Hydra `.hydra/config.yaml`, i.e. a run that started) is a run. A run without a
readable `metrics.json` is listed as failed, with the last ERROR line of its log when there is one.
The report is written to `--out` (default: the first argument): `report.md` (charts beside it in
`report_files/`) and `report.html`, self-contained (charts inlined as base64 PNG, no external CSS/JS).

How a row (a "method") is named, from the runs' `config.yaml` and `.hydra/`:

1. Every run's resolved config is flattened to dotted keys (lists are values). Noise keys are dropped:
   `paths.*`, `hydra.*`, any key whose last part names a folder (`output_dir`, `save_dir`,
   `default_root_dir`, `dirpath`, `log_dir`) and any key whose value is a timestamp. Keys equal in
   every run are dropped too (so `seed` only shows when it varies).
2. The Hydra choices of each run (`hydra.runtime.choices` in `.hydra/hydra.yaml`, plus group-like
   overrides from `.hydra/overrides.yaml` such as `+victims=[stargan,attgan]`) that differ between
   runs name the method first, as `group=choice` (`aggregator=mgda`); the varying keys under such a
   group (`aggregator.name`, `aggregator.alpha`, ...) are then not repeated.
3. The remaining varying keys follow as `key=value` (`attack.iterations=10`,
   `victims.stargan.step_scale=3.2`).

When nothing varies the label is the run's folder (relative to the runs' common parent); runs with
equal labels get their folder appended. Rows of runs whose victims had random weights
(`weights/<victim> == "random"` in metrics.json) carry a † and a footnote. Missing and NaN values are
shown as "–".

Python API: `collect(paths) -> list[Run]`, `build_table(runs, metric) -> (columns, rows)`,
`load_history(storage, study_name)`; `main(argv)` is the command line.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

NOISE_ROOTS = ("paths", "hydra")
NOISE_LEAVES = ("output_dir", "save_dir", "default_root_dir", "dirpath", "log_dir")
SKIP_DIRS = ("wandb", "checkpoints", "csv", "images", "report_files", "__pycache__")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[_T ]\d{2}[-:]\d{2}")
RANDOM_MARK = "†"
DASH = "–"
UNSET = "unset"


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
    error: str | None = None  # why the run counts as failed (no or unreadable metrics.json)

    @property
    def failed(self) -> bool:
        return self.error is not None

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


def _natural(path: Path) -> list:
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
    return sorted(found, key=_natural)


def _read_yaml(file: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text()) if file.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _last_error(folder: Path) -> str | None:
    """The last ERROR line of the run's log(s), for the failed-runs list."""
    last = None
    for log_file in sorted(folder.glob("*.log")):
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if "ERROR" in line or line.startswith(("error:", "Error")):
                last = line.strip()
    return last[:300] if last else None


def _read_metrics(folder: Path) -> tuple[dict[str, Any], str | None]:
    file = folder / "metrics.json"
    if not file.is_file():
        reason = "no metrics.json (failed or unfinished)"
    else:
        try:
            metrics = json.loads(file.read_text())
        except (OSError, ValueError) as error:
            reason = f"metrics.json unreadable ({type(error).__name__}: {error})"
        else:
            if isinstance(metrics, dict):
                return metrics, None
            reason = "metrics.json is not a JSON object"
    detail = _last_error(folder)
    return {}, reason + (f"; log: {detail}" if detail else "")


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


def _is_noise_key(key: str) -> bool:
    parts = re.split(r"[./]", key)
    return parts[0] in NOISE_ROOTS or parts[-1] in NOISE_LEAVES


def load_run(folder: Path) -> Run:
    """One run folder as a Run (label not set yet: labels depend on all runs, see `collect`)."""
    folder = Path(folder)
    config = _read_yaml(folder / "config.yaml")
    if not isinstance(config, dict):
        config = _read_yaml(folder / ".hydra" / "config.yaml")
    flat = flatten(config) if isinstance(config, dict) else {}
    overrides = _read_yaml(folder / ".hydra" / "overrides.yaml")
    overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    hydra_cfg = _read_yaml(folder / ".hydra" / "hydra.yaml")
    choices: dict[str, Any] = {}
    try:
        runtime_choices = hydra_cfg["hydra"]["runtime"]["choices"]
    except (TypeError, KeyError):
        runtime_choices = None
    all_choices = isinstance(runtime_choices, dict)
    if isinstance(runtime_choices, dict):
        choices.update({str(g): c for g, c in runtime_choices.items() if not _is_noise_key(str(g))})
    for key, value in _override_pairs(overrides):
        # a group override (e.g. `+victims=[stargan,attgan]`, `aggregator=mgda`): not a leaf of the config
        if key not in flat and not _is_noise_key(key):
            choices[key] = value
    metrics, error = _read_metrics(folder)
    return Run(path=folder, config=flat, metrics=metrics, overrides=overrides, choices=choices,
               all_choices=all_choices, error=error)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _unresolved(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def varying(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """(Hydra groups whose choice differs between runs, config keys that differ and no such group explains)."""
    configured = [r for r in runs if r.config or r.choices]
    if len(configured) < 2:
        return [], []
    missing = object()

    def differs(values: list[Any]) -> bool:
        seen = {_canon(v) if v is not missing else "<missing>" for v in values if not _unresolved(v)}
        return len(seen) > 1

    timestamped = {k for r in configured for k, v in r.config.items() if isinstance(v, str) and TIMESTAMP.search(v)}
    keys = list(dict.fromkeys(k for r in configured for k in r.config))
    keys = [k for k in keys if not _is_noise_key(k) and k not in timestamped
            and differs([r.config.get(k, missing) for r in configured])]
    groups = list(dict.fromkeys(g for r in configured for g in r.choices))
    # a run without .hydra/hydra.yaml says nothing about the groups it did not override
    groups = [g for g in groups if differs([r.choices.get(g, missing) for r in configured
                                            if r.all_choices or g in r.choices])]
    prefixes = [g.replace("/", ".") for g in groups]
    keys = [k for k in keys if not any(k == p or k.startswith(p + ".") for p in prefixes)]
    return groups, keys


def _fmt_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _short_paths(runs: Sequence[Run]) -> dict[Path, str]:
    if not runs:
        return {}
    paths = [r.path for r in runs]
    common = Path(os.path.commonpath([str(p) for p in paths]))
    if len(paths) == 1:
        common = common.parent
    return {p: (str(p.relative_to(common)) if p != common else p.name) for p in paths}


def _choice(run: Run, group: str) -> str:
    if group in run.choices:
        return _fmt_value(run.choices[group])
    if run.all_choices:
        return UNSET
    name = run.config.get(group.replace("/", ".") + ".name")  # no hydra.yaml: the group's `name` when it has one
    return _fmt_value(name) if name is not None and not _unresolved(name) else "?"


def assign_labels(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """Set every run's label (rule in the module docstring); returns the varying (groups, keys)."""
    groups, keys = varying(runs)
    short = _short_paths(runs)
    for run in runs:
        parts = [f"{g}={_choice(run, g)}" for g in groups]
        parts += [f"{k}={_fmt_value(run.config[k]) if k in run.config else UNSET}" for k in keys]
        run.label = ", ".join(parts) or short[run.path]
    counts: dict[str, int] = {}
    for run in runs:  # finished runs with equal labels get their folder (failed ones are listed with theirs)
        if not run.failed:
            counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:
        if not run.failed and counts[run.label] > 1 and run.label != short[run.path]:
            run.label = f"{run.label} ({short[run.path]})"
    return groups, keys


def collect(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """Every run below `paths` (failed ones included, `run.failed`), labelled, in natural path order."""
    runs = [load_run(folder) for folder in find_run_dirs(paths)]
    assign_labels(runs)
    return runs


# ---------------------------------------------------------------------------------------------- tables


def as_number(value: Any) -> float:
    """A metric value as a float; NaN for anything missing or not numeric."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt_number(value: Any, digits: int = 3) -> str:
    number = as_number(value)
    if math.isnan(number):
        return DASH
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return f"{number:.{digits}f}"


def victims_of(runs: Sequence[Run]) -> list[str]:
    """The victims named in the runs' metrics (`weights/<victim>`, `sr_mask/<victim>`, ...), first seen first."""
    names: dict[str, None] = {}
    for run in runs:
        for key in run.metrics:
            parts = key.split("/")
            if len(parts) == 2 and parts[0] in ("weights", "sr_mask", "l2_mask", "judged") and parts[1] != "mean":
                names[parts[1]] = None
    return list(names)


def metric_columns(runs: Sequence[Run], metric: str) -> list[str]:
    """The metrics.json keys of one metric's columns: `<metric>/<victim>` for each victim, then `<metric>/mean`.

    A metric without a per-victim breakdown (`psnr`, `eps`) is one column; one whose breakdown is not by
    victim lists its sub-keys. The mean column is `<metric>/mean` when a run has it, else computed.
    """
    ok = [r for r in runs if not r.failed]
    keys = [f"{metric}/{v}" for v in victims_of(ok) if any(f"{metric}/{v}" in r.metrics for r in ok)]
    if not keys:
        subkeys = dict.fromkeys(k for r in ok for k in r.metrics
                                if k.startswith(metric + "/") and "/" not in k[len(metric) + 1:])
        keys = [k for k in subkeys if k != f"{metric}/mean"]
    has_mean = any(f"{metric}/mean" in r.metrics for r in ok)
    if keys and (has_mean or len(keys) > 1):
        keys.append(f"{metric}/mean")
    elif not keys and any(metric in r.metrics for r in ok):
        keys = [metric]
    return keys


def _value(run: Run, key: str, columns: Sequence[str]) -> float:
    if key in run.metrics or not key.endswith("/mean"):
        return as_number(run.metrics.get(key))
    prefix = key[: -len("mean")]
    parts = [as_number(run.metrics.get(c)) for c in columns if c.startswith(prefix) and c != key]
    finite = [p for p in parts if not math.isnan(p)]
    return sum(finite) / len(finite) if finite else math.nan


def _rows(runs: Sequence[Run], keys: Sequence[str]) -> list[tuple[Run, list[float]]]:
    return [(run, [_value(run, key, keys) for key in keys]) for run in runs if not run.failed]


def build_table(runs: Sequence[Run], metric: str | Sequence[str] = "sr_mask") -> tuple[list[str], list[list[Any]]]:
    """The paper table: columns `["method", "<metric>/<victim>", ..., "<metric>/mean"]` (metrics.json keys),
    one row `[label, value, ...]` per successful run, values as floats (NaN when missing)."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    keys = [key for m in metrics for key in metric_columns(runs, m)]
    return ["method", *keys], [[run.label, *values] for run, values in _rows(runs, keys)]


def condition_columns(runs: Sequence[Run], metric: str, victim: str) -> list[str]:
    prefix = f"{metric}/{victim}/"
    return list(dict.fromkeys(k for r in runs if not r.failed for k in r.metrics
                              if k.startswith(prefix) and "/" not in k[len(prefix):]))


# ---------------------------------------------------------------------------------------------- sweeps


def _mask_password(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _sqlite_file(url: str) -> Path | None:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///"):])
    return None


def load_history(storage: str, study_name: str | None = None) -> dict[str, Any]:
    """An Optuna study's trials: {name, storage, direction, trials: [{number, state, value, params}], best, error}."""
    result: dict[str, Any] = {"name": study_name, "storage": _mask_password(storage), "trials": [], "best": None,
                              "direction": None, "error": None}
    file = _sqlite_file(storage)
    if file is not None and not file.is_file():  # loading would create an empty database
        result["error"] = f"no study database at {file}"
        return result
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if study_name is None:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage=storage)]
            if len(names) != 1:
                result["error"] = f"--study-name needed: the storage holds {len(names)} studies {names}"
                return result
            study_name = result["name"] = names[0]
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as error:  # noqa: BLE001  (any storage or driver error: the report goes on without the sweep)
        result["error"] = f"cannot load study {study_name!r}: {type(error).__name__}: {error}"
        return result
    directions = [d.name.lower() for d in study.directions]
    result["direction"] = directions[0]
    if len(directions) > 1:
        result["error"] = f"multi-objective study ({', '.join(directions)}): the history shows objective 0"
    for trial in study.trials:
        value = trial.values[0] if trial.values else None
        result["trials"].append({"number": trial.number, "state": trial.state.name, "value": value,
                                 "params": dict(trial.params)})
    done = [t for t in result["trials"] if t["state"] == "COMPLETE" and not math.isnan(as_number(t["value"]))]
    if done:
        pick = max if result["direction"] == "maximize" else min
        result["best"] = pick(done, key=lambda t: t["value"])
    return result


def best_so_far(values: Sequence[float], direction: str) -> list[float]:
    out, best = [], None
    for value in values:
        if best is None or (value > best if direction == "maximize" else value < best):
            best = value
        out.append(best)
    return out


def studies_of(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """(storage, study name) of every sweep the runs' configs name (`hparams_search_storage`, `study_name`)."""
    found: dict[tuple[str, str], None] = {}
    for run in runs:
        storage, name = run.config.get("hparams_search_storage"), run.config.get("study_name")
        if isinstance(storage, str) and isinstance(name, str) and not _unresolved(storage + name):
            found[(storage, name)] = None
    return list(found)


def sweep_summaries(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, dict]]:
    """The sweeper's own `optimization_results.yaml` files at or below the paths."""
    found = []
    for raw in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for file in sorted(path.rglob("optimization_results.yaml"), key=_natural):
                content = _read_yaml(file)
                if isinstance(content, dict):
                    found.append((file, content))
    return found


# ---------------------------------------------------------------------------------------------- charts


@dataclass
class Chart:
    name: str  # file name in report_files/
    title: str
    png: bytes


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def bar_chart(metric_key: str, labels: Sequence[str], values: Sequence[float], random_rows: Sequence[bool],
              digits: int = 3) -> Chart:
    """Horizontal bars, one per method; random-weight runs grey."""
    figure = _figure(7.0, 1.2 + 0.38 * max(len(labels), 1))
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(labels)))
    heights = [0.0 if math.isnan(v) else v for v in values]
    colours = ["#9e9e9e" if r else "#3b75af" for r in random_rows]
    axes.barh(positions, heights, color=colours)
    for y, value in zip(positions, values, strict=True):
        axes.text(0 if math.isnan(value) else value, y, " " + fmt_number(value, digits), va="center", fontsize=8)
    axes.set_yticks(positions)
    axes.set_yticklabels([label if len(label) <= 60 else label[:57] + "..." for label in labels], fontsize=8)
    axes.invert_yaxis()
    finite = [v for v in values if not math.isnan(v) and not math.isinf(v)]
    top = max(finite, default=1.0)
    if finite and min(finite) >= 0:
        axes.set_xlim(0, (top or 1.0) * 1.15)
    axes.set_xlabel(metric_key)
    axes.set_title(metric_key + ("   (grey: random weights)" if any(random_rows) else ""), fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    return Chart(f"bar_{_slug(metric_key)}.png", metric_key, _png(figure))


def history_chart(history: dict[str, Any]) -> Chart | None:
    """Objective per trial (dots) and the best so far (line) against the trial number."""
    done = [t for t in history["trials"] if t["state"] == "COMPLETE" and not math.isnan(as_number(t["value"]))]
    if not done:
        return None
    from matplotlib.ticker import MaxNLocator

    numbers = [t["number"] for t in done]
    values = [float(t["value"]) for t in done]
    figure = _figure(7.0, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(numbers, values, "o", color="#3b75af", label="objective")
    axes.plot(numbers, best_so_far(values, history["direction"] or "maximize"), "-", drawstyle="steps-post",
              color="#d1495b", label=f"best so far ({history['direction']})")
    axes.set_xlabel("trial")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("objective")
    axes.set_title(f"study {history['name']}: {len(done)} complete trials", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return Chart(f"sweep_{_slug(str(history['name']))}.png", f"sweep history: {history['name']}", _png(figure))


# ---------------------------------------------------------------------------------------------- rendering


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]  # cells already formatted; the first is the method
    numeric: bool = True  # right-align all but the first column


@dataclass
class Section:
    title: str
    level: int = 2
    paragraphs: list[str] = field(default_factory=list)  # plain text (escaped when rendered)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown after the tables
    charts: list[Chart] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    align = ["---"] + [("---:" if table.numeric else "---")] * (len(table.headers) - 1)
    lines = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = [f"<td class='method'>{html.escape(row[0])}</td>"]
        cells += [f"<td class='{'num' if table.numeric else 'text'}'>{html.escape(c)}</td>" for c in row[1:]]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.method { white-space: nowrap; } tr:nth-child(even) td { background: #fafafa; }
p.note { font-size: .85em; color: #555; } code { background: #f4f4f4; padding: 0 .2em; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 560px; } figcaption { font-size: .8em; color: #555; }
"""


def render_markdown(title: str, sections: Sequence[Section], files_dir: str) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += ["#" * section.level + " " + section.title, ""]
        for paragraph in section.paragraphs:
            out += [paragraph, ""]
        for table in section.tables:
            out += [_md_table(table), ""]
        for note in section.notes:
            out += [note, ""]
        for chart in section.charts:
            out += [f"![{chart.title}]({files_dir}/{chart.name})", ""]
    return "\n".join(out).rstrip() + "\n"


def render_html(title: str, sections: Sequence[Section]) -> str:
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
           f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        level = min(section.level, 6)
        out.append(f"<h{level}>{html.escape(section.title)}</h{level}>")
        out += [f"<p>{_inline_code(paragraph)}</p>" for paragraph in section.paragraphs]
        out += [_html_table(table) for table in section.tables]
        out += [f"<p class='note'>{_inline_code(note)}</p>" for note in section.notes]
        for chart in section.charts:
            data = base64.b64encode(chart.png).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(chart.title)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(chart.title)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _inline_code(text: str) -> str:
    """Escape, then turn Markdown `code` spans into <code> (the only Markdown the paragraphs use)."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))


# ---------------------------------------------------------------------------------------------- the report


@dataclass
class Report:
    title: str
    sections: list[Section]
    runs: list[Run]


def _random_note(runs: Sequence[Run]) -> str | None:
    names = list(dict.fromkeys(v for r in runs if not r.failed for v in r.random_victims))
    if not names:
        return None
    return (f"{RANDOM_MARK} randomly initialised victims ({', '.join(names)}): these numbers show the machinery, "
            "not protection against the real models.")


def _display_label(run: Run) -> str:
    return f"{run.label} {RANDOM_MARK}" if run.random_victims else run.label


def _metric_sections(runs: Sequence[Run], metric: str, digits: int, conditions: bool) -> list[Section]:
    """The metric's table (victims and mean), its bar charts, then one per-condition table per victim."""
    section = Section(metric)
    keys = metric_columns(runs, metric)
    if not keys:
        section.paragraphs.append(f"No run has `{metric}` in its metrics.json.")
        return [section]
    rows = _rows(runs, keys)
    headers = ["method"] + [k[len(metric) + 1:] if k.startswith(metric + "/") else k for k in keys]
    section.tables.append(Table(headers, [[_display_label(run), *(fmt_number(v, digits) for v in values)]
                                          for run, values in rows]))
    if any(k.endswith("/mean") and not any(k in r.metrics for r, _ in rows) for k in keys):
        section.notes.append("mean: the mean over the victim columns (not in metrics.json).")
    note = _random_note([r for r, _ in rows])
    if note:
        section.notes.append(note)
    for index, key in enumerate(keys):
        values = [v[index] for _, v in rows]
        if any(not math.isnan(v) for v in values):
            section.charts.append(bar_chart(key, [r.label for r, _ in rows], values,
                                            [bool(r.random_victims) for r, _ in rows], digits))
    sections = [section]
    for victim in victims_of(runs) if conditions else []:
        conds = condition_columns(runs, metric, victim)
        if conds:
            pooled = f"{metric}/{victim}"
            table = Table(["method", *(c.rsplit("/", 1)[1] for c in conds), "pooled"],
                          [[_display_label(run), *(fmt_number(run.metrics.get(c), digits) for c in conds),
                            fmt_number(run.metrics.get(pooled), digits)] for run, _ in rows])
            sections.append(Section(f"{metric}: {victim} per condition", level=3, tables=[table]))
    return sections


def _sweep_sections(runs: Sequence[Run], paths: Sequence[str], study: str | None, study_name: str | None,
                    digits: int) -> list[Section]:
    targets = [(study, study_name)] if study else studies_of(runs)
    sections = []
    for storage, name in targets:
        history = load_history(storage, name)
        section = Section(f"Sweep history: {history['name'] or '?'}")
        section.paragraphs.append(f"Study `{history['name']}` in `{history['storage']}`"
                                  + (f", direction {history['direction']}" if history["direction"] else "") + ".")
        if history["error"]:
            section.paragraphs.append(f"Note: {history['error']}")
        states: dict[str, int] = {}
        for trial in history["trials"]:
            states[trial["state"]] = states.get(trial["state"], 0) + 1
        if history["trials"]:
            section.paragraphs.append(f"{len(history['trials'])} trials: "
                                      + ", ".join(f"{n} {s.lower()}" for s, n in states.items()) + ".")
        best = history["best"]
        if best is not None:
            section.paragraphs.append(f"Best value: {fmt_number(best['value'], digits)} "
                                      f"(trial {best['number']}, raw {best['value']!r}).")
            section.tables.append(Table(["best param", "value"],
                                        [[k, _fmt_value(v)] for k, v in best["params"].items()], numeric=False))
        chart = history_chart(history)
        if chart is not None:
            section.charts.append(chart)
        if history["trials"]:
            param_names = list(dict.fromkeys(p for t in history["trials"] for p in t["params"]))
            table = Table(["trial", "state", "objective", *param_names],
                          [[str(t["number"]), t["state"].lower(), fmt_number(t["value"], digits),
                            *(_fmt_value(t["params"][p]) if p in t["params"] else DASH for p in param_names)]
                           for t in history["trials"][:500]])
            sections.append(section)
            sections.append(Section(f"Trials of {history['name']}", level=3, tables=[table]))
            continue
        sections.append(section)
    summaries = sweep_summaries(paths)
    if summaries:
        section = Section("Sweeper summaries (optimization_results.yaml)")
        if not targets:
            section.paragraphs.append("The sweeper's summary holds only the best point; for the history pass "
                                      "`--study URL --study-name NAME` (or keep `hparams_search_storage` and "
                                      "`study_name` in the runs' config).")
        for file, content in summaries:
            params = content.get("best_params") or {}
            section.paragraphs.append(f"`{file}`: best value {fmt_number(content.get('best_value'), digits)}"
                                      + (", best params " + ", ".join(f"{k}={_fmt_value(v)}" for k, v in params.items())
                                         if isinstance(params, dict) and params else ""))
        sections.append(section)
    return sections


def build_report(paths: Sequence[str], metrics: Sequence[str] = ("sr_mask",), study: str | None = None,
                 study_name: str | None = None, digits: int = 3, conditions: bool = True,
                 title: str | None = None) -> Report:
    runs = collect(paths) if paths else []
    groups, keys = varying(runs)
    ok = [r for r in runs if not r.failed]
    failed = [r for r in runs if r.failed]
    sections: list[Section] = []

    overview = Section("Overview")
    overview.paragraphs.append(f"{len(runs)} runs ({len(ok)} finished, {len(failed)} failed) under "
                               + ", ".join(f"`{p}`" for p in paths) + f"; generated {datetime.now():%Y-%m-%d %H:%M}."
                               if paths else f"No run folders given; generated {datetime.now():%Y-%m-%d %H:%M}.")
    varying_text = [f"`{g}` (Hydra choice)" for g in groups] + [f"`{k}`" for k in keys]
    if runs:
        overview.paragraphs.append("Methods differ in: " + (", ".join(varying_text) if varying_text else
                                                            "nothing (rows are named by their folder)") + ".")
    notes = list(dict.fromkeys(str(r.metrics["note"]) for r in ok if r.metrics.get("note")))
    overview.notes += [f"Note from the runs: {n}" for n in notes]
    sections.append(overview)

    for metric in metrics if ok else []:
        sections += _metric_sections(runs, metric, digits, conditions)

    sections += _sweep_sections(runs, paths, study, study_name, digits)

    if runs:
        listing = Section("Runs")
        short = _short_paths(runs)
        listing.tables.append(Table(
            ["method", "folder", "status", "seconds", "steps", "weights"],
            [[_display_label(r), short[r.path], "failed" if r.failed else "ok",
              fmt_number(r.metrics.get("seconds"), 1) if not r.failed else DASH,
              str(r.metrics.get("steps", DASH)), ", ".join(sorted({str(v) for k, v in r.metrics.items()
                                                                   if k.startswith("weights/")})) or DASH]
             for r in runs], numeric=False))
        sections.append(listing)
    if failed:
        failures = Section("Failed runs")
        failures.tables.append(Table(["method", "folder", "reason"],
                                     [[r.label, str(r.path), r.error or ""] for r in failed], numeric=False))
        sections.append(failures)
    return Report(title or "advwm report", sections, runs)


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = out / "report_files"
    charts = [chart for section in report.sections for chart in section.charts]
    if charts:
        files.mkdir(exist_ok=True)
        for chart in charts:
            (files / chart.name).write_bytes(chart.png)
    markdown, page = out / "report.md", out / "report.html"
    markdown.write_text(render_markdown(report.title, report.sections, files.name), encoding="utf-8")
    page.write_text(render_html(report.title, report.sections), encoding="utf-8")
    return markdown, page


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m advwm.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="multirun folders, run folders or parents of them")
    parser.add_argument("--out", help="folder for report.md / report.html (default: the first path)")
    parser.add_argument("--metrics", default="sr_mask",
                        help="comma-separated metrics, one table each (default sr_mask; e.g. sr_mask,l2_mask,fid)")
    parser.add_argument("--study", help="Optuna storage URL (sqlite:///..., postgresql://...) of a sweep")
    parser.add_argument("--study-name", help="the study in --study (optional when it holds only one)")
    parser.add_argument("--digits", type=int, default=3, help="decimals in the tables (default 3)")
    parser.add_argument("--no-conditions", action="store_true", help="leave out the per-condition tables")
    parser.add_argument("--title", help="the report's title")
    args = parser.parse_args(argv)
    if not args.paths and not args.study:
        parser.error("give run / multirun folders, or --study")
    if args.study_name and not args.study:
        parser.error("--study-name needs --study")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        report = build_report(args.paths, metrics, args.study, args.study_name, args.digits,
                              not args.no_conditions, args.title)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.paths and not report.runs:
        print(f"error: no run folder (metrics.json or .hydra/config.yaml) under {', '.join(args.paths)}",
              file=sys.stderr)
        return 2
    out = Path(args.out or (args.paths[0] if args.paths else ".")).expanduser()
    if out.is_file():
        out = out.parent
    markdown, page = write_report(report, out)
    for section in report.sections:
        if section.level == 2 and section.tables and section.title in metrics:
            print(f"{section.title}\n{_md_table(section.tables[0])}\n")
    failed = sum(r.failed for r in report.runs)
    print(f"{len(report.runs)} runs ({failed} failed); report: {markdown}  {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
