"""Ruiz success, avg_L, attack_rate, and PSNR/SSIM of the watermark, against plain numpy loops."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from advwm.metrics import (
    AttackRate,
    AverageDistortion,
    PerImagePSNR,
    PerImageSSIM,
    RuizSuccess,
    per_image_mse,
    per_image_psnr,
    per_image_ssim,
)

torch.set_num_threads(1)


def _mse_loops(a: np.ndarray, b: np.ndarray) -> list[float]:
    out = []
    for i in range(a.shape[0]):
        total, count = 0.0, 0
        for c in range(a.shape[1]):
            for y in range(a.shape[2]):
                for x in range(a.shape[3]):
                    total += (float(b[i, c, y, x]) - float(a[i, c, y, x])) ** 2
                    count += 1
        out.append(total / count)
    return out


def _batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three (fake_clean, fake_adv) batches, one per 'condition', with per-image distortions around 0.05."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (3, 2, 4):
        clean = torch.rand(n, 3, 5, 6, generator=g) * 2 - 1
        scale = torch.linspace(0.05, 0.6, n).reshape(n, 1, 1, 1)
        adv = clean + scale * torch.randn(clean.shape, generator=g)
        out.append((clean, adv))
    return out


def test_per_image_mse_by_hand():
    clean, adv = _batches()[0]
    np.testing.assert_allclose(per_image_mse(clean, adv).numpy(), _mse_loops(clean.numpy(), adv.numpy()), rtol=1e-12)
    with pytest.raises(ValueError):
        per_image_mse(clean, adv[:1])


def test_distortion_metrics_by_hand():
    batches = _batches()
    losses = [v for clean, adv in batches for v in _mse_loops(clean.numpy(), adv.numpy())]
    assert any(v > 0.05 for v in losses) and any(v <= 0.05 for v in losses)
    ruiz, avg, rate = RuizSuccess(), AverageDistortion(), AttackRate(tau=0.05)
    rate_hi = AttackRate(tau=0.2)
    for clean, adv in batches:
        for metric in (ruiz, avg, rate, rate_hi):
            metric.update(clean, adv)
    share = sum(1 for v in losses if v > 0.05) / len(losses)
    assert ruiz.compute().item() == pytest.approx(share, abs=1e-12)
    assert rate.compute().item() == pytest.approx(share, abs=1e-12)
    assert rate_hi.compute().item() == pytest.approx(sum(1 for v in losses if v > 0.2) / len(losses), abs=1e-12)
    assert avg.compute().item() == pytest.approx(sum(losses) / len(losses), rel=1e-12)
    assert rate_hi.tau == 0.2


def test_threshold_is_strict_and_empty_is_nan():
    clean = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    adv = clean.clone()
    adv[0] += math.sqrt(0.05)  # L exactly 0.05: not a success
    adv[1] += 0.5  # L = 0.25
    metric = RuizSuccess(threshold=0.05)
    metric.update(clean, adv)
    assert metric.compute().item() == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        for fresh in (RuizSuccess(), AverageDistortion(), AttackRate(), PerImagePSNR(), PerImageSSIM()):
            assert math.isnan(fresh.compute().item())


def test_psnr_constant_offset():
    g = torch.Generator().manual_seed(3)
    clean = torch.rand(4, 3, 8, 8, generator=g) * 1.8 - 0.9
    protected = clean + 0.05  # MSE = 0.0025, data range 2 -> PSNR = 10 log10(4 / 0.0025) = 32.0412 dB
    expected = 10 * math.log10(4 / 0.0025)
    np.testing.assert_allclose(per_image_psnr(protected, clean).numpy(), [expected] * 4, rtol=1e-6)
    metric = PerImagePSNR()
    metric.update(protected, clean)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)


def test_psnr_is_averaged_per_image():
    clean = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    protected = clean.clone()
    protected[0] += 0.05
    protected[1] += 0.2
    expected = [10 * math.log10(4 / v) for v in _mse_loops(clean.numpy(), protected.numpy())]
    metric = PerImagePSNR()
    metric.update(protected[:1], clean[:1])
    metric.update(protected[1:], clean[1:])
    # rel 1e-7: torchmetrics' PSNR uses float32 constants (log(data_range), 10 / log(10)) even on float64 input
    assert metric.compute().item() == pytest.approx(sum(expected) / 2, rel=1e-7)
    # not the PSNR of the pooled MSE
    pooled = 10 * math.log10(4 / np.mean(_mse_loops(clean.numpy(), protected.numpy())))
    assert abs(metric.compute().item() - pooled) > 1.0


def _ssim_loops(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> list[float]:
    """SSIM with an 11x11 Gaussian window (sigma 1.5), reflect padding, the map averaged over C, H, W."""
    k, sigma = 11, 1.5
    r = k // 2
    dist = np.arange(k) - r
    g1 = np.exp(-(dist**2) / (2 * sigma**2))
    g1 /= g1.sum()
    window = np.outer(g1, g1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = []
    for i in range(a.shape[0]):
        total, count = 0.0, 0
        for c in range(a.shape[1]):
            pa = np.pad(a[i, c], r, mode="reflect")
            pb = np.pad(b[i, c], r, mode="reflect")
            for y in range(a.shape[2]):
                for x in range(a.shape[3]):
                    wa, wb = pa[y : y + k, x : x + k], pb[y : y + k, x : x + k]
                    mu_a, mu_b = (window * wa).sum(), (window * wb).sum()
                    var_a = max((window * wa * wa).sum() - mu_a**2, 0.0)
                    var_b = max((window * wb * wb).sum() - mu_b**2, 0.0)
                    cov = (window * wa * wb).sum() - mu_a * mu_b
                    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
                    total += s
                    count += 1
        out.append(total / count)
    return out


def test_ssim_by_hand():
    g = torch.Generator().manual_seed(4)
    clean = torch.rand(2, 3, 12, 12, generator=g, dtype=torch.float64) * 2 - 1
    protected = (clean + 0.1 * torch.randn(clean.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    expected = _ssim_loops(protected.numpy(), clean.numpy())
    np.testing.assert_allclose(per_image_ssim(protected, clean).numpy(), expected, rtol=1e-9)
    metric = PerImageSSIM()
    metric.update(protected[:1], clean[:1])
    metric.update(protected[1:], clean[1:])
    assert metric.compute().item() == pytest.approx(sum(expected) / 2, rel=1e-9)
    assert per_image_ssim(clean, clean).numpy() == pytest.approx([1.0, 1.0], abs=1e-12)
