"""The report's charts as PNG bytes (matplotlib's Agg canvas, no display needed). Every user string on a chart
goes through `text.mpl_text` (a pair of `$` in a name would be parsed as math, and bad math raises)."""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from advwm.report.sweeps import best_so_far
from advwm.report.tables import as_number, fmt_number
from advwm.report.text import mpl_text


@dataclass
class Chart:
    name: str  # file name in report_files/
    title: str
    png: bytes
    wide: bool = False  # HTML: as wide as the page (panels side by side), not 560 px
    hover: str = ""  # HTML: the picture's hover title (default: the title)

    def __post_init__(self) -> None:
        self.hover = self.hover or self.title


def _figure(width: float, height: float, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a name in a script the font lacks (CJK, emoji) is drawn as boxes: the
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # tables show it, no console noise
        figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _slug(text: str, limit: int = 80) -> str:
    """A file-name-safe form of `text` (ASCII letters, digits, `_.-`; at most `limit` characters)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")[:limit] or "x"


def _short(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: limit - 3] + "..."


def bar_chart(metric_key: str, labels: Sequence[str], values: Sequence[float], random_rows: Sequence[bool],
              digits: int = 3, errors: Sequence[float] | None = None, name: str | None = None) -> Chart:
    """Horizontal bars, one per method (its mean; `errors`: its std over seeds as a whisker); random-weight
    runs grey."""
    figure = _figure(7.0, 1.2 + 0.38 * max(len(labels), 1))
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(labels)))
    heights = [0.0 if math.isnan(v) else v for v in values]
    colours = ["#9e9e9e" if r else "#3b75af" for r in random_rows]
    whiskers = [0.0 if e is None or math.isnan(e) else e for e in errors] if errors is not None else None
    axes.barh(positions, heights, color=colours, xerr=whiskers if whiskers and any(whiskers) else None,
              error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#444"})
    for y, value in zip(positions, values, strict=True):
        axes.text(0 if math.isnan(value) else value, y, " " + fmt_number(value, digits), va="center", fontsize=8)
    axes.set_yticks(positions)
    axes.set_yticklabels([mpl_text(_short(label, 60)) for label in labels], fontsize=8)
    axes.invert_yaxis()
    finite = [v for v in values if not math.isnan(v) and not math.isinf(v)]
    top = max(finite, default=1.0)
    if finite and min(finite) >= 0:
        axes.set_xlim(0, (top or 1.0) * 1.15)
    axes.set_xlabel(mpl_text(metric_key))
    axes.set_title(mpl_text(metric_key) + ("   (grey: random weights)" if any(random_rows) else "")
                   + ("   (whiskers: std over seeds)" if whiskers and any(whiskers) else ""), fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    return Chart(name or f"bar_{_slug(metric_key)}.png", metric_key, _png(figure))


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
              color="#d1495b", label=mpl_text(f"best so far ({history['direction']})"))
    axes.set_xlabel("trial")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("objective")
    axes.set_title(mpl_text(f"study {history['name']}: {len(done)} complete trials"), fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return Chart(f"sweep_{_slug(str(history['name']))}.png", f"sweep history: {history['name']}", _png(figure))



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
    axes.set_xticklabels([mpl_text(_short(n.replace("victims.", "").replace(".step_scale", " step"), 30))
                          for n in axes_names], fontsize=7, rotation=20)
    axes.set_yticks([0, 1])
    axes.set_yticklabels(["min", "max"], fontsize=7)
    for i in range(len(axes_names)):
        axes.axvline(i, color="#888", lw=0.5)
        axes.text(i, 1.02, f"{highs[i]:.3g}", ha="center", fontsize=6)
        axes.text(i, -0.08, f"{lows[i]:.3g}", ha="center", fontsize=6)
    axes.set_title(mpl_text(f"study {history['name']}: parameters vs objective (colour: objective)"), fontsize=10)
    return Chart(f"parallel_{_slug(str(history['name']))}.png", f"parallel coordinates: {history['name']}",
                 _png(figure))
