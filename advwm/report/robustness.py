"""The report's "Robustness to sharing" section: the success metrics after each sharing transform.

From the `robust/<transform>/<metric>/<victim>` keys that `metrics.robustness` writes: per metric (SR_mask,
avg_L) a table over the runs with one column per transform beside the unshared value, per victim and for
the mean over victims, and per victim a curve of SR_mask against the JPEG quality (one line per run, its
unshared value dashed), so how fast protection fades with compression is one picture. These keys are not
listed among the ordinary metric tables (30 tables of one column each would drown the page).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from advwm.report.charts import Chart, _figure, _png, _slug
from advwm.report.render import Section, Table
from advwm.report.runs import Run
from advwm.report.tables import RANDOM_MARK, as_number, fmt_number, victims_of
from advwm.report.text import mpl_text

PREFIX = "robust/"
SHOWN = (("sr_mask", "SR_mask"), ("avg_l", "avg_L"))
_JPEG = re.compile(r"^jpeg(\d+)$")


def transforms_of(runs: Sequence[Run]) -> list[str]:
    """The transform names the runs were judged under, in the order first seen (metrics.json keeps the config's)."""
    names: dict[str, None] = {}
    for run in runs:
        if run.failed:
            continue
        for key in run.metrics:
            if key.startswith(PREFIX) and key.count("/") >= 3:
                names[key.split("/")[1]] = None
    return list(names)


def jpeg_quality(name: str) -> int | None:
    match = _JPEG.match(name)
    return int(match.group(1)) if match else None


def robust_value(run: Run, metric: str, victim: str, transform: str | None) -> float:
    """The value of `metric` for `victim` (or `mean`) after `transform`; None = unshared (the ordinary key)."""
    key = f"{metric}/{victim}" if transform is None else f"{PREFIX}{transform}/{metric}/{victim}"
    return as_number(run.metrics.get(key))


def sharing_chart(victim: str, runs: Sequence[Run], transforms: Sequence[str], prefix: str = "") -> Chart | None:
    """SR_mask against JPEG quality for one victim (or `mean`): a line per run, its unshared value dashed."""
    qualities = sorted((q, t) for t in transforms if (q := jpeg_quality(t)) is not None)
    drawn = [(run, [robust_value(run, "sr_mask", victim, t) for _, t in qualities]) for run in runs if not run.failed]
    drawn = [(run, values) for run, values in drawn if any(not math.isnan(v) for v in values)]
    if not qualities or not drawn:
        return None
    figure = _figure(7.0, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    for index, (run, values) in enumerate(drawn):
        colour = f"C{index % 10}"
        label = run.label if len(run.label) <= 50 else run.label[:47] + "..."
        axes.plot([q for q, _ in qualities], values, "-o", color=colour, label=mpl_text(label))
        unshared = robust_value(run, "sr_mask", victim, None)
        if not math.isnan(unshared):
            axes.axhline(unshared, color=colour, linestyle="--", linewidth=1)
    axes.set_xlabel("JPEG quality (Pillow)")
    axes.set_ylabel(mpl_text(f"SR_mask/{victim}"))
    axes.set_ylim(-0.03, 1.03)
    axes.set_title(mpl_text(f"{victim}: SR_mask after JPEG (dashed: the photo not re-encoded)"), fontsize=10)
    axes.grid(alpha=0.3)
    if len(drawn) <= 12:
        axes.legend(fontsize=7)
    return Chart(f"{prefix}sharing_{_slug(victim)}.png", f"SR_mask vs JPEG quality: {victim}", _png(figure))


def _table(runs: Sequence[Run], metric: str, victim: str, transforms: Sequence[str], digits: int) -> Table:
    """One row per run (labelled, linked and split into its varying keys as the other tables), one column per
    transform after the unshared value."""
    headers = ["method", "unshared", *transforms]
    rows = [[f"{run.label} {RANDOM_MARK}" if run.random_victims else run.label,
             *(fmt_number(robust_value(run, metric, victim, t), digits) for t in (None, *transforms))] for run in runs]
    return Table(headers, rows, links=[run.path for run in runs], parts=[dict(run.parts) for run in runs])


def robustness_sections(runs: Sequence[Run], digits: int = 3, level: int = 2, prefix: str = "") -> list[Section]:
    """The section (and one sub-section per victim), or nothing when no run has robust/ keys; `prefix` makes
    the charts' file names unique among several sweeps."""
    transforms = transforms_of(runs)
    if not transforms:
        return []
    ok = [run for run in runs if not run.failed]
    section = Section("Robustness to sharing", level=level)
    section.paragraphs.append(
        "Each success metric again after the protected photo was shared (metrics.robustness: Pillow's JPEG at "
        "that quality, resize<f> down and back up, blur<sigma>, crop<f> and back), judged against the fake of the "
        "equally shared clean photo, so a transform that merely changes the fake does not count as protection. "
        "Unshared: the ordinary value.")
    for metric, title in SHOWN:
        table = _table(ok, metric, "mean", transforms, digits)
        table.headers[0] = f"{title} (mean over victims): method"
        section.tables.append(table)
    if any(run.random_victims for run in ok):
        section.notes.append(f"{RANDOM_MARK} randomly initialised victims: these numbers show the machinery, not "
                             "protection against the real models.")
    for victim in ["mean", *victims_of(ok)]:
        chart = sharing_chart(victim, ok, transforms, prefix)
        if chart is not None:
            section.charts.append(chart)
    sections = [section]
    for victim in victims_of(ok):
        sub = Section(f"Robustness to sharing: {victim}", level=level + 1)
        for metric, title in SHOWN:
            table = _table(ok, metric, victim, transforms, digits)
            table.headers[0] = f"{title}: method"
            sub.tables.append(table)
        sections.append(sub)
    return sections
