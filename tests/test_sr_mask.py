"""SR_mask / L2_mask on a hand-made batch: one success, one failure just below 0.05, one empty mask."""

from __future__ import annotations

import math
import warnings

import torch

from advwm.metrics import L2Mask, SRMask, masked_l2

# x = 0.5 everywhere (exact in binary, so 0.25 + 0.25 = 0.5 sits exactly on the mask threshold)
X = torch.full((3, 3, 2, 2), 0.5)
L2_IMAGE_0 = 0.27 / 3  # one masked pixel, 0.3 on each channel: 3 * 0.09 / (3 * 1)
L2_IMAGE_1 = (0.27 + 0.17**2) / 6  # two masked pixels: 0.27 + 0.0289 over 3 * 2 = 0.04982 < 0.05


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    clean = X.clone()
    adv = X.clone()
    # image 0: pixel (0,0) edited by 0.5 per channel (sum 1.5 > 0.5: masked); pixel (0,1) by 0.1 per
    # channel (sum 0.3: not masked). Protected fake moves the masked pixel by 0.3 per channel and an
    # unmasked pixel by 1.0 (which must not count).
    clean[0, :, 0, 0] += 0.5
    clean[0, :, 0, 1] += 0.1
    adv[0] = clean[0]
    adv[0, :, 0, 0] += 0.3
    adv[0, :, 1, 1] += 1.0
    # image 1: pixels (0,0) and (1,0) masked; pixel (1,1) edited by [0.25, 0.25, 0] (sum exactly 0.5: not
    # masked, the threshold is strict) and heavily distorted, which must not count.
    clean[1, :, 0, 0] -= 0.5
    clean[1, :, 1, 0] += 0.5
    clean[1, 0, 1, 1] += 0.25
    clean[1, 1, 1, 1] += 0.25
    adv[1] = clean[1]
    adv[1, :, 0, 0] += 0.3
    adv[1, 0, 1, 0] -= 0.17
    adv[1, :, 1, 1] += 0.9
    # image 2: the victim barely edits (0.1 per channel everywhere): empty mask, large distortion anyway
    clean[2] += 0.1
    adv[2] = clean[2] + 0.8
    return X.clone(), clean, adv


def test_masked_l2_per_image() -> None:
    x, clean, adv = _batch()
    l2, empty = masked_l2(x, clean, adv)
    assert empty.tolist() == [False, False, True]
    assert math.isclose(float(l2[0]), L2_IMAGE_0, rel_tol=1e-6)
    assert math.isclose(float(l2[1]), L2_IMAGE_1, rel_tol=1e-6)
    assert L2_IMAGE_1 < 0.05
    assert math.isnan(float(l2[2]))
    # a lower mask threshold takes in pixel (1,1) of image 1 (and more of image 0)
    l2_low, _ = masked_l2(x, clean, adv, mask_threshold=0.25)
    assert float(l2_low[1]) > L2_IMAGE_1


def test_sr_mask_success_rate_and_empty_count() -> None:
    x, clean, adv = _batch()
    metric = SRMask()
    metric.update(x, clean, adv)
    assert math.isclose(float(metric.compute()), 1 / 3, rel_tol=1e-9)
    assert int(metric.empty_count()) == 1
    assert int(metric.total) == 3 and int(metric.successes) == 1
    # pooled over updates: split the same batch in two, then add a second copy
    split = SRMask()
    split.update(x[:1], clean[:1], adv[:1])
    split.update(x[1:], clean[1:], adv[1:])
    split.update(x, clean, adv)
    assert math.isclose(float(split.compute()), 1 / 3, rel_tol=1e-9)
    assert int(split.empty_count()) == 2
    # a lower success threshold turns image 1 into a success; the empty mask stays a failure
    lenient = SRMask(threshold=0.04)
    lenient.update(x, clean, adv)
    assert math.isclose(float(lenient.compute()), 2 / 3, rel_tol=1e-9)
    metric.reset()
    with warnings.catch_warnings():  # torchmetrics warns about compute() before update(): intended here
        warnings.simplefilter("ignore", UserWarning)
        assert int(metric.total) == 0 and math.isnan(float(metric.compute()))


def test_l2_mask_mean_over_non_empty() -> None:
    x, clean, adv = _batch()
    metric = L2Mask()
    metric.update(x, clean, adv)
    assert math.isclose(float(metric.compute()), (L2_IMAGE_0 + L2_IMAGE_1) / 2, rel_tol=1e-6)
    metric.update(x[2:], clean[2:], adv[2:])  # only an empty mask: the mean does not move
    assert math.isclose(float(metric.compute()), (L2_IMAGE_0 + L2_IMAGE_1) / 2, rel_tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert math.isnan(float(L2Mask().compute()))
