"""Curves over the attack iterations: every value a run logs per step, one chart per family, seeds as bands.

What a run logs over iterations, in its CSV log (`csv/metrics.csv`, Lightning's CSVLogger: one column per key,
a `step` column): `loss/<victim>` and `loss/total` every iteration, and `periodic/<metric>/<victim|mean>` every
`metrics.every_n_steps` (SR_mask, L2_mask, Ruiz, avg_L, attack_rate on the held-out faces). Per family (`loss`,
`periodic/sr_mask`, ...) one chart, one panel per victim (and the mean or total), one colour per method: its
line is the mean over the method's seeds at each step and its band the min–max over them.

Legends stay readable: a method's label is used as it is when every label is short; otherwise the methods
are called M1, M2, ... and a key table beside the charts gives each one's full settings (also in the
picture's hover title).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from advwm.report.charts import Chart, _figure, _png, _slug
from advwm.report.tables import SeedGroup
from advwm.report.text import mpl_text

CURVE_KEY = re.compile(r"^(?P<family>loss|periodic/[^/]+)/(?P<series>[^/]+)$")
SHORT_LABEL = 28  # longer labels make the legend cover the curves: M1, M2, ... and a key instead
PANELS_PER_ROW = 3


def logged_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """`{"loss/stargan": [(step, value), ...], "periodic/sr_mask/mean": [...], ...}` from the run's CSV log
    (empty without one; unreadable cells are skipped)."""
    file = Path(folder) / "csv" / "metrics.csv"
    curves: dict[str, list[tuple[int, float]]] = {}
    if not file.is_file():
        return curves
    try:
        with file.open(newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    step = int(float(row.get("step") or "nan"))
                except ValueError:
                    continue
                for key, text in row.items():
                    if not key or text in (None, "") or not CURVE_KEY.match(key):
                        continue
                    try:
                        value = float(text)
                    except ValueError:
                        continue
                    curves.setdefault(key, []).append((step, value))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return curves


@dataclass(frozen=True)
class Band:
    """A method's curve: per step the mean over its seeds and the min and max (equal for one seed)."""

    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]


def band(curves: Sequence[Sequence[tuple[int, float]]]) -> Band:
    """The seeds' curves of one method pooled per step (NaN values do not count; a step none has is left out)."""
    by_step: dict[int, list[float]] = {}
    for points in curves:
        for step, value in points:
            if not math.isnan(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return Band(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], [min(by_step[s]) for s in steps],
                [max(by_step[s]) for s in steps])


def short_labels(labels: Sequence[str]) -> tuple[list[str], bool]:
    """(legend labels, whether they are keys M1, M2, ... that need a key table)."""
    if all(len(label) <= SHORT_LABEL for label in labels):
        return list(labels), False
    return [f"M{i + 1}" for i in range(len(labels))], True


def _family_order(family: str) -> tuple[int, str]:
    return (0 if family == "loss" else 1, family)


def curve_charts(methods: Sequence[SeedGroup], prefix: str = "", victims: Sequence[str] = ()
                 ) -> tuple[list[Chart], list[str], bool]:
    """(one chart per logged family, the legend labels of the methods, whether those are keys); panels in the
    order of `victims`, then any other, then the mean or total."""
    per_run = {run.path: logged_curves(run.path) for method in methods for run in method.runs}
    families: dict[str, dict[str, None]] = {}
    for curves in per_run.values():
        for key in curves:
            match = CURVE_KEY.match(key)
            if match:
                families.setdefault(match["family"], {})[match["series"]] = None
    labels, keyed = short_labels([m.label + (" †" if m.random_victims else "") for m in methods])
    charts = []
    for family in sorted(families, key=_family_order):
        order = {name: index for index, name in enumerate(victims)}
        series = sorted(families[family], key=lambda name: (name in ("mean", "total"), order.get(name, len(order))))
        chart = _family_chart(family, series, methods, per_run, labels, prefix)
        if chart is not None:
            charts.append(chart)
    return charts, labels, keyed


def _family_chart(family: str, series: Sequence[str], methods: Sequence[SeedGroup], per_run: dict,
                  labels: Sequence[str], prefix: str) -> Chart | None:
    columns = min(len(series), PANELS_PER_ROW)
    rows = math.ceil(len(series) / columns)
    figure = _figure(3.6 * columns + 0.4, 2.5 * rows + 0.9, layout="constrained")
    drawn = False
    handles: dict[int, object] = {}  # one legend entry per method
    for index, name in enumerate(series):
        axes = figure.add_subplot(rows, columns, index + 1)
        for number, (method, label) in enumerate(zip(methods, labels, strict=True)):
            curve = band([per_run[run.path].get(f"{family}/{name}", []) for run in method.runs])
            if not curve.steps:
                continue
            drawn = True
            colour = f"C{number % 10}"
            (line,) = axes.plot(curve.steps, curve.mean, "-", color=colour, label=mpl_text(label),
                                marker="." if len(curve.steps) < 30 else None)
            if len(method.runs) > 1:
                axes.fill_between(curve.steps, curve.low, curve.high, color=colour, alpha=0.2, linewidth=0)
            handles.setdefault(number, line)
        axes.set_title(mpl_text(f"{family}/{name}"), fontsize=9)
        axes.set_xlabel("attack iteration", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    if not drawn:
        return None
    seeds = any(len(m.runs) > 1 for m in methods)
    figure.suptitle(mpl_text(family) + ("   (line: mean over seeds, band: min–max)" if seeds else ""), fontsize=10)
    if len(handles) <= 20:
        figure.legend(handles=[handles[n] for n in sorted(handles)], loc="outside lower center",
                      ncols=min(len(handles), 6), fontsize=8, frameon=False)
    hover = "; ".join(f"{short}: {method.label}" for short, method in zip(labels, methods, strict=True))
    return Chart(f"{prefix}curves_{_slug(family)}.png", f"{family} over iterations", _png(figure), wide=True,
                 hover=hover)
