"""Where a metric decides success, the boundary is decided by the definition, with exactly representable values.

SR_mask (CMUA): mask = pixels with sum_c |G(x) - x| > mask_threshold (strict); success when L2_mask > threshold
(strict). Ruiz and attack_rate: L > their own threshold (strict). Every value below is a sum of powers of two, so
float32 and float64 hold it exactly and no rounding can move a value across its threshold.
"""

from __future__ import annotations

import pytest
import torch

from advwm.callbacks.evaluation import MetricSettings
from advwm.metrics import AttackRate, RuizSuccess, SRMask, masked_l2
from advwm.metrics.success import success_metrics, update_success_metrics


def _edit(level: float, difference: float, size: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: G(x) - x = `level` in every channel (so the mask statistic is 3 * level per pixel), and the
    protected fake differs from the clean fake by `difference` everywhere (so L2_mask = L = difference**2)."""
    x = torch.zeros(1, 3, size, size)
    fake = torch.full_like(x, level)
    return x, fake, fake + difference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sr_mask_success_is_strictly_above_its_threshold(dtype: torch.dtype) -> None:
    """L2_mask = 0.25**2 = 0.0625 exactly: at a threshold of 0.0625 not a success, at 0.0625 - 2**-10 a success."""
    x, fake, fake_protected = (t.to(dtype) for t in _edit(level=0.5, difference=0.25))
    l2, empty = masked_l2(x, fake, fake_protected)
    assert not bool(empty[0]) and float(l2[0]) == 0.0625
    for threshold, expected in ((0.0625, 0.0), (0.0625 - 2**-10, 1.0), (0.0625 + 2**-10, 0.0)):
        metric = SRMask(threshold=threshold)
        metric.update(x, fake, fake_protected)
        assert float(metric.compute()) == expected, threshold


def test_the_mask_takes_pixels_strictly_above_the_mask_threshold() -> None:
    """sum_c |G(x) - x| = 3 * 0.125 = 0.375 exactly: at mask_threshold 0.375 the mask is empty (a failure, counted
    apart), just below it every pixel is in."""
    x, fake, fake_protected = _edit(level=0.125, difference=0.5)
    _, empty = masked_l2(x, fake, fake_protected, mask_threshold=0.375)
    assert bool(empty[0])
    at = SRMask(threshold=0.05, mask_threshold=0.375)
    at.update(x, fake, fake_protected)
    assert float(at.compute()) == 0.0 and int(at.empty_count()) == 1
    below = SRMask(threshold=0.05, mask_threshold=0.375 - 2**-10)
    below.update(x, fake, fake_protected)
    assert float(below.compute()) == 1.0 and int(below.empty_count()) == 0


def test_ruiz_and_attack_rate_are_strict_at_an_exact_loss() -> None:
    """Half the values differ by 0.5, half by 0: L = mean(diff**2) = 0.125 exactly."""
    clean = torch.zeros(1, 3, 4, 4)
    adv = clean.clone()
    adv[..., :2] = 0.5
    for metric in (RuizSuccess(threshold=0.125), AttackRate(tau=0.125)):
        metric.update(clean, adv)
        assert float(metric.compute()) == 0.0, type(metric).__name__
    for metric in (RuizSuccess(threshold=0.125 - 2**-10), AttackRate(tau=0.125 - 2**-10)):
        metric.update(clean, adv)
        assert float(metric.compute()) == 1.0, type(metric).__name__


def test_each_success_metric_reads_its_own_threshold() -> None:
    """Built as the evaluation builds them (`success_metrics` from the metrics settings), with every threshold
    different: losses L = 0.0625 and 0.25 (exact) sit between them, so each metric's share says which threshold it
    read. attack_rate (tau = 0.125): 1/2; Ruiz (0.03125): 2/2; SR_mask (0.5, above both): 0/2."""
    settings = MetricSettings(success_threshold=0.5, mask_threshold=1.0, ruiz_threshold=0.03125, tau=0.125)
    metrics = success_metrics("", "v", settings)
    x = torch.zeros(2, 3, 4, 4)
    fake = torch.full_like(x, 0.5)  # mask statistic 1.5 > 1.0 everywhere
    fake_protected = fake.clone()
    fake_protected[0] += 0.25  # L = L2_mask = 0.0625
    fake_protected[1] += 0.5  # L = L2_mask = 0.25
    update_success_metrics(metrics, "", "v", x, fake, fake_protected)
    assert float(metrics["attack_rate/v"].compute()) == 0.5
    assert float(metrics["ruiz/v"].compute()) == 1.0
    assert float(metrics["sr_mask/v"].compute()) == 0.0
    assert float(metrics["avg_l/v"].compute()) == pytest.approx((0.0625 + 0.25) / 2, abs=0)
