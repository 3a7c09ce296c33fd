"""The report as a whole: which sections, in which order, from the runs, the metrics and the sweeps.

Order, first what a researcher asks: an overview; then per sweep (multirun or search: the run folders of one
parent folder; one section each, headed by that folder, when there are several) one table per metric family
with the methods as rows and the seeds pooled (mean ± std, n; the best per column marked, ties within spread
said; per-seed rows folded below), the curves over iterations, robustness to sharing, the search's history,
the pictures, and last the runs, refused and failed ones listed apart with their one-line reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from advwm.report.charts import bar_chart, history_chart, parallel_chart
from advwm.report.curves import curve_charts
from advwm.report.labels import Sweep, fmt_value, methods, short_paths, sweeps_of
from advwm.report.ranking import Stat, direction, direction_note, mark_column, tie_note
from advwm.report.render import Gallery, Picture, Section, Table, render_html, render_markdown
from advwm.report.robustness import robustness_sections
from advwm.report.runs import Run, find_run_dirs, load_run, read_yaml, run_pictures
from advwm.report.sweeps import load_history, studies_of
from advwm.report.tables import (
    DASH,
    RANDOM_MARK,
    SeedGroup,
    condition_columns,
    fmt_number,
    fmt_stat,
    mean_std,
    metric_columns,
    metric_families,
    metric_value,
    victims_of,
)
from advwm.report.text import Code, Inline
from advwm.run_files import io

SEARCH_RESULTS = "optimization_results.yaml"  # what Hydra's Optuna sweeper writes in the sweep folder


@dataclass
class Report:
    title: str
    sections: list[Section]
    runs: list[Run]
    metrics: list[str] = field(default_factory=list)  # the metric tables it holds, in order
    console: list[tuple[str, Table]] = field(default_factory=list)  # (heading, table) the command line prints


# ------------------------------------------------------------------------------------------------ pieces


def _marked(label: str, random: bool) -> str:
    return f"{label} {RANDOM_MARK}" if random else label


def _random_note(runs: Sequence[Run]) -> str | None:
    names = list(dict.fromkeys(v for r in runs if not r.failed for v in r.random_victims))
    if not names:
        return None
    return (f"{RANDOM_MARK} randomly initialised victims ({', '.join(names)}): these numbers show the machinery, "
            "not protection against the real models.")


def _column_name(key: str, metric: str) -> str:
    return key[len(metric) + 1:] if key.startswith(metric + "/") else key


def _stat_table(groups: Sequence[SeedGroup], keys: Sequence[str], headers: list[str], metric: str,
                digits: int) -> tuple[Table, list[list[Stat]]]:
    """Methods as rows, `keys` as columns: mean ± std (n) over each method's seeds, best/tied marked."""
    stats = [[Stat(*mean_std([metric_value(run, key, keys) for run in group.runs])) for key in keys]
             for group in groups]
    pooled = any(len(group.runs) > 1 for group in groups)
    how = direction(metric)
    columns = [mark_column([row[j] for row in stats], how) for j in range(len(keys))]
    rows = [[_marked(group.label, bool(group.random_victims)),
             *(fmt_stat(s.mean, s.std, s.n, digits, with_n=pooled) for s in row)]
            for group, row in zip(groups, stats, strict=True)]
    table = Table(headers, rows, links=[g.runs[0].path if len(g.runs) == 1 else None for g in groups],
                  parts=[dict(g.parts) for g in groups],
                  marks=[[columns[j][i] for j in range(len(keys))] for i in range(len(groups))])
    return table, stats


def _per_seed_table(groups: Sequence[SeedGroup], keys: Sequence[str], headers: list[str], digits: int) -> Table:
    runs = [run for group in groups for run in group.runs]
    rows = [[_marked(run.label, bool(run.random_victims)), *(fmt_number(metric_value(run, k, keys), digits)
                                                              for k in keys)] for run in runs]
    return Table(["run", *headers[1:]], rows, links=[run.path for run in runs], parts=[dict(r.parts) for r in runs],
                 folded=f"Per-seed rows ({len(runs)} runs)")


