"""The end of a multirun: one table over its runs, the multirun folder and the command for the full report.

A Hydra callback (`hydra.callbacks.multirun_summary` in conf/hydra/default.yaml): Hydra calls
`on_multirun_end` once, in the launching process, after every job. The rows are named as the report
names them (what differs between the runs), so the table reads like the report's first table.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.txt"
SEARCH_HOOK = "advwm.search.suggest_step_sizes"  # conf/hparams_search: the sweeper's search-space hook


def _cell(value: Any, digits: int = 3) -> str:
    """As the report writes numbers (a value below 0.001 in scientific notation, not 0.000)."""
    from advwm.report.tables import fmt_number

    return fmt_number(value, digits)


def summary_table(sweep_dir: Path, metric: str = "sr_mask", objective: str | None = None) -> str:
    """One row per run under `sweep_dir` (failed ones say so): the metric per victim, its mean, the objective (a
    search's, when it is not among those columns), the seconds; a search whose trials all tie says so below."""
    from advwm.report import collect, metric_columns
    from advwm.report.text import console_text

    runs = collect([sweep_dir])
    columns = metric_columns(runs, metric)
    extra = [objective] if objective and objective not in columns else []
    headers = ["run", "method", *[c.split("/", 1)[-1] for c in columns], *extra, "seconds"]
    rows = []
    for run in runs:
        number = run.path.name
        if run.failed:
            rows.append([number, console_text(run.label), *["–"] * (len(columns) + len(extra)),
                         console_text(f"FAILED: {run.error}")])
            continue
        values = [_cell(run.metrics.get(c)) for c in columns]
        if columns and columns[-1].endswith("/mean") and columns[-1] not in run.metrics:
            finite = [float(v) for v in values[:-1] if v != "–"]
            values[-1] = _cell(sum(finite) / len(finite) if finite else math.nan)
        rows.append([number, console_text(run.label) + (" †" if run.random_victims else ""), *values,
                     *[_cell(run.metrics.get(key), 4) for key in extra], _cell(run.metrics.get("seconds"), 0)])
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(cell).ljust(widths[i]) if i < 2 else str(cell).rjust(widths[i])
                       for i, cell in enumerate(row)) for row in [headers, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    finished = [run for run in runs if not run.failed]
    if any(run.random_victims for run in finished):
        lines.append("† random victims: the numbers show the machinery, not protection")
    if objective:
        from advwm.report.tables import as_number
        from advwm.studies import tie_warning

        values = [as_number(run.metrics.get(objective)) for run in finished]
        warning = tie_warning(values, objective, any(run.random_victims for run in finished))
        if warning:
            lines.append(f"warning: {warning}")
    return "\n".join(lines)


class MultirunSummary(Callback):
    """Prints (and saves as `<multirun>/summary.txt`) the table over the runs, the folder and the report command."""

    def __init__(self, metric: str = "sr_mask") -> None:
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().resolve()
        if not sweep_dir.is_dir():
            return
        search = OmegaConf.select(config, "hydra.sweeper.custom_search_space", default=None) == SEARCH_HOOK
        objective = str(config.get("objective", "sr_mask/mean")) if search else None
        try:
            table = summary_table(sweep_dir, self.metric, objective)
        except Exception as error:  # noqa: BLE001  (a summary must never turn a finished multirun into a failure)
            table = f"(no summary table: {type(error).__name__}: {error})"
        minimise = str(OmegaConf.select(config, "hydra.sweeper.direction", default="maximize")) == "minimize"
        heading = f"{self.metric} over the runs of this multirun" + (
            f" (a search: it {'minimised' if minimise else 'maximised'} {objective})" if objective else "")
        text = (f"\n{heading}:\n{table}\n\nmultirun folder: {sweep_dir}\n"
                f"full report (every metric, charts, per condition): python -m advwm.report {sweep_dir}")
        print(text, flush=True)
        try:
            (sweep_dir / SUMMARY_FILE).write_text(text.lstrip() + "\n")
        except OSError as error:
            log.warning("could not write %s: %s", sweep_dir / SUMMARY_FILE, error)
