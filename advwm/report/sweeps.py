"""An Optuna sweep's history (trials, best point) and the sweeper's own summaries, for the report."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from advwm.report.labels import unresolved
from advwm.report.runs import Run
from advwm.report.tables import as_number


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
        if isinstance(storage, str) and isinstance(name, str) and not unresolved(storage + name):
            found[(storage, name)] = None
    return list(found)
