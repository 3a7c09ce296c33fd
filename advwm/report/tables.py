"""The paper tables: one column per victim (and the mean) for a metric, one row per run; number formatting."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from advwm.report.runs import Run

RANDOM_MARK = "†"
DASH = "–"


def as_number(value: Any) -> float:
    """A metric value as a float; NaN for anything missing or not numeric."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


SCIENTIFIC_BELOW = 1e-3  # non-zero values smaller than this (in absolute value) would read as 0.000


def fmt_number(value: Any, digits: int = 3) -> str:
    """`digits` decimals; a non-zero value below 0.001 in absolute value in scientific notation with `digits`
    significant digits (9.05e-07, not 0.000); NaN and missing as a dash."""
    number = as_number(value)
    if math.isnan(number):
        return DASH
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if number != 0 and abs(number) < SCIENTIFIC_BELOW:
        return f"{number:.{max(digits - 1, 0)}e}"
    return f"{number:.{digits}f}"


def victims_of(runs: Sequence[Run]) -> list[str]:
    """The victims named in the runs' metrics (`weights/<victim>`, `sr_mask/<victim>`, ...), first seen first."""
    names: dict[str, None] = {}
    for run in runs:
        for key in run.metrics:
            parts = key.split("/")
            if len(parts) == 2 and parts[0] in ("weights", "sr_mask", "l2_mask", "judged") and parts[1] != "mean":
                names[parts[1]] = None
    return list(names)


def metric_columns(runs: Sequence[Run], metric: str) -> list[str]:
    """The metrics.json keys of one metric's columns: `<metric>/<victim>` for each victim, then `<metric>/mean`.

    A metric without a per-victim breakdown (`psnr`, `eps`) is one column; one whose breakdown is not by
    victim lists its sub-keys. The mean column is `<metric>/mean` when a run has it, else computed.
    """
    ok = [r for r in runs if not r.failed]
    keys = [f"{metric}/{v}" for v in victims_of(ok) if any(f"{metric}/{v}" in r.metrics for r in ok)]
    if not keys:
        subkeys = dict.fromkeys(k for r in ok for k in r.metrics
                                if k.startswith(metric + "/") and "/" not in k[len(metric) + 1:])
        keys = [k for k in subkeys if k != f"{metric}/mean"]
    has_mean = any(f"{metric}/mean" in r.metrics for r in ok)
    if keys and (has_mean or len(keys) > 1):
        keys.append(f"{metric}/mean")
    elif not keys and any(metric in r.metrics for r in ok):
        keys = [metric]
    return keys


def metric_value(run: Run, key: str, columns: Sequence[str]) -> float:
    """The run's value of `key`; a `<metric>/mean` it lacks is the mean of its other columns (NaN-aware)."""
    if key in run.metrics or not key.endswith("/mean"):
        return as_number(run.metrics.get(key))
    prefix = key[: -len("mean")]
    parts = [as_number(run.metrics.get(c)) for c in columns if c.startswith(prefix) and c != key]
    finite = [p for p in parts if not math.isnan(p)]
    return sum(finite) / len(finite) if finite else math.nan


def metric_rows(runs: Sequence[Run], keys: Sequence[str]) -> list[tuple[Run, list[float]]]:
    return [(run, [metric_value(run, key, keys) for key in keys]) for run in runs if not run.failed]


def build_table(runs: Sequence[Run], metric: str | Sequence[str] = "sr_mask") -> tuple[list[str], list[list[Any]]]:
    """The paper table: columns `["method", "<metric>/<victim>", ..., "<metric>/mean"]` (metrics.json keys),
    one row `[label, value, ...]` per successful run, values as floats (NaN when missing)."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    keys = [key for m in metrics for key in metric_columns(runs, m)]
    return ["method", *keys], [[run.label, *values] for run, values in metric_rows(runs, keys)]


def condition_columns(runs: Sequence[Run], metric: str, victim: str) -> list[str]:
    prefix = f"{metric}/{victim}/"
    return list(dict.fromkeys(k for r in runs if not r.failed for k in r.metrics
                              if k.startswith(prefix) and "/" not in k[len(prefix):]))



# Bookkeeping keys of metrics.json: numbers, but not measures of the watermark (they go in the runs table).
NOT_METRICS = ("weights", "judged", "empty_mask", "fid_count", "data", "skipped", "periodic", "seconds", "steps",
               "eps", "images_judged", "note")
# The order metric tables appear in (others follow in the order first seen).
PREFERRED = ("sr_mask", "l2_mask", "ruiz", "avg_l", "attack_rate", "fid", "liveness/acs_before",
             "liveness/acs_after", "liveness/tfhc_before", "liveness/tfhc_after", "psnr", "ssim")


def metric_families(runs: Sequence[Run]) -> list[str]:
    """Every metric the finished runs have, one name per table: `sr_mask`, `fid`, `liveness/acs_after`, `psnr`, ...

    A key `<family>/<victim>` or `<family>/mean` names the family; `<family>/<victim>/<condition>` is part
    of one; a key without a victim part (`psnr`) is its own family. Bookkeeping keys (`weights/...`,
    `judged/...`, `seconds`, ...) are not metrics."""
    ok = [r for r in runs if not r.failed]
    victims = set(victims_of(ok))
    found: dict[str, None] = {}
    for run in ok:
        for key, value in run.metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or key.split("/")[0] in NOT_METRICS \
                    or key.split("/")[0] == "robust":  # after sharing: a section of its own (report/robustness.py)
                continue
            parts = key.split("/")
            if parts[-1] in victims or parts[-1] == "mean":
                found["/".join(parts[:-1])] = None
            elif len(parts) >= 3 and parts[-2] in victims:
                found["/".join(parts[:-2])] = None
            elif len(parts) == 1:
                found[key] = None
    families = [f for f in found if f]
    return [f for f in PREFERRED if f in families] + [f for f in families if f not in PREFERRED]


@dataclass
class SeedGroup:
    """Runs that differ only in their seed: one method, one row of a metric table (mean ± std over seeds)."""

    label: str
    runs: list[Run]
    parts: dict[str, str] = field(default_factory=dict)  # what differs from the other methods: {key: value}

    @property
    def random_victims(self) -> list[str]:
        return list(dict.fromkeys(v for run in self.runs for v in run.random_victims))


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation with n − 1, n) of the non-NaN values; std is NaN for n < 2.

    Python's `statistics` computes both exactly (in fractions) before rounding once, so equal seeds give a std
    of exactly 0, not 1.7e-17 (which the report would print in scientific notation)."""
    finite = [v for v in values if not math.isnan(v)]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    if any(math.isinf(v) for v in finite):
        return sum(finite) / n, math.nan, n
    return statistics.mean(finite), statistics.stdev(finite) if n > 1 else math.nan, n


def fmt_mean_std(values: Sequence[float], digits: int = 3) -> str:
    mean, std, n = mean_std(values)
    return fmt_stat(mean, std, n, digits)


def fmt_stat(mean: float, std: float, n: int, digits: int = 3, with_n: bool = True) -> str:
    """`mean ± std (n=k)`; one value: `mean (n=1)`; `with_n=False` (every row has one run): the value alone."""
    if n == 0:
        return DASH
    if not with_n:
        return fmt_number(mean, digits)
    if n == 1:
        return f"{fmt_number(mean, digits)} (n=1)"
    return f"{fmt_number(mean, digits)} ± {fmt_number(std, digits)} (n={n})"