def _metric_sections(sweep: Sweep, groups: Sequence[SeedGroup], metric: str, digits: int, level: int,
                     detailed: bool, conditions: bool, prefix: str) -> list[Section]:
    """The metric's table over the methods (victims and mean), its notes, the per-seed rows folded, and when
    `detailed` its bar charts and (with `conditions`) one per-condition table per victim."""
    section = Section(metric, level=level)
    keys = metric_columns(sweep.runs, metric)
    if not keys:
        section.paragraphs.append(("No run has ", Code(metric), " in its metrics.json."))
        return [section]
    headers = ["method"] + [_column_name(k, metric) for k in keys]
    table, stats = _stat_table(groups, keys, headers, metric, digits)
    section.tables.append(table)
    section.notes.append(direction_note(metric))
    how = direction(metric)
    for j, header in enumerate(headers[1:]):
        note = tie_note(header, [g.label for g in groups], [row[j] for row in table.marks or []],
                        [row[j] for row in stats], how)
        if note:
            section.notes.append(note)
    if any(k.endswith("/mean") and not any(k in r.metrics for g in groups for r in g.runs) for k in keys):
        section.notes.append("mean: the mean over the victim columns (not in metrics.json).")
    note = _random_note(sweep.runs)
    if note:
        section.notes.append(note)
    if any(len(g.runs) > 1 for g in groups):
        section.tables.append(_per_seed_table(groups, keys, headers, digits))
    for j, key in enumerate(keys if detailed and len(groups) > 1 else []):  # one bar says nothing the table doesn't
        values = [row[j].mean for row in stats]
        if any(not math.isnan(v) for v in values):
            section.charts.append(bar_chart(key, [g.label for g in groups], values,
                                            [bool(g.random_victims) for g in groups], digits,
                                            errors=[row[j].std for row in stats]))
            section.charts[-1].name = prefix + section.charts[-1].name
    sections = [section]
    for victim in victims_of(sweep.runs) if detailed and conditions else []:
        conds = condition_columns(sweep.runs, metric, victim)
        if conds:
            keys_c = [*conds, f"{metric}/{victim}"]
            table_c, _ = _stat_table(groups, keys_c, ["method", *(c.rsplit("/", 1)[1] for c in conds), "pooled"],
                                     metric, digits)
            sections.append(Section(f"{metric}: {victim} per condition", level=level + 1, tables=[table_c]))
    return sections


def _curve_sections(groups: Sequence[SeedGroup], level: int, prefix: str) -> list[Section]:
    charts, labels, keyed = curve_charts(groups, prefix, victims_of([r for g in groups for r in g.runs]))
    if not charts:
        return []
    section = Section("Curves over iterations", level=level, charts=charts)
    section.paragraphs.append(("Every value the runs logged per attack iteration (", Code("csv/metrics.csv"), "): ",
                               Code("loss/<victim>"), " every iteration, ", Code("periodic/<metric>/..."), " every ",
                               Code("metrics.every_n_steps"), ". One colour per method"
                               + ("; with several seeds the line is their mean and the band their min–max."
                                  if any(len(g.runs) > 1 for g in groups) else ".")))
    if not any(c.name.startswith(f"{prefix}curves_periodic") for c in charts):
        section.notes.append(("No periodic metrics were logged: ", Code("metrics.every_n_steps=N"),
                              " judges the watermark every N iterations while it is crafted."))
    if keyed:
        section.after_charts.append(Table(["key", "method"], [[short, _marked(g.label, bool(g.random_victims))]
                                                               for short, g in zip(labels, groups, strict=True)],
                                          numeric=False))
    return [section]


def _picture_sections(runs: Sequence[Run], digits: int, level: int) -> list[Section]:
    """Per run: the watermark (amplified to full contrast) and, one click away, each victim's comparison grid."""
    section = Section("Watermarks and grids", level=level)
    section.paragraphs.append("Each run's watermark, amplified to full contrast (click: the run's folder); below, "
                              "each victim's grid: clean | protected | fake(clean) | fake(protected), one row per "
                              "condition, with that row's L2_mask.")
    thumbs = []
    for run in runs:
        if run.failed:
            continue
        watermark, grids = run_pictures(run.path)
        label = _marked(run.label, bool(run.random_victims))
        if watermark is not None:
            caption = f"{label}: SR_mask {fmt_number(run.metrics.get('sr_mask/mean'), digits)}"
            thumbs.append(Picture(caption, watermark, run.path))
        if grids:
            section.galleries.append(Gallery(f"grids of {label}", [
                Picture(f"{victim}: SR_mask {fmt_number(run.metrics.get(f'sr_mask/{victim}'), digits)}", path, path)
                for victim, path in grids.items()], collapsed=True))
    if thumbs:
        section.galleries.insert(0, Gallery("", thumbs))
    return [section] if section.galleries else []


