"""Method labels: what tells the runs apart, as the name of each row.

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

Labels are given per sweep (`sweeps_of`): the runs of one multirun or search (one folder: Hydra puts a
sweep's jobs in `<sweep>/<n>/`) are named by what differs among them only, so a parent folder holding two
sweeps gives each its own short labels instead of one label over every setting of both.

When nothing varies the label is the run's folder (relative to the runs' common parent); runs with
equal labels get their folder appended. Rows of runs whose victims had random weights
(`weights/<victim> == "random"` in metrics.json) carry a † and a footnote. Missing and NaN values are
shown as "–".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advwm.report.runs import TIMESTAMP, UNSET, Run, find_run_dirs, is_noise_key, load_run
from advwm.report.tables import SeedGroup


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def unresolved(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def varying(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """(Hydra groups whose choice differs between runs, config keys that differ and no such group explains)."""
    configured = [r for r in runs if r.config or r.choices]
    if len(configured) < 2:
        return [], []
    missing = object()

    def differs(values: list[Any]) -> bool:
        seen = {_canon(v) if v is not missing else "<missing>" for v in values if not unresolved(v)}
        return len(seen) > 1

    timestamped = {k for r in configured for k, v in r.config.items() if isinstance(v, str) and TIMESTAMP.search(v)}
    keys = list(dict.fromkeys(k for r in configured for k in r.config))
    keys = [k for k in keys if not is_noise_key(k) and k not in timestamped
            and differs([r.config.get(k, missing) for r in configured])]
    groups = list(dict.fromkeys(g for r in configured for g in r.choices))
    # a run without .hydra/hydra.yaml says nothing about the groups it did not override
    groups = [g for g in groups if differs([r.choices.get(g, missing) for r in configured
                                            if r.all_choices or g in r.choices])]
    prefixes = [g.replace("/", ".") for g in groups]
    keys = [k for k in keys if not any(k == p or k.startswith(p + ".") for p in prefixes)]
    return groups, keys


def fmt_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def short_paths(runs: Sequence[Run]) -> dict[Path, str]:
    if not runs:
        return {}
    paths = [r.path for r in runs]
    common = Path(os.path.commonpath([str(p) for p in paths]))
    if len(paths) == 1:
        common = common.parent
    return {p: (str(p.relative_to(common)) if p != common else p.name) for p in paths}


def _choice(run: Run, group: str) -> str:
    if group in run.choices:
        return fmt_value(run.choices[group])
    if run.all_choices:
        return UNSET
    name = run.config.get(group.replace("/", ".") + ".name")  # no hydra.yaml: the group's `name` when it has one
    return fmt_value(name) if name is not None and not unresolved(name) else "?"


def assign_labels(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """Set every run's label (rule in the module docstring); returns the varying (groups, keys)."""
    groups, keys = varying(runs)
    short = short_paths(runs)
    for run in runs:
        run.parts = {g: _choice(run, g) for g in groups}
        run.parts.update({k: fmt_value(run.config[k]) if k in run.config else UNSET for k in keys})
        run.label = ", ".join(f"{k}={v}" for k, v in run.parts.items()) or short[run.path]
    counts: dict[str, int] = {}
    for run in runs:  # finished runs with equal labels get their folder (failed ones are listed with theirs)
        if not run.failed:
            counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:
        if not run.failed and counts[run.label] > 1 and run.label != short[run.path]:
            run.label = f"{run.label} ({short[run.path]})"
    return groups, keys


@dataclass
class Sweep:
    """The runs of one multirun or search: the run folders directly inside `folder`."""

    folder: Path
    runs: list[Run]
    name: str = ""  # the heading: the folder relative to the sweeps' common parent
    groups: list[str] = field(default_factory=list)  # Hydra groups whose choice differs inside it
    keys: list[str] = field(default_factory=list)  # config keys that differ inside it

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if not r.failed]


def sweeps_of(runs: Sequence[Run]) -> list[Sweep]:
    """The runs grouped by their parent folder (first seen first), labelled within each group, named by the
    folder relative to the groups' common parent (the folder's own name when there is one group)."""
    by_folder: dict[Path, list[Run]] = {}
    for run in runs:
        by_folder.setdefault(run.path.parent, []).append(run)
    folders = list(by_folder)
    common = Path(os.path.commonpath([str(f) for f in folders])) if len(folders) > 1 else None
    sweeps = []
    for folder, members in by_folder.items():
        name = str(folder.relative_to(common)) if common is not None and folder != common else folder.name
        groups, keys = assign_labels(members)
        sweeps.append(Sweep(folder, members, name or str(folder), groups, keys))
    return sweeps


def collect(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """Every run below `paths` (failed ones included, `run.failed`), labelled within its sweep (its parent
    folder), in natural path order."""
    runs = [load_run(folder) for folder in find_run_dirs(paths)]
    sweeps_of(runs)
    return runs



SEED_KEY = "seed"


def methods(runs: Sequence[Run]) -> list[SeedGroup]:
    """The finished runs as the rows of a metric table: runs that differ only in `seed` form one method (its
    label: what else differs; "all runs" when only the seed does), every other run is a method of its own."""
    ok = [r for r in runs if not r.failed]
    if not any(SEED_KEY in r.parts for r in ok):
        return [SeedGroup(r.label, [r], dict(r.parts)) for r in ok]
    groups: dict[str, SeedGroup] = {}
    for run in ok:
        parts = {k: v for k, v in run.parts.items() if k != SEED_KEY}
        rest = ", ".join(f"{k}={v}" for k, v in parts.items()) or "all runs"
        groups.setdefault(rest, SeedGroup(rest, [], parts)).runs.append(run)
    return list(groups.values())
