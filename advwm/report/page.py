"""The report as a whole: which sections, in which order, from the runs, the metrics and the sweeps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from advwm.report.charts import bar_chart, history_chart, loss_chart, parallel_chart
from advwm.report.labels import collect, fmt_value, seed_groups, short_paths, varying
from advwm.report.render import Gallery, Picture, Section, Table, render_html, render_markdown
from advwm.report.robustness import robustness_sections
from advwm.report.runs import Run, loss_curves, run_pictures
from advwm.report.sweeps import load_history, studies_of, sweep_summaries
from advwm.report.tables import (
    DASH,
    RANDOM_MARK,
    condition_columns,
    fmt_mean_std,
    fmt_number,
    metric_columns,
    metric_families,
    metric_rows,
    victims_of,
)


@dataclass
class Report:
    title: str
    sections: list[Section]
    runs: list[Run]
    metrics: list[str] = field(default_factory=list)  # the metric tables it holds, in order


def _runs_table(headers: list[str], rows: list[tuple[Run, list[str]]]) -> Table:
    """A table whose first column names the run; in HTML it links to the run folder and splits into the keys
    that differ between runs."""
    return Table(headers, [[_display_label(run), *cells] for run, cells in rows],
                 links=[run.path for run, _ in rows], parts=[dict(run.parts) for run, _ in rows])


def _random_note(runs: Sequence[Run]) -> str | None:
    names = list(dict.fromkeys(v for r in runs if not r.failed for v in r.random_victims))
    if not names:
        return None
    return (f"{RANDOM_MARK} randomly initialised victims ({', '.join(names)}): these numbers show the machinery, "
            "not protection against the real models.")


def _display_label(run: Run) -> str:
    return f"{run.label} {RANDOM_MARK}" if run.random_victims else run.label


def _metric_sections(runs: Sequence[Run], metric: str, digits: int, conditions: bool,
                     charts: bool = True) -> list[Section]:
    """The metric's table (victims and mean), its bar charts, then one per-condition table per victim."""
    section = Section(metric)
    keys = metric_columns(runs, metric)
    if not keys:
        section.paragraphs.append(f"No run has `{metric}` in its metrics.json.")
        return [section]
    rows = metric_rows(runs, keys)
    headers = ["method"] + [k[len(metric) + 1:] if k.startswith(metric + "/") else k for k in keys]
    section.tables.append(_runs_table(headers, [(run, [fmt_number(v, digits) for v in values])
                                                for run, values in rows]))
    if any(k.endswith("/mean") and not any(k in r.metrics for r, _ in rows) for k in keys):
        section.notes.append("mean: the mean over the victim columns (not in metrics.json).")
    note = _random_note([r for r, _ in rows])
    if note:
        section.notes.append(note)
    for index, key in enumerate(keys if charts else []):
        values = [v[index] for _, v in rows]
        if any(not math.isnan(v) for v in values):
            section.charts.append(bar_chart(key, [r.label for r, _ in rows], values,
                                            [bool(r.random_victims) for r, _ in rows], digits))
    sections = [section]
    for victim in victims_of(runs) if conditions else []:
        conds = condition_columns(runs, metric, victim)
        if conds:
            pooled = f"{metric}/{victim}"
            table = _runs_table(["method", *(c.rsplit("/", 1)[1] for c in conds), "pooled"],
                                [(run, [*(fmt_number(run.metrics.get(c), digits) for c in conds),
                                        fmt_number(run.metrics.get(pooled), digits)]) for run, _ in rows])
            sections.append(Section(f"{metric}: {victim} per condition", level=3, tables=[table]))
    return sections


def _seed_sections(runs: Sequence[Run], metrics: Sequence[str], digits: int) -> list[Section]:
    """Mean ± sample standard deviation (n − 1) over the seeds of each configuration, per victim and mean."""
    groups = seed_groups(runs)
    if not groups:
        return []
    section = Section("Mean ± std over seeds")
    section.paragraphs.append("Runs that differ only in `seed`, pooled: mean ± sample standard deviation (n − 1) "
                              "over the seeds, n = the number of seeds with a value.")
    for metric in metrics:
        keys = metric_columns(runs, metric)
        if not keys:
            continue
        headers = ["configuration"] + [k[len(metric) + 1:] if k.startswith(metric + "/") else k for k in keys]
        rows = []
        for group in groups:
            values = [v for _, v in metric_rows(group.runs, keys)]
            rows.append([group.label, *(fmt_mean_std([row[i] for row in values], digits) for i in range(len(keys)))])
        section.tables.append(Table([f"{metric}: {headers[0]}", *headers[1:]], rows))
    return [section]


