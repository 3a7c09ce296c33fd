"""The comparison report (the local dashboard) over many runs: `python -m advwm.report <multirun folder>`.

One module per job: `runs` (which folders are runs, what each holds, refused/failed), `labels` (sweeps, and
naming each row by what differs inside its sweep), `tables` (metric columns, number formatting), `ranking`
(each metric's direction, best and ties), `curves` (values logged per iteration), `sweeps` (Optuna history),
`charts` (PNG charts), `text` (escaping user strings per output), `render` (Markdown / self-contained HTML /
console), `page` (which sections, in which order), `cli` (the command line).

Python API: `collect(paths) -> list[Run]`, `build_table(runs, metric) -> (columns, rows)`,
`load_history(storage, study_name)`; `main(argv)` is the command line.

Names are imported on first use (PEP 562), so `python -m advwm.report --help` loads none of the report's
heavier modules (matplotlib, PIL, optuna), and nothing here ever loads torch or Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Chart": "charts", "bar_chart": "charts", "history_chart": "charts",
    "main": "cli",
    "assign_labels": "labels", "collect": "labels", "varying": "labels",
    "methods": "labels", "sweeps_of": "labels", "Sweep": "labels",
    "Report": "page", "build_report": "page", "write_report": "page",
    "Run": "runs", "find_run_dirs": "runs", "flatten": "runs", "load_run": "runs", "run_pictures": "runs",
    "logged_curves": "curves",
    "best_so_far": "sweeps", "load_history": "sweeps", "studies_of": "sweeps",
    "as_number": "tables", "build_table": "tables", "condition_columns": "tables", "fmt_mean_std": "tables",
    "fmt_number": "tables", "mean_std": "tables", "metric_columns": "tables", "metric_families": "tables",
    "victims_of": "tables",
    "direction": "ranking", "mark_column": "ranking",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'advwm.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"advwm.report.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