def _study_sections(storage: str, name: str | None, digits: int, level: int, prefix: str,
                    objective: str | None = None) -> list[Section]:
    """A study's history: best trial, objective per trial, parallel coordinates, the trials table."""
    history = load_history(storage, name)
    section = Section(f"Sweep history: {history['name'] or '?'}", level=level)
    section.paragraphs.append(("Study ", Code(str(history["name"])), " in ", Code(history["storage"]),
                               f", direction {history['direction']}" if history["direction"] else "",
                               *((", objective ", Code(objective)) if objective else ()), "."))
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
            chart.name = prefix + chart.name
            section.charts.append(chart)
    sections = [section]
    if history["trials"]:
        param_names = list(dict.fromkeys(p for t in history["trials"] for p in t["params"]))
        table = Table(["trial", "state", "objective", *param_names],
                      [[str(t["number"]), t["state"].lower(), fmt_number(t["value"], digits),
                        *(fmt_value(t["params"][p]) if p in t["params"] else DASH for p in param_names)]
                       for t in history["trials"][:500]])
        sections.append(Section(f"Trials of {history['name']}", level=level + 1, tables=[table]))
    return sections


def _search_sections(sweep: Sweep, digits: int, level: int, prefix: str, shown: set) -> list[Section]:
    """The study the sweep's runs name (`hparams_search_storage`, `study_name`), and the sweeper's summary."""
    sections = []
    objectives = {str(r.config["objective"]) for r in sweep.runs if isinstance(r.config.get("objective"), str)}
    objective = objectives.pop() if len(objectives) == 1 else None
    targets = studies_of(sweep.runs)
    for storage, name in targets:
        shown.add((storage, name))
        sections += _study_sections(storage, name, digits, level, prefix, objective)
    summary = sweep.folder / SEARCH_RESULTS
    if summary.is_file():
        content = read_yaml(summary)
        section = Section("Sweeper summary", level=level)
        if isinstance(content, dict):
            params = content.get("best_params") or {}
            best = ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items()) if isinstance(params, dict) else ""
            value = fmt_number(content.get("best_value"), digits)
            section.paragraphs.append((Code(SEARCH_RESULTS), f": best value {value}"
                                       + (f", best params {best}" if best else "")))
        else:
            section.paragraphs.append((Code(SEARCH_RESULTS), " is not readable YAML."))
        if not targets:
            section.paragraphs.append(("The sweeper's summary holds only the best point; for the history pass ",
                                       Code("--study URL --study-name NAME"), " (or keep ",
                                       Code("hparams_search_storage"), " and ", Code("study_name"),
                                       " in the runs' config)."))
        sections.append(section)
    return sections


def _run_lists(sweep: Sweep, level: int) -> list[Section]:
    """All runs (folded), then the refused and the failed ones, each with its one-line reason."""
    runs = sweep.runs
    short = short_paths(runs)
    listing = Section("Runs", level=level)
    listing.tables.append(Table(
        ["method", "folder", "status", "seconds", "steps", "weights"],
        [[_marked(r.label, bool(r.random_victims)), short[r.path], r.status,
          fmt_number(r.metrics.get("seconds"), 1) if not r.failed else DASH, str(r.metrics.get("steps", DASH)),
          ", ".join(sorted({str(v) for k, v in r.metrics.items() if k.startswith("weights/")})) or DASH]
         for r in runs], numeric=False, links=[r.path for r in runs], folded=f"All {len(runs)} runs"))
    sections = [listing]
    for status, title, why in (("refused", "Refused runs", "advwm refused them before crafting, naming what to "
                                "change"), ("failed", "Failed runs", "no metrics.json: see each run's log")):
        chosen = [r for r in runs if r.status == status]
        if chosen:
            sections.append(Section(title, level=level, paragraphs=[f"{len(chosen)} run(s): {why}."], tables=[
                Table(["method", "folder", "reason"], [[r.label, short[r.path], r.error or ""] for r in chosen],
                      numeric=False, links=[r.path for r in chosen])]))
    return sections


def _differ_text(sweep: Sweep, where: str = "inside it") -> list[Inline]:
    names: list[Inline] = []
    for group in sweep.groups:
        names += [Code(group), " (Hydra choice), "]
    for key in sweep.keys:
        names += [Code(key), " (pooled: each method's mean ± sample std (n − 1) over its seeds), "
                  if key == "seed" else ", "]
    if not names:
        return ["Runs differ in: nothing (rows are named by their folder)."]
    last = names[-1]
    names[-1] = last.rstrip(", ") + "." if isinstance(last, str) else last
    return [f"Settings that differ {where}: ", *names]


def _counts(runs: Sequence[Run]) -> str:
    counted = {s: sum(r.status == s for r in runs) for s in ("ok", "refused", "failed")}
    return f"{len(runs)} runs ({counted['ok']} finished, {counted['refused']} refused, {counted['failed']} failed)"


