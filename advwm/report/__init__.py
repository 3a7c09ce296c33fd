"""The comparison report (the local dashboard) over many runs: `python -m advwm.report <multirun folder>`.

One module per job: `runs` (which folders are runs, what each holds), `labels` (naming each row by what
differs between runs), `tables` (the paper tables, number formatting), `sweeps` (Optuna history),
`charts` (PNG charts), `render` (Markdown / self-contained HTML), `page` (which sections, in which order),
`cli` (the command line).

Python API: `collect(paths) -> list[Run]`, `build_table(runs, metric) -> (columns, rows)`,
`load_history(storage, study_name)`; `main(argv)` is the command line.
"""

from advwm.report.charts import Chart, bar_chart, history_chart
from advwm.report.cli import main
from advwm.report.labels import assign_labels, collect, seed_groups, varying
from advwm.report.page import Report, build_report, write_report
from advwm.report.runs import Run, find_run_dirs, flatten, load_run, loss_curves, run_pictures
from advwm.report.sweeps import best_so_far, load_history, studies_of, sweep_summaries
from advwm.report.tables import (
    as_number,
    build_table,
    condition_columns,
    fmt_mean_std,
    fmt_number,
    mean_std,
    metric_columns,
    metric_families,
    victims_of,
)

__all__ = [
    "Chart", "Report", "Run", "as_number", "assign_labels", "bar_chart", "best_so_far", "build_report", "build_table",
    "collect", "condition_columns", "find_run_dirs", "flatten", "fmt_number", "history_chart", "load_history",
    "load_run", "main", "metric_columns", "studies_of", "sweep_summaries", "varying", "victims_of", "write_report",
    "fmt_mean_std", "loss_curves", "mean_std", "metric_families", "run_pictures", "seed_groups",
]
