"""The five success metrics of one key (a victim, or victim/condition), built and fed together.

The evaluation callback judges the watermark as crafted and the robustness judge judges it after each sharing
transform with the same five metrics; building and updating them in one place keeps the two from drifting.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Protocol

from torch import Tensor
from torchmetrics import Metric

from advwm.metrics.distortion import AttackRate, AverageDistortion, RuizSuccess
from advwm.metrics.sr_mask import L2Mask, SRMask

SUCCESS_KINDS = ("sr_mask", "l2_mask", "ruiz", "avg_l", "attack_rate")


class SuccessThresholds(Protocol):
    """What the five metrics read from the metrics settings (MetricSettings, RobustnessThresholds)."""

    success_threshold: float
    mask_threshold: float
    ruiz_threshold: float
    tau: float


def _name(prefix: str, kind: str, key: str) -> str:
    return f"{prefix}/{kind}/{key}" if prefix else f"{kind}/{key}"


def success_metrics(prefix: str, key: str, thresholds: SuccessThresholds) -> dict[str, Metric]:
    """`<prefix>/<kind>/<key>` (or `<kind>/<key>` without a prefix) -> a fresh metric, for each kind."""
    built: dict[str, Metric] = {
        "sr_mask": SRMask(threshold=thresholds.success_threshold, mask_threshold=thresholds.mask_threshold),
        "l2_mask": L2Mask(mask_threshold=thresholds.mask_threshold),
        "ruiz": RuizSuccess(threshold=thresholds.ruiz_threshold),
        "avg_l": AverageDistortion(),
        "attack_rate": AttackRate(tau=thresholds.tau),
    }
    return {_name(prefix, kind, key): metric for kind, metric in built.items()}


def update_success_metrics(metrics: MutableMapping[str, Metric], prefix: str, key: str, x: Tensor, fake: Tensor,
                           fake_protected: Tensor) -> None:
    """Feed one batch: faces x, the victim's edit of x and of the protected x (the masks need x)."""
    for kind in ("sr_mask", "l2_mask"):
        metrics[_name(prefix, kind, key)].update(x, fake, fake_protected)
    for kind in ("ruiz", "avg_l", "attack_rate"):
        metrics[_name(prefix, kind, key)].update(fake, fake_protected)