def _sweep_sections(sweep: Sweep, chosen: list[str] | None, digits: int, conditions: bool, level: int,
                    prefix: str, shown_studies: set, console: list[tuple[str, Table]],
                    console_heading: str) -> tuple[list[Section], list[str]]:
    groups = methods(sweep.runs)
    families = chosen or metric_families(sweep.runs) or ["sr_mask"]
    sections: list[Section] = []
    shown = [m for m in families if sweep.ok]
    for metric in shown:
        detailed = chosen is not None or metric == "sr_mask"
        found = _metric_sections(sweep, groups, metric, digits, level, detailed, conditions, prefix)
        sections += found
        if found[0].tables and metric in (chosen or families[:1]):
            console.append((f"{console_heading}{metric}", found[0].tables[0]))
    sections += robustness_sections(sweep.runs, digits, level, prefix) if sweep.ok else []
    sections += _curve_sections(groups, level, prefix)
    sections += _search_sections(sweep, digits, level, prefix, shown_studies)
    sections += _picture_sections(sweep.runs, digits, level)
    sections += _run_lists(sweep, level) if sweep.runs else []
    return sections, shown


def build_report(paths: Sequence[str], metrics: Sequence[str] | None = None, study: str | None = None,
                 study_name: str | None = None, digits: int = 3, conditions: bool = True,
                 title: str | None = None) -> Report:
    """The sections over the runs under `paths`. `metrics=None`: every metric the runs have, charts and
    per-condition tables for SR_mask only (the page stays readable); named metrics: each with its charts."""
    runs = [load_run(folder) for folder in find_run_dirs(paths)] if paths else []
    sweeps = sweeps_of(runs)
    chosen = list(metrics) if metrics else None
    several = len(sweeps) > 1
    sections: list[Section] = []

    overview = Section("Overview")
    generated = f"generated {datetime.now():%Y-%m-%d %H:%M}"
    if paths:
        where: list[Inline] = [f"{_counts(runs)} under "]
        for index, path in enumerate(paths):
            where += [", " if index else "", Code(str(path))]
        overview.paragraphs.append((*where, f"; {generated}."))
    else:
        overview.paragraphs.append(f"No run folders given; {generated}.")
    if several:
        overview.paragraphs.append(f"{len(sweeps)} sweeps (multiruns or searches), one section each, named by "
                                   "its folder; each names its rows by the settings that differ inside it.")
        overview.tables.append(Table(
            ["sweep", "runs", "finished", "refused", "failed", "differ in"],
            [[s.name, str(len(s.runs)), *(str(sum(r.status == k for r in s.runs)) for k in ("ok", "refused", "failed")),
              ", ".join(s.groups + s.keys) or DASH] for s in sweeps], links=[s.folder for s in sweeps], numeric=False))
    elif sweeps:
        overview.paragraphs.append(_differ_text(sweeps[0], "between the runs"))
    ok = [r for r in runs if not r.failed]
    overview.notes += [f"Note from the runs: {n}"
                       for n in dict.fromkeys(str(r.metrics["note"]) for r in ok if r.metrics.get("note"))]
    sections.append(overview)

    console: list[tuple[str, Table]] = []
    shown_studies: set = set()
    listed: list[str] = []
    for index, sweep in enumerate(sweeps):
        level, prefix = (3, f"s{index + 1}_") if several else (2, "")
        if several:
            sections.append(Section(sweep.name, level=2, anchor=f"sweep-{index + 1}",
                                    paragraphs=[f"{_counts(sweep.runs)}.", _differ_text(sweep)]))
        found, shown = _sweep_sections(sweep, chosen, digits, conditions, level, prefix, shown_studies, console,
                                       f"{sweep.name}: " if several else "")
        sections += found
        listed += [m for m in shown if m not in listed]
    if study and (study, study_name) not in shown_studies:
        sections += _study_sections(study, study_name, digits, 2, "")
    return Report(title or "advwm report", sections, runs, listed, console)


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    """`report.md` (charts in `report_files/`) and the self-contained `report.html` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = out / "report_files"
    charts = [chart for section in report.sections for chart in section.charts]
    taken: set[str] = set()
    for chart in charts:  # two names that slug alike (study names, victims) get a number
        stem, suffix, number = chart.name.rsplit(".", 1)[0], ".png", 2
        while chart.name in taken:
            chart.name = f"{stem}-{number}{suffix}"
            number += 1
        taken.add(chart.name)
    if charts:
        files.mkdir(exist_ok=True)
        for chart in charts:
            io.write_bytes(files / chart.name, chart.png)
    markdown, page = out / "report.md", out / "report.html"
    base = out.resolve()
    io.write_text(markdown, render_markdown(report.title, report.sections, files.name, base))
    io.write_text(page, render_html(report.title, report.sections, base))
    return markdown, page