def _loss_section(runs: Sequence[Run]) -> list[Section]:
    """Each victim's loss per iteration, a line per run, from the runs' CSV logs."""
    curves = {run.path: loss_curves(run.path) for run in runs if not run.failed}
    victims = list(dict.fromkeys(v for c in curves.values() for v in c))
    charts = [loss_chart(v, [(run.label, curves[run.path].get(v, [])) for run in runs if run.path in curves])
              for v in victims]
    charts = [c for c in charts if c is not None]
    if not charts:
        return []
    return [Section("Loss curves", paragraphs=["The distortion loss each victim's gradient climbs, per attack "
                                               "iteration (`loss/<victim>` in each run's `csv/metrics.csv`)."],
                    charts=charts)]


def _picture_section(runs: Sequence[Run], digits: int) -> list[Section]:
    """Per run: the watermark (amplified to full contrast) and, one click away, each victim's comparison grid."""
    section = Section("Watermarks and grids")
    section.paragraphs.append("Each run's watermark, amplified to full contrast (click: the run's folder); below, "
                              "each victim's grid: clean | protected | fake(clean) | fake(protected), one row per "
                              "condition, with that row's L2_mask.")
    thumbs = []
    for run in runs:
        if run.failed:
            continue
        watermark, grids = run_pictures(run.path)
        if watermark is not None:
            caption = f"{_display_label(run)}: SR_mask {fmt_number(run.metrics.get('sr_mask/mean'), digits)}"
            thumbs.append(Picture(caption, watermark, run.path))
        if grids:
            section.galleries.append(Gallery(f"grids of {_display_label(run)}", [
                Picture(f"{victim}: SR_mask {fmt_number(run.metrics.get(f'sr_mask/{victim}'), digits)}", path, path)
                for victim, path in grids.items()], collapsed=True))
    if thumbs:
        section.galleries.insert(0, Gallery("", thumbs))
    return [section] if section.galleries else []


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
        for chart in (history_chart(history), parallel_chart(history)):
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


def build_report(paths: Sequence[str], metrics: Sequence[str] | None = None, study: str | None = None,
                 study_name: str | None = None, digits: int = 3, conditions: bool = True,
                 title: str | None = None) -> Report:
    """The sections over the runs under `paths`. `metrics=None`: every metric the runs have, charts and
    per-condition tables for SR_mask only (the page stays readable); named metrics: each with its charts."""
    runs = collect(paths) if paths else []
    chosen = list(metrics) if metrics else None
    metrics = chosen or metric_families(runs) or ["sr_mask"]
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
        detailed = chosen is not None or metric == "sr_mask"
        sections += _metric_sections(runs, metric, digits, conditions and detailed, charts=detailed)
    sections += robustness_sections(runs, digits) if ok else []  # robust/<transform>/...: tables, JPEG curve
    sections += _seed_sections(runs, metrics[:3] if chosen is None else metrics, digits)
    sections += _loss_section(runs)
    sections += _picture_section(runs, digits)

    sections += _sweep_sections(runs, paths, study, study_name, digits)

    if runs:
        listing = Section("Runs")
        short = short_paths(runs)
        table = _runs_table(
            ["method", "folder", "status", "seconds", "steps", "weights"],
            [(r, [short[r.path], "failed" if r.failed else "ok",
                  fmt_number(r.metrics.get("seconds"), 1) if not r.failed else DASH,
                  str(r.metrics.get("steps", DASH)), ", ".join(sorted({str(v) for k, v in r.metrics.items()
                                                                       if k.startswith("weights/")})) or DASH])
             for r in runs])
        table.numeric = False
        listing.tables.append(table)
        sections.append(listing)
    if failed:
        failures = Section("Failed runs")
        failures.tables.append(Table(["method", "folder", "reason"],
                                     [[r.label, str(r.path), r.error or ""] for r in failed], numeric=False))
        sections.append(failures)
    return Report(title or "advwm report", sections, runs, [m for m in metrics if ok])


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = out / "report_files"
    charts = [chart for section in report.sections for chart in section.charts]
    if charts:
        files.mkdir(exist_ok=True)
        for chart in charts:
            (files / chart.name).write_bytes(chart.png)
    markdown, page = out / "report.md", out / "report.html"
    base = out.resolve()
    markdown.write_text(render_markdown(report.title, report.sections, files.name, base), encoding="utf-8")
    page.write_text(render_html(report.title, report.sections, base), encoding="utf-8")
    return markdown, page

