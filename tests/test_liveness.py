"""HyperFAS port (against the Keras reference outputs), its preprocessing and the Liveness metric."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fixtures_root

from advwm.metrics import (
    Liveness,
    LivenessWeightsMissing,
    central_crop,
    hyperfas_input,
    load_hyperfas,
    reference_square_crop,
)
from advwm.metrics.liveness import _same_padding


def _model_path() -> Path:
    return fixtures_root().parent / "models" / "hyperfas" / "fas.h5"


def _case_path() -> Path:
    return fixtures_root() / "liveness" / "hyperfas_case.pt"


@pytest.fixture(scope="module")
def hyperfas():
    path = _model_path()
    if not path.is_file():
        pytest.skip(f"HyperFAS weights not found at {path} (get model/fas.h5 from github.com/zeusees/HyperFAS)")
    torch.set_num_threads(1)
    return load_hyperfas(path)


def test_matches_keras_reference(hyperfas):
    case_path = _case_path()
    if not case_path.is_file():
        pytest.skip(f"Keras reference case not found at {case_path} (set ADVWM_FIXTURES)")
    case = torch.load(case_path)
    x, expected = case["x_bgr_nchw"], case["score"]
    with torch.no_grad():
        got = hyperfas(x)
    assert got.shape == expected.shape == (10,)
    diff = (got - expected).abs().max().item()
    print(f"HyperFAS port vs Keras: max abs diff {diff:.3e}")
    assert diff < 1e-5


def test_model_is_frozen_and_stays_in_eval(hyperfas):
    assert not any(p.requires_grad for p in hyperfas.parameters())
    hyperfas.train()
    assert not hyperfas.training
    assert not any(m.training for m in hyperfas.modules())
    with pytest.raises(ValueError, match="224"):
        hyperfas(torch.zeros(1, 3, 112, 112))


def test_missing_weights_says_where_to_get_them(tmp_path):
    with pytest.raises(LivenessWeightsMissing, match="zeusees/HyperFAS") as info:
        load_hyperfas(tmp_path / "nope" / "fas.h5")
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "nope" / "fas.h5") in str(info.value)


def test_tensorflow_same_padding():
    # total = (ceil(n / s) - 1) * s + k - n, the odd pixel after.
    assert _same_padding(224, 3, 2, 1) == (0, 1)  # 111*2 + 3 - 224 = 1
    assert _same_padding(7, 3, 2, 1) == (1, 1)  # 3*2 + 3 - 7 = 2
    assert _same_padding(112, 3, 1, 1) == (1, 1)
    assert _same_padding(4, 1, 1, 1) == (0, 0)


def test_reference_square_crop_by_hand():
    # box 80 x 100 at centre (140, 100): r = int(0.6 * 100) = 60
    assert reference_square_crop((100, 50, 180, 150), height=480, width=640) == (80, 40, 200, 160)
    # near the top-left corner: w=50, h=60, r=36, c=(25, 30) -> clipped at 0
    assert reference_square_crop((0, 0, 50, 60), height=100, width=100) == (0, 0, 61, 66)
    # near the bottom-right: box end clipped to size-1 (99), crop end to size-2 (98)
    # box -> (60, 70, 99, 99): w=39, h=29, r=int(23.4)=23, c=(79, 84)
    assert reference_square_crop((60, 70, 120, 130), height=100, width=100) == (56, 61, 98, 98)
    # float boxes are truncated like the reference's astype('int32')
    assert reference_square_crop((100.9, 50.2, 180.7, 150.9), height=480, width=640) == (80, 40, 200, 160)


def test_central_crop_numbers():
    assert central_crop(256, 256) == (32, 32, 224, 224)  # side 0.75 * 256 = 192
    assert central_crop(128, 128) == (16, 16, 112, 112)  # side 96
    assert central_crop(256, 256, fraction=0.75, shift_y=0.08) == (32, 47, 224, 239)  # 32 + round(15.36)
    assert central_crop(100, 200, fraction=1.0) == (50, 0, 150, 100)
    with pytest.raises(ValueError):
        central_crop(10, 10, fraction=0.0)


def test_input_pixels_and_channel_order():
    # A 224 x 224 image with crop fraction 1: no resize, so the input is the 8-bit image, BGR, (v - 127.5) / 127.5.
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 224, 224, generator=g) * 2 - 1
    got = hyperfas_input(images, crop_fraction=1.0)
    v = np.rint((images.double().numpy() + 1.0) * 127.5)  # 8-bit pixel values
    expected = (v[:, ::-1] - 127.5) / 127.5
    assert got.shape == (2, 3, 224, 224)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    # Without quantisation the mapping is the identity up to the channel flip.
    raw = hyperfas_input(images, crop_fraction=1.0, quantize=False)
    torch.testing.assert_close(raw, images.flip(1), atol=1e-6, rtol=0)


def test_input_crops_then_resizes():
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(2, 3, 256, 256, generator=g) * 2 - 1).double()
    # central rule: rows/cols 32..223, resized 192 -> 224
    got = hyperfas_input(images, quantize=False)
    crop = ((images[:, :, 32:224, 32:224] + 1) * 127.5).flip(1)
    ref = F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got.double(), (ref - 127.5) / 127.5, atol=1e-6, rtol=0)
    # box rule: per-image boxes, crops from reference_square_crop
    boxes = [(60, 70, 180, 200), (0, 0, 100, 90)]
    got = hyperfas_input(images, boxes=boxes, quantize=False)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = reference_square_crop(box, 256, 256)
        crop = ((images[i : i + 1, :, y1:y2, x1:x2] + 1) * 127.5).flip(1)
        ref = F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False)
        torch.testing.assert_close(got[i : i + 1].double(), (ref - 127.5) / 127.5, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        hyperfas_input(images, boxes=boxes[:1])


def test_liveness_metric_by_hand():
    scores = [[0.5, 0.995, 0.99], [1.0, 0.2], [0.991]]
    metric = Liveness(threshold=0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        assert math.isnan(metric.compute()["acs"])
    metric.reset()
    for batch in scores:
        metric.update(torch.tensor(batch, dtype=torch.float64))
    flat = [s for batch in scores for s in batch]
    acs = sum(flat) / len(flat)
    tfhc = sum(1 for s in flat if s > 0.99) / len(flat)  # 0.99 itself is not "above"
    out = metric.compute()
    assert set(out) == {"acs", "tfhc"}
    assert out["acs"].item() == pytest.approx(acs, abs=1e-12)
    assert out["tfhc"].item() == pytest.approx(tfhc, abs=1e-12) == 3 / 6
    metric.update(torch.tensor([[0.0]]))  # [B, 1] is accepted too
    assert metric.compute()["tfhc"].item() == pytest.approx(3 / 7)
    with pytest.raises(ValueError):
        Liveness().update(torch.rand(2, 3, 8, 8))  # images need a model


def test_liveness_metric_on_images(hyperfas):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 128, 128, generator=g) * 2 - 1
    with torch.no_grad():
        scores = hyperfas(hyperfas_input(images))
    metric = Liveness(model=hyperfas)
    metric.train()  # e.g. a LightningModule switching to training: the model must stay in eval mode
    assert not hyperfas.training
    metric.update(images)
    out = metric.compute()
    assert out["acs"].item() == pytest.approx(scores.double().mean().item(), abs=1e-7)
    assert out["tfhc"].item() == pytest.approx((scores > 0.99).double().mean().item())
