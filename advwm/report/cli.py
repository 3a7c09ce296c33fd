"""`python -m advwm.report`: the comparison report over many runs (tables, charts, an Optuna sweep's history).

    python -m advwm.report outputs/craft/multiruns/2026-01-01_12-00-00
    python -m advwm.report outputs/ablation/multiruns/* --metrics sr_mask,l2_mask --out reports/ablation
    python -m advwm.report outputs/cmua_search/multiruns/<time> --study sqlite:///outputs/optuna/cmua_stargan.db \
        --study-name cmua_stargan

Arguments are run folders, multirun folders or any parent of them: every folder below them holding a
`metrics.json` (or a Hydra `.hydra/config.yaml`, i.e. a run that started) is a run. A run without a
readable `metrics.json` is listed as failed, with the last ERROR line of its log when there is one.
The report is written to `--out` (default: the first argument): `report.md` (charts beside it in
`report_files/`) and `report.html`, self-contained (charts inlined as base64 PNG, no external CSS/JS).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from advwm.report.page import build_report, write_report
from advwm.report.render import md_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m advwm.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="multirun folders, run folders or parents of them")
    parser.add_argument("--out", help="folder for report.md / report.html (default: the first path)")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated metrics, one table each with its charts (default: every metric the runs "
                             "have, charts for sr_mask; e.g. sr_mask,l2_mask,fid)")
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
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
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
    shown = metrics or report.metrics[:1]  # on the console: the named metrics, else the first (SR_mask)
    for section in report.sections:
        if section.level == 2 and section.tables and section.title in shown:
            print(f"{section.title}\n{md_table(section.tables[0])}\n")
    failed = sum(r.failed for r in report.runs)
    print(f"{len(report.runs)} runs ({failed} failed); report: {markdown}  {page}")
    return 0

