"""Which row of a metric table is best: the direction of each metric family, written down once, and the rule
for crowning a winner only when the spreads over seeds do not overlap.

Direction (for the watermark, i.e. for the attacker of the face-editing GAN), per metric family:

| family | better | why |
|---|---|---|
| `sr_mask`, `l2_mask`, `ruiz`, `avg_l`, `attack_rate` | higher | the fake of the protected photo moves further |
|   |   | from the fake of the clean photo: more fakes broken |
| `fid` | higher | the protected fakes are more distorted (further from the reference fakes) |
| `psnr`, `ssim` | higher | protected vs clean photo: a higher value is a less visible watermark |
| `liveness/acs_after`, `liveness/tfhc_after` | lower | the protected fakes look less like a real face (HyperFAS) |
| `liveness/acs_before`, `liveness/tfhc_before` | none | the fakes of the clean photos: no watermark in them |

Any other family (and the bookkeeping keys) has no direction: its table marks no best value. PSNR/SSIM and the
success metrics pull against each other; each table ranks its own family only.

Best and ties, per column: the best row has the highest (lowest) mean. Each row's spread is its mean ± its
sample standard deviation over seeds (no spread with one seed). When the best row's spread overlaps another
row's (closed intervals, so equal means tie too), no row is crowned: the best row and every row overlapping it
are marked "tied" and the table says which ("tied within spread with ..."); otherwise the best row alone is
marked "best". A column with fewer than two values marks nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Direction = Literal["max", "min"]
BEST, TIED = "best", "tied"

HIGHER_IS_BETTER = ("sr_mask", "l2_mask", "ruiz", "avg_l", "attack_rate", "fid", "psnr", "ssim")
LOWER_IS_BETTER = ("liveness/acs_after", "liveness/tfhc_after")
WHY = {
    "sr_mask": "more fakes broken", "l2_mask": "fakes moved further", "ruiz": "more fakes broken",
    "avg_l": "fakes moved further", "attack_rate": "more fakes broken", "fid": "fakes more distorted",
    "psnr": "watermark less visible", "ssim": "watermark less visible",
    "liveness/acs_after": "protected fakes look less real", "liveness/tfhc_after": "protected fakes look less real",
}


def _base(family: str) -> str:
    """`robust/<transform>/<family>` (after sharing) ranks as `<family>`."""
    parts = family.split("/")
    return "/".join(parts[2:]) if parts[0] == "robust" and len(parts) >= 3 else family


def direction(family: str) -> Direction | None:
    """`"max"`, `"min"` or None (no best is marked) for a metric family."""
    family = _base(family)
    if family in HIGHER_IS_BETTER:
        return "max"
    if family in LOWER_IS_BETTER:
        return "min"
    return None


def direction_note(family: str) -> str:
    """One sentence for under the table: the direction and what it means."""
    found = direction(family)
    if found is None:
        return f"{family}: no direction is defined, so no value is marked best."
    word = "Higher" if found == "max" else "Lower"
    return (f"{word} is better ({WHY[_base(family)]}). "
            "Marked per column: the best mean, or, where its mean ± std overlaps another row's, the rows tied "
            "within spread.")


@dataclass(frozen=True)
class Stat:
    """A cell: mean and sample standard deviation over the seeds with a value (std NaN for one seed)."""

    mean: float
    std: float
    n: int

    @property
    def spread(self) -> tuple[float, float]:
        half = 0.0 if math.isnan(self.std) else self.std
        return self.mean - half, self.mean + half

    @property
    def known(self) -> bool:
        return self.n > 0 and not math.isnan(self.mean)


def mark_column(stats: Sequence[Stat], how: Direction | None) -> list[str]:
    """Per row: "best", "tied" or "" (the rule in the module docstring)."""
    marks = [""] * len(stats)
    known = [i for i, s in enumerate(stats) if s.known]
    if how is None or len(known) < 2:
        return marks
    sign = 1.0 if how == "max" else -1.0
    best = max(known, key=lambda i: sign * stats[i].mean)  # the first of equal means
    low, high = stats[best].spread
    tied = [i for i in known if i != best and stats[i].spread[0] <= high and low <= stats[i].spread[1]]
    if not tied:
        marks[best] = BEST
    else:
        for i in (best, *tied):
            marks[i] = TIED
    return marks


def tie_note(column: str, labels: Sequence[str], marks: Sequence[str], stats: Sequence[Stat],
             how: Direction | None) -> str | None:
    """"<column>: no clear best: <best> tied within spread with <others>." or None when a row was crowned."""
    tied = [i for i, m in enumerate(marks) if m == TIED]
    if not tied:
        return None
    sign = 1.0 if how == "max" else -1.0
    best = max(tied, key=lambda i: sign * stats[i].mean)
    others = ", ".join(labels[i] for i in tied if i != best)
    return f"{column}: no clear best: {labels[best]} (best mean) tied within spread with {others}."
