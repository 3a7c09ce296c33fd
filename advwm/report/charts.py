"""The report's charts as PNG bytes (matplotlib's Agg canvas, no display needed)."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from advwm.report.sweeps import best_so_far
from advwm.report.tables import as_number, fmt_number


@dataclass
class Chart:
    name: str  # file name in report_files/
    title: str
    png: bytes


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def bar_chart(metric_key: str, labels: Sequence[str], values: Sequence[float], random_rows: Sequence[bool],
              digits: int = 3) -> Chart:
    """Horizontal bars, one per method; random-weight runs grey."""
    figure = _figure(7.0, 1.2 + 0.38 * max(len(labels), 1))
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(labels)))
    heights = [0.0 if math.isnan(v) else v for v in values]
    colours = ["#9e9e9e" if r else "#3b75af" for r in random_rows]
    axes.barh(positions, heights, color=colours)
    for y, value in zip(positions, values, strict=True):
        axes.text(0 if math.isnan(value) else value, y, " " + fmt_number(value, digits), va="center", fontsize=8)
    axes.set_yticks(positions)
    axes.set_yticklabels([label if len(label) <= 60 else label[:57] + "..." for label in labels], fontsize=8)
    axes.invert_yaxis()
    finite = [v for v in values if not math.isnan(v) and not math.isinf(v)]
    top = max(finite, default=1.0)
    if finite and min(finite) >= 0:
        axes.set_xlim(0, (top or 1.0) * 1.15)
    axes.set_xlabel(metric_key)
    axes.set_title(metric_key + ("   (grey: random weights)" if any(random_rows) else ""), fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    return Chart(f"bar_{_slug(metric_key)}.png", metric_key, _png(figure))


def history_chart(history: dict[str, Any]) -> Chart | None:
    """Objective per trial (dots) and the best so far (line) against the trial number."""
    done = [t for t in history["trials"] if t["state"] == "COMPLETE" and not math.isnan(as_number(t["value"]))]
    if not done:
        return None
    from matplotlib.ticker import MaxNLocator

    numbers = [t["number"] for t in done]
    values = [float(t["value"]) for t in done]
    figure = _figure(7.0, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(numbers, values, "o", color="#3b75af", label="objective")
    axes.plot(numbers, best_so_far(values, history["direction"] or "maximize"), "-", drawstyle="steps-post",
              color="#d1495b", label=f"best so far ({history['direction']})")
    axes.set_xlabel("trial")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("objective")
    axes.set_title(f"study {history['name']}: {len(done)} complete trials", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return Chart(f"sweep_{_slug(str(history['name']))}.png", f"sweep history: {history['name']}", _png(figure))



def loss_chart(victim: str, curves: Sequence[tuple[str, Sequence[tuple[int, float]]]]) -> Chart | None:
    """One victim's distortion loss against the attack iteration, one line per run (from the runs' CSV logs)."""
    drawn = [(label, points) for label, points in curves if points]
    if not drawn:
        return None
    figure = _figure(7.0, 3.4)
    axes = figure.add_subplot(1, 1, 1)
    for label, points in drawn:
        steps, values = zip(*sorted(points), strict=True)
        axes.plot(steps, values, "-", marker="." if len(steps) < 30 else None,
                  label=label if len(label) <= 50 else label[:47] + "...")
    axes.set_xlabel("attack iteration")
    axes.set_ylabel(f"loss/{victim}")
    axes.set_title(f"{victim}: distortion loss per iteration", fontsize=10)
    axes.grid(alpha=0.3)
    if len(drawn) <= 12:
        axes.legend(fontsize=7)
    return Chart(f"loss_{_slug(victim)}.png", f"loss/{victim}", _png(figure))


def parallel_chart(history: dict[str, Any]) -> Chart | None:
    """Parallel coordinates of a sweep: each complete trial a line through its parameters (scaled to the
    range seen) to its objective, coloured by the objective, so good regions of the step sizes stand out."""
    done = [t for t in history["trials"] if t["state"] == "COMPLETE" and not math.isnan(as_number(t["value"]))]
    names = list(dict.fromkeys(p for t in done for p in t["params"]
                               if not math.isnan(as_number(t["params"][p]))))
    if len(done) < 2 or not names:
        return None
    from matplotlib import colormaps

    axes_names = [*names, "objective"]
    table = [[as_number(t["params"].get(n)) for n in names] + [float(t["value"])] for t in done]
    lows = [min(row[i] for row in table) for i in range(len(axes_names))]
    highs = [max(row[i] for row in table) for i in range(len(axes_names))]
    figure = _figure(7.0, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    colours = colormaps["viridis"]
    span_obj = (highs[-1] - lows[-1]) or 1.0
    for row in table:
        scaled = [0.5 if highs[i] == lows[i] else (v - lows[i]) / (highs[i] - lows[i]) for i, v in enumerate(row)]
        axes.plot(range(len(axes_names)), scaled, "-", alpha=0.8, color=colours((row[-1] - lows[-1]) / span_obj))
    axes.set_xticks(range(len(axes_names)))
    axes.set_xticklabels([n.replace("victims.", "").replace(".step_scale", " step") for n in axes_names],
                         fontsize=7, rotation=20)
    axes.set_yticks([0, 1])
    axes.set_yticklabels(["min", "max"], fontsize=7)
    for i in range(len(axes_names)):
        axes.axvline(i, color="#888", lw=0.5)
        axes.text(i, 1.02, f"{highs[i]:.3g}", ha="center", fontsize=6)
        axes.text(i, -0.08, f"{lows[i]:.3g}", ha="center", fontsize=6)
    axes.set_title(f"study {history['name']}: parameters vs objective (colour: objective)", fontsize=10)
    return Chart(f"parallel_{_slug(str(history['name']))}.png", f"parallel coordinates: {history['name']}",
                 _png(figure))
