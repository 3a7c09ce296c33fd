"""The report as a whole: which sections, in which order, from the runs, the metrics and the sweeps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from advwm.report.charts import bar_chart, history_chart
from advwm.report.labels import collect, fmt_value, short_paths, varying
from advwm.report.render import Section, Table, render_html, render_markdown
from advwm.report.runs import Run
from advwm.report.sweeps import load_history, studies_of, sweep_summaries
from advwm.report.tables import (
    DASH,
    RANDOM_MARK,
    condition_columns,
    fmt_number,
    metric_columns,
    metric_rows,
    victims_of,
)


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
    rows = metric_rows(runs, keys)
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
                                        [[k, fmt_value(v)] for k, v in best["params"].items()], numeric=False))
        chart = history_chart(history)
        if chart is not None:
            section.charts.append(chart)
        if history["trials"]:
            param_names = list(dict.fromkeys(p for t in history["trials"] for p in t["params"]))
            table = Table(["trial", "state", "objective", *param_names],
                          [[str(t["number"]), t["state"].lower(), fmt_number(t["value"], digits),
                            *(fmt_value(t["params"][p]) if p in t["params"] else DASH for p in param_names)]
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
                                      + (", best params " + ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items())
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
        short = short_paths(runs)
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

