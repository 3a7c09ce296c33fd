"""`python -m advwm.report`: the comparison report over many runs (tables, charts, an Optuna sweep's history).

    python -m advwm.report outputs/craft/multiruns/2026-01-01_12-00-00
    python -m advwm.report outputs/ablation/multiruns/* --metrics sr_mask,l2_mask --out reports/ablation
    python -m advwm.report outputs/cmua_search/multiruns/<time> --study sqlite:///outputs/optuna/cmua_stargan.db \
        --study-name cmua_stargan

Arguments are run folders, multirun folders or any parent of them: every folder below them holding a
`metrics.json` (or a Hydra `.hydra/config.yaml`, i.e. a run that started) is a run, and the runs of one
folder form a sweep (a multirun or a search): one section each, its rows named by what differs inside it.
Each metric is one table with the methods as rows and the seeds pooled (mean ± std, n), the best per column
marked. Runs without a readable `metrics.json` are listed apart: refused (advwm's one-line error) or failed.
The report is written to `--out` (default: the first argument): `report.md` (charts beside it in
`report_files/`) and `report.html`, self-contained (charts inlined as base64 PNG, no external CSS/JS).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


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
    # the report's modules (matplotlib, PIL, optuna through them) load only now: --help and usage errors answer at once
    from advwm.report.page import build_report, write_report
    from advwm.report.render import console_table
    from advwm.report.text import console_text

    try:
        report = build_report(args.paths, metrics, args.study, args.study_name, args.digits,
                              not args.no_conditions, args.title)
    except FileNotFoundError as error:
        print(f"error: {console_text(error)}", file=sys.stderr)
        return 2
    if args.paths and not report.runs:
        print(f"error: no run folder (metrics.json or .hydra/config.yaml) under "
              f"{console_text(', '.join(args.paths))}", file=sys.stderr)
        return 2
    out = Path(args.out or (args.paths[0] if args.paths else ".")).expanduser()
    if out.is_file():
        out = out.parent
    try:
        markdown, page = write_report(report, out)
    except OSError as error:  # a full disk (one line from advwm.run_files.io), a folder we may not write
        print(f"error: cannot write the report in {console_text(out)}: {console_text(error.strerror or error)}",
              file=sys.stderr)
        return 2
    for heading, table in report.console:  # the named metrics, else the first (SR_mask), per sweep
        print(f"{console_text(heading)}\n{console_table(table)}\n")
    counts = {s: sum(r.status == s for r in report.runs) for s in ("refused", "failed")}
    print(f"{len(report.runs)} runs ({counts['refused']} refused, {counts['failed']} failed); "
          f"report: {console_text(markdown)}  {console_text(page)}")
    return 0
