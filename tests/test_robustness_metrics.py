"""Robustness evaluation (metrics.robustness): sharing transforms with real codecs, and every success metric
after them, against hand computations."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image
from scipy import ndimage
from toys import LinearVictim

from advwm.callbacks.evaluation import Judge, MetricSettings
from advwm.metrics.robustness import (
    RobustnessJudge,
    parse_transform,
    parse_transforms,
)

pytestmark = pytest.mark.usefixtures("single_thread")
LEVEL = 1 / 127.5  # one 8-bit level in [-1,1] units
ALL = ["jpeg95", "jpeg75", "jpeg50", "resize0.5", "blur1", "crop0.9", "png"]


def face(size: int = 64) -> torch.Tensor:
    """The demo's held-out face (Grace Hopper) at `size`, on the 8-bit grid: [1,3,S,S] in [-1,1]."""
    from advwm.data import DemoDataModule

    demo = DemoDataModule(craft=["astronaut"], evaluate=["grace_hopper"], image_size=size)
    demo.setup()
    x = next(iter(demo.eval_dataloader()))["image"]
    return ((x + 1) * 127.5).round() / 127.5 - 1


def pil_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip written out: [-1,1] -> 8 bits -> Pillow encode/decode in memory -> [-1,1]."""
    out = []
    for image in x:
        array = ((image.permute(1, 2, 0).double().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        decoded = np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float64)
        out.append(torch.from_numpy(decoded / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(out).float()


# ---------------------------------------------------------------------------------------------- names


def test_names_parse_into_transforms() -> None:
    parsed = {t.name: (t.kind, t.value) for t in parse_transforms(ALL)}
    assert parsed == {"jpeg95": ("jpeg", 95.0), "jpeg75": ("jpeg", 75.0), "jpeg50": ("jpeg", 50.0),
                      "resize0.5": ("resize", 0.5), "blur1": ("blur", 1.0), "crop0.9": ("crop", 0.9),
                      "png": ("png", 0.0)}
    assert parse_transforms([]) == [] and parse_transforms(None) == []


@pytest.mark.parametrize(("names", "message"), [
    (["jpg75"], "unknown transform 'jpg75'"),
    (["jpeg"], "unknown transform 'jpeg'"),
    (["jpeg0"], "integer from 1 to 100"),
    (["jpeg101"], "integer from 1 to 100"),
    (["jpeg75.5"], "integer from 1 to 100"),
    (["resize1"], "strictly between 0 and 1"),
    (["resize0"], "strictly between 0 and 1"),
    (["crop1.2"], "strictly between 0 and 1"),
    (["blur0"], "sigma must be positive"),
    (["jpeg75", "jpeg75"], "more than once"),
    ("jpeg75", "must be a list"),
])
def test_a_bad_transform_name_is_one_line_naming_what_to_change(names, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        parse_transforms(names)
    assert "\n" not in str(error.value) and "metrics.robustness" in str(error.value)


def test_metric_settings_parse_the_list_and_the_config_defaults() -> None:
    from test_configs import compose_with

    default = instantiate(compose_with("metrics=default").metrics)
    assert default.robustness == ["jpeg95", "jpeg75", "jpeg50", "resize0.5", "blur1", "crop0.9"]
    assert instantiate(compose_with("metrics=fast").metrics).robustness == []
    with pytest.raises(ValueError, match="unknown transform 'webp'"):
        MetricSettings(robustness=["webp"])


# ------------------------------------------------------------------------------------ the transforms


def test_jpeg_is_pillows_codec_and_loses_more_at_lower_quality() -> None:
    x = face()
    errors = {}
    for quality in (95, 75, 50):
        shared = parse_transform(f"jpeg{quality}")(x)
        assert torch.equal(shared, pil_jpeg(x, quality))
        errors[quality] = float((shared - x).abs().mean())
    assert 0 < errors[95] < errors[75] < errors[50]


def test_png_is_the_8_bit_round_trip_only() -> None:
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    shared = parse_transform("png")(x)
    assert torch.equal(shared, (((x.double() + 1) * 127.5).round() / 127.5 - 1).float())
    assert (shared - x).abs().max() <= LEVEL / 2 + 1e-6


@pytest.mark.parametrize("name", ["resize0.5", "resize0.75", "crop0.9", "crop0.5"])
def test_resize_and_crop_match_an_antialiased_bicubic_in_torch(name: str) -> None:
    """Pillow's bicubic (a = -0.5, antialiased when shrinking) and torch's antialiased bicubic are the same filter:
    the 8-bit results agree to rounding (mean under 1 level), while the transform itself moves far more."""
    x, size = face(), 64
    transform = parse_transform(name)
    side = round(size * transform.value)
    if transform.kind == "resize":
        down = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        expected = F.interpolate(down, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    else:
        start = (size - side) // 2
        expected = F.interpolate(x[..., start:start + side, start:start + side], size=(size, size), mode="bicubic",
                                 antialias=True, align_corners=False)
    shared = transform(x)
    assert float((shared - expected.clamp(-1, 1)).abs().mean()) < LEVEL
    assert float((shared - x).abs().mean()) > 4 * LEVEL


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_is_a_gaussian_of_that_sigma(sigma: float) -> None:
    """Pillow approximates the Gaussian with extended box filters: within 1 level on average of the exact one."""
    x = face()
    exact = torch.from_numpy(ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest"))
    shared = parse_transform(f"blur{sigma:g}")(x)
    assert float((shared.double() - exact).abs().mean()) < LEVEL
    wider = torch.from_numpy(ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, 2 * sigma, 2 * sigma),
                                                     mode="nearest"))
    assert float((shared.double() - exact).abs().mean()) < float((shared.double() - wider).abs().mean())


def test_a_flat_image_survives_every_resampler_unchanged() -> None:
    x = torch.full((1, 3, 32, 32), 40 / 127.5 - 1)
    for name in ("resize0.5", "blur1", "crop0.9", "png"):
        assert torch.equal(parse_transform(name)(x), x), name


# --------------------------------------------------------------------------------- the comparison


def judge_batch(names: list[str], victim: LinearVictim, x: torch.Tensor, delta: torch.Tensor,
                per_condition: bool = False) -> dict:
    judge = RobustnessJudge(parse_transforms(names), [victim], MetricSettings(), torch.device("cpu"),
                            per_condition)
    judge.update(x, (x + delta).clamp(-1, 1), torch.zeros(x.shape[0], 40), lambda v, b, purpose: 1)
    return judge.results()


@pytest.mark.parametrize("name", ALL)
def test_no_watermark_means_no_success_under_any_transform(name: str) -> None:
    """delta = 0: the shared protected photo IS the shared clean photo, so nothing is counted, although the
    transform alone moves the fake (crop and resize by more than the 0.05 threshold)."""
    x = torch.cat([face(), face().flip(-1)])
    victim = LinearVictim("a", 3.0)
    values = judge_batch([name], victim, x, torch.zeros(1, 3, 64, 64))
    for metric in ("sr_mask", "ruiz", "avg_l", "attack_rate"):
        assert values[f"robust/{name}/{metric}/a"] == 0.0, metric
        assert values[f"robust/{name}/{metric}/mean"] == 0.0
    assert values[f"robust/{name}/l2_mask/a"] == 0.0
    if name.startswith(("crop", "resize")):  # what a comparison with G(x) would have counted as "protection"
        with torch.no_grad():
            moved = (victim(parse_transform(name)(x), torch.zeros(2, 1)) - victim(x, torch.zeros(2, 1))).pow(2)
        assert float(moved.flatten(1).mean(1).min()) > 0.05


def by_hand(shared_clean: torch.Tensor, shared_protected: torch.Tensor, gain: float, levels: tuple[float, ...]):
    """SR_mask, L2_mask, avg_L, attack_rate of G(x, c) = gain (1 + c) x, pooled over images x conditions,
    written out in float64 numpy (mask from T(x) and G(T(x)), the reference fake G(T(x)))."""
    successes, l2s, losses = [], [], []
    clean, protected = shared_clean.double().numpy(), shared_protected.double().numpy()
    for c in levels:
        for b in range(clean.shape[0]):
            fake = gain * (1 + c) * clean[b]
            fake_protected = gain * (1 + c) * protected[b]
            sq = (fake_protected - fake) ** 2
            losses.append(sq.mean())
            mask = np.abs(fake - clean[b]).sum(axis=0) > 0.5
            if mask.any():
                l2 = sq[:, mask].mean()
                l2s.append(l2)
                successes.append(l2 > 0.05)
            else:
                successes.append(False)
    return {"sr_mask": np.mean(successes), "l2_mask": np.mean(l2s), "avg_l": np.mean(losses),
            "attack_rate": np.mean([loss > 0.05 for loss in losses])}


def test_every_metric_after_jpeg_equals_the_hand_computation() -> None:
    x = torch.cat([face(), face().flip(-1)])
    delta = torch.sign(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))) * 0.05
    victim = LinearVictim("a", 6.0)  # strong enough that some pairs succeed and some do not
    values = judge_batch(["jpeg75"], victim, x, delta, per_condition=True)
    expected = by_hand(pil_jpeg(x, 75), pil_jpeg((x + delta).clamp(-1, 1), 75), 6.0, victim.levels)
    for metric, value in expected.items():
        assert values[f"robust/jpeg75/{metric}/a"] == pytest.approx(value, rel=1e-5, abs=1e-9), metric
    assert values["robust/jpeg75/ruiz/a"] == pytest.approx(expected["attack_rate"])
    assert 0 < values["robust/jpeg75/avg_l/a"]
    assert values["robust/jpeg75/empty_mask/a"] == 0
    only_c1 = by_hand(pil_jpeg(x, 75), pil_jpeg((x + delta).clamp(-1, 1), 75), 6.0, (1.0,))
    assert values["robust/jpeg75/avg_l/a/c1"] == pytest.approx(only_c1["avg_l"], rel=1e-5)
    assert "robust/jpeg75/sr_mask/a/c0" in values


def test_judge_adds_robust_keys_with_means_and_leaves_the_others_unchanged() -> None:
    x = torch.cat([face(32), face(32).flip(-1)])
    delta = torch.sign(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))) * 0.05
    victims = [LinearVictim("a", 6.0), LinearVictim("b", 2.0, levels=(0.0, 0.5, 2.0))]
    module = SimpleNamespace(device=torch.device("cpu"), protect=lambda images: (images + delta).clamp(-1, 1),
                             micro_batch=lambda victim, batch, purpose="gradient": None)
    results = {}
    for names in ([], ["jpeg50", "crop0.9"]):
        judge = Judge(victims, MetricSettings(quality=False, robustness=names), torch.device("cpu"))
        judge.update(module, x, torch.zeros(2, 40))
        results[len(names)] = judge.results()
    plain, robust = results[0], results[2]
    assert {k: v for k, v in robust.items() if not k.startswith("robust/")} == plain
    for name in ("jpeg50", "crop0.9"):
        for metric in ("sr_mask", "ruiz", "avg_l", "attack_rate"):
            mean = (robust[f"robust/{name}/{metric}/a"] + robust[f"robust/{name}/{metric}/b"]) / 2
            assert robust[f"robust/{name}/{metric}/mean"] == pytest.approx(mean)
        assert robust[f"robust/{name}/empty_mask/b"] >= 0
        assert not any(k.startswith(f"robust/{name}/sr_mask/a/") for k in robust)  # per condition: off by default
    crop = parse_transform("crop0.9")
    expected = by_hand(crop(x), crop((x + delta).clamp(-1, 1)), 2.0, (0.0, 0.5, 2.0))
    assert robust["robust/crop0.9/avg_l/b"] == pytest.approx(expected["avg_l"], rel=1e-5)
    assert robust["robust/crop0.9/sr_mask/b"] == pytest.approx(expected["sr_mask"])
    assert not math.isnan(robust["robust/jpeg50/l2_mask/a"])


@pytest.mark.parametrize("name", ["crop0.9", "resize0.5"])
def test_the_mask_comes_from_the_shared_photo_and_its_fake(name: str) -> None:
    """A victim that edits nothing (G(x) = x) has nothing to disrupt after sharing either: every mask is empty,
    although the shared photo differs from the original x by far more than the 0.5 mask threshold at edges."""
    x = torch.cat([face(), face().flip(-1)])
    identity = LinearVictim("id", 1.0, levels=(0.0,))
    delta = torch.sign(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))) * 0.05
    values = judge_batch([name], identity, x, delta)
    assert values[f"robust/{name}/empty_mask/id"] == 2
    assert values[f"robust/{name}/sr_mask/id"] == 0.0
    assert f"robust/{name}/l2_mask/id" not in values or math.isnan(values[f"robust/{name}/l2_mask/id"])
    assert values[f"robust/{name}/avg_l/id"] > 0  # the watermark itself still survives, partly
    moved = (parse_transform(name)(x) - x).abs().sum(dim=1) > 0.5
    assert bool(moved.any())
