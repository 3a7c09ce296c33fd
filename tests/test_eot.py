"""EOT over sharing (eot=sharing): the differentiable transforms, the sampled distribution, the seeding, the
averaged gradient against a hand computation, and eot=none leaving the engine as it was."""

from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from test_engine import _universal, fit
from toys import LinearVictim, MixVictim, TensorFaces, base_attack

from advwm.attacks import IterativeDomains, MGDADomains, SingleDomain, UniformDomains
from advwm.attacks.diversity import InputDiversity, PairTransform
from advwm.attacks.eot import (
    SharingDraw,
    SharingEOT,
    SharingPairs,
    gaussian_blur,
    gaussian_kernel,
    jpeg,
    resize,
)
from advwm.pipeline import ConfigError, build_module

pytestmark = pytest.mark.usefixtures("single_thread")


def smooth_image(size: int = 32, seed: int = 0) -> torch.Tensor:
    """[1,3,S,S] inside (-0.8, 0.8): random, smoothed (photo-like, no value at the clamp)."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


# ------------------------------------------------------------------------------------ the transforms


@pytest.mark.parametrize("draw", [SharingDraw("jpeg", 50), SharingDraw("jpeg", 95), SharingDraw("resize", 0.5),
                                  SharingDraw("resize", 0.83), SharingDraw("blur", 0.7), SharingDraw("blur", 1.5)],
                         ids=lambda d: f"{d.kind}{d.value:g}")
def test_gradients_flow_through_each_transform(draw: SharingDraw) -> None:
    x = smooth_image().requires_grad_(True)
    weights = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = draw(x)
    assert out.shape == x.shape
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert float((grad - weights).abs().mean()) > 1e-3  # not the identity's gradient: the transform is in the path


def test_gradients_flow_through_sharing_then_di2() -> None:
    from advwm.attacks.eot import composed

    x = smooth_image().repeat(2, 1, 1, 1).requires_grad_(True)
    sharing = SharingPairs([[SharingDraw("jpeg", 60), SharingDraw("resize", 0.6)]])
    di2 = PairTransform.for_step(InputDiversity(prob=1.0, resize_rate=1.2), 1, 2, 32, 32,
                                 torch.Generator().manual_seed(0))
    out = composed(sharing, di2)(x, [(0, 0), (0, 1)])
    (grad,) = torch.autograd.grad(out.pow(2).sum(), x)
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()
    assert not torch.equal(out, sharing(x, [(0, 0), (0, 1)]))  # DI2 did act after the sharing transform


@pytest.mark.parametrize("factor", [0.5, 0.7, 0.9])
def test_resize_is_pillows_bicubic_down_and_up(factor: float) -> None:
    """On float images (Pillow's mode F, no 8-bit rounding) the two agree to float precision."""
    x = smooth_image()
    side = round(32 * factor)
    expected = np.stack([np.asarray(Image.fromarray(x[0, c].numpy(), mode="F")
                                    .resize((side, side), Image.Resampling.BICUBIC)
                                    .resize((32, 32), Image.Resampling.BICUBIC)) for c in range(3)])
    assert torch.allclose(resize(x, factor)[0], torch.from_numpy(expected).clamp(-1, 1), atol=1e-5)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7])
def test_blur_is_scipys_gaussian_filter(sigma: float) -> None:
    x = smooth_image()
    expected = ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
    assert torch.allclose(gaussian_blur(x, sigma).double(), torch.from_numpy(expected), atol=1e-6)
    assert gaussian_kernel(sigma).sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_the_differentiable_jpeg_is_closer_to_pillows_codec_than_doing_nothing(quality: int) -> None:
    from advwm.data import DemoDataModule

    demo = DemoDataModule(craft=["astronaut"], evaluate=["grace_hopper"], image_size=64)
    demo.setup()
    x = next(iter(demo.eval_dataloader()))["image"]
    array = ((x[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    real = torch.from_numpy(np.array(Image.open(buffer).convert("RGB"), dtype=np.float32) / 127.5 - 1)
    real = real.permute(2, 0, 1)[None]
    approx = jpeg(x, quality)
    assert float((approx - real).abs().mean()) < 0.5 * float((x - real).abs().mean())


# ---------------------------------------------------------------------------------------- sampling


def test_the_sampled_distribution_is_the_configured_one() -> None:
    eot = SharingEOT(samples=1, mix={"jpeg": 0.5, "resize": 0.3, "blur": 0.2, "identity": 0.0},
                     jpeg_quality=[60, 69], resize_factor=[0.4, 0.8], blur_sigma=[0.5, 2.0])
    generator = torch.Generator().manual_seed(0)
    n = 20000
    draws = [eot.draw_one(generator) for _ in range(n)]
    kinds = Counter(d.kind for d in draws)
    assert set(kinds) == {"jpeg", "resize", "blur"}  # identity has weight 0: never drawn
    for kind, p in (("jpeg", 0.5), ("resize", 0.3), ("blur", 0.2)):
        assert abs(kinds[kind] / n - p) < 4 * math.sqrt(p * (1 - p) / n), kind
    qualities = Counter(d.value for d in draws if d.kind == "jpeg")
    assert set(qualities) == {float(q) for q in range(60, 70)}  # integers, both ends included
    expected = kinds["jpeg"] / 10
    assert all(abs(count - expected) < 5 * math.sqrt(expected) for count in qualities.values())
    for kind, (low, high) in (("resize", (0.4, 0.8)), ("blur", (0.5, 2.0))):
        values = torch.tensor([d.value for d in draws if d.kind == kind], dtype=torch.float64)
        assert low <= values.min() and values.max() <= high
        quartiles = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        uniform = torch.tensor([low + (high - low) * q for q in (0.25, 0.5, 0.75)], dtype=torch.float64)
        assert torch.allclose(quartiles, uniform, atol=0.02 * (high - low)), kind


def test_the_mix_is_normalised_and_its_defaults_are_the_config_files() -> None:
    from hydra.utils import instantiate
    from test_configs import compose_with

    eot = instantiate(compose_with("eot=sharing").eot)
    assert eot.samples == 4 and eot.mix == {"jpeg": 0.5, "resize": 0.25, "blur": 0.25, "identity": 0.0}
    assert eot.jpeg_quality == (50, 95) and eot.resize_factor == (0.5, 0.9) and eot.blur_sigma == (0.5, 1.5)
    assert SharingEOT(mix={"jpeg": 2, "blur": 6}).mix == {"jpeg": 0.25, "resize": 0.0, "blur": 0.75, "identity": 0.0}
    assert compose_with().eot is None and compose_with("eot=none").eot is None  # eot=none builds nothing


def test_draws_depend_on_seed_step_and_victim_only() -> None:
    eot = SharingEOT(samples=3)

    def draws(seed: int, step: int, victim: int):
        return eot.draws(2, 3, eot.generator(seed, step, victim))

    assert draws(0, 5, 1) == draws(0, 5, 1)
    assert draws(0, 5, 1) != draws(0, 6, 1) and draws(0, 5, 1) != draws(0, 5, 0) and draws(0, 5, 1) != draws(1, 5, 1)
    grid = draws(0, 5, 1)
    assert len(grid) == 3 and all(len(row) == 2 and len(row[0]) == 3 for row in grid)
    assert len({d for sample in grid for row in sample for d in row}) > 1  # pairs get different transforms
    assert SharingEOT(samples=1).draws(2, 3, eot.generator(0, 5, 1))[0] == grid[0]  # sample-major


def test_every_pair_of_a_step_gets_a_draw_of_its_own() -> None:
    """As DI2 draws one resize-and-pad per (condition, image) pair, EOT draws one transform per pair and sample:
    with continuous parameters (resize factors, blur sigmas) no two of a step's 3 samples x 4 conditions x 5 images
    coincide, so a draw shared between images, conditions or samples shows up as a repeated value."""
    eot = SharingEOT(samples=3, mix={"resize": 1.0, "blur": 1.0})
    grid = eot.draws(4, 5, eot.generator(0, 7, 2))
    flat = [(d.kind, d.value) for sample in grid for row in sample for d in row]
    assert len(flat) == 3 * 4 * 5 and len(set(flat)) == len(flat)
    assert {kind for kind, _ in flat} == {"resize", "blur"}


def test_each_pair_is_shared_with_its_own_draw_on_the_way_to_the_victim() -> None:
    """What the victim receives for pair (condition k, image b) is draw[k][b] of the protected image b, whichever
    chunk the pair travels in (a recording victim sees every row of the EOT gradient's forwards)."""

    class Recorder(LinearVictim):
        def __init__(self) -> None:
            super().__init__("rec", 1.0, levels=(0.0, 1.0))
            self.rows: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled():
                self.rows.append(x.detach().clone())
            return super().forward(x, condition)

    victim = Recorder()
    x = torch.cat([smooth_image(12, seed=s) for s in range(3)])
    protected = (x + 0.03).clamp(-1, 1)
    conditions = victim.conditions(torch.zeros(3, 40))
    eot = SharingEOT(samples=1, mix={"resize": 1.0, "blur": 1.0})
    for micro_batch in (1, None):
        victim.rows.clear()
        eot.gradient(UniformDomains(), victim, x, protected, conditions, 0, micro_batch, None, eot.generator(1, 0, 0))
        (sample,) = eot.draws(2, 3, eot.generator(1, 0, 0))
        seen = torch.cat(victim.rows)  # stacked condition-major: row k * 3 + b
        for k in range(2):
            for b in range(3):
                torch.testing.assert_close(seen[k * 3 + b], sample[k][b](protected[b:b + 1])[0], rtol=0, atol=1e-6)


def six_shared_pairs() -> tuple[SharingPairs, torch.Tensor, list[tuple[int, int]]]:
    """One sample's transforms of every kind for 2 conditions x 3 images, six smooth images, their pairs."""
    eot = SharingEOT(samples=1, mix={"jpeg": 1, "resize": 1, "blur": 1})
    (sample,) = eot.draws(2, 3, eot.generator(0, 0, 0))
    stacked = torch.cat([smooth_image(seed=i) for i in range(6)])
    return SharingPairs(sample), stacked, [(k, b) for k in range(2) for b in range(3)]


def test_sharing_pairs_do_not_depend_on_the_chunking() -> None:
    sharing, stacked, pairs = six_shared_pairs()
    whole = sharing(stacked, pairs)
    assert torch.equal(whole, torch.cat([sharing(stacked[i:i + 1], pairs[i:i + 1]) for i in range(6)]))
    assert torch.equal(whole, torch.cat([sharing(stacked[:4], pairs[:4]), sharing(stacked[4:], pairs[4:])]))


def test_the_sharing_transforms_run_in_fp32_under_the_victims_bf16_autocast() -> None:
    """bf16-mixed casts the victims only: JPEG's colour/DCT matrices and the blur stay fp32 inside autocast."""
    sharing, stacked, pairs = six_shared_pairs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = sharing(stacked, pairs)
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, sharing(stacked, pairs))


# ----------------------------------------------------------------------------------- the gradient


def blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """The 1-D Gaussian with replicated edges as a [size, size] matrix, written out."""
    radius = max(1, int(4 * sigma + 0.5))
    taps = [math.exp(-0.5 * (o / sigma) ** 2) for o in range(-radius, radius + 1)]
    total = sum(taps)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):
        for offset, tap in zip(range(-radius, radius + 1), taps, strict=True):
            matrix[i, min(max(i + offset, 0), size - 1)] += tap / total
    return matrix


def test_the_eot_gradient_is_the_mean_over_draws_of_the_shared_distortions_gradient() -> None:
    """G(x, c) = g (1 + c) x and blur B = M . M^T (linear): per draw, L = mean((g (1+c) (B p - B x))^2), so
    dL/dp = 2 g^2 (1+c)^2 B^T B (p - x) / N; uniform domains average the conditions, EOT the draws."""
    size, gain, levels = 12, 1.5, (0.0, 1.0)
    victim = LinearVictim("a", gain, levels)
    x = torch.cat([smooth_image(size, seed=s) for s in range(2)])
    protected = (x + 0.05 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(3)))).clamp(-1, 1)
    conditions = victim.conditions(torch.zeros(2, 40))
    eot = SharingEOT(samples=3, mix={"blur": 1.0}, blur_sigma=[0.6, 1.6])
    result = eot.gradient(UniformDomains(), victim, x, protected, conditions, 0, 1, None, eot.generator(4, 2, 0))
    draws = eot.draws(len(levels), 2, eot.generator(4, 2, 0))
    n = 3 * size * size
    expected_grad = torch.zeros(2, 3, size, size, dtype=torch.float64)
    expected_loss = torch.zeros(2, dtype=torch.float64)
    for sample in draws:
        for k, c in enumerate(levels):
            for b in range(2):
                m = blur_matrix(size, sample[k][b].value)
                d = (protected[b] - x[b]).double()
                shared = m @ d @ m.T  # B(p) - B(x) = B(p - x)
                expected_loss[b] += (gain * (1 + c)) ** 2 * shared.pow(2).mean() / (len(levels) * 3)
                expected_grad[b] += 2 * (gain * (1 + c)) ** 2 * (m.T @ shared @ m) / n / (len(levels) * 3)
    assert torch.allclose(result.grad.double(), expected_grad, rtol=1e-4, atol=1e-9)
    assert torch.allclose(result.loss.double(), expected_loss, rtol=1e-4)
    assert set(result.per_condition) == {0, 1}


DOMAINS = {"uniform": UniformDomains, "iterative": IterativeDomains, "single": SingleDomain, "mgda": MGDADomains}


@pytest.mark.parametrize("mode", ["uniform", "iterative", "single", "mgda"])
def test_identity_only_eot_reproduces_the_plain_watermark_exactly(mode: str) -> None:
    """With every draw the identity, the shared targets are the cached G(x, c) and the mean of two equal
    gradients is that gradient: the watermark is bit for bit the one without EOT (the averaging plumbing),
    whichever conditions the cross-domain mode selects."""
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    watermarks = []
    for eot in (None, SharingEOT(samples=2, mix={"identity": 1.0})):
        module = _universal([MixVictim("a", 1.0, levels=(0.0, 1.0, 2.0)), LinearVictim("b", 2.0)],
                            base_attack("ifgsm", 0.01, iterations=3), seed=5, eot=eot,
                            domains=DOMAINS[mode]())
        fit(module, TensorFaces(x, batch_size=2, repeats=3))
        watermarks.append(module.watermark())
    assert torch.equal(watermarks[0], watermarks[1])


def test_eot_none_is_the_engine_without_the_argument() -> None:
    """eot=none builds no object, and a module given eot=None crafts bit for bit what one built without the
    argument does (the change before/after this feature was also compared on full tiny runs: identical)."""
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    di2 = base_attack("ifgsm", 0.01, iterations=3, diversity_prob=0.7)
    plain = _universal([MixVictim("a", 1.0)], di2, seed=2)
    given = _universal([MixVictim("a", 1.0)], di2, seed=2, eot=None)
    for module in (plain, given):
        fit(module, TensorFaces(x, batch_size=2, repeats=3))
    assert given.eot is None and torch.equal(plain.watermark(), given.watermark())


def test_eot_changes_the_watermark_reproducibly_whatever_the_micro_batch() -> None:
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 1.8 - 0.9
    eot = SharingEOT(samples=2, mix={"jpeg": 1, "resize": 1, "blur": 1}, resize_factor=[0.5, 0.75])
    watermarks = {}
    for name, micro, settings in (("one", 1, None), ("three", 3, None), ("all", None, None), ("again", 1, None),
                                  ("none", 1, "off")):
        module = _universal([MixVictim("a", 1.0)], base_attack("ifgsm", 0.01, iterations=3), seed=5,
                            micro_batches={"a": micro}, eot=None if settings == "off" else eot)
        fit(module, TensorFaces(x, batch_size=2, repeats=3))
        watermarks[name] = module.watermark()
    assert torch.equal(watermarks["one"], watermarks["again"])
    assert torch.equal(watermarks["one"], watermarks["three"]) and torch.equal(watermarks["one"], watermarks["all"])
    assert not torch.equal(watermarks["one"], watermarks["none"])


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("overrides", "message"), [
    (["eot=sharing", "eot.samples=0"], "eot.samples must be a whole number >= 1"),
    (["eot=sharing", "+eot.mix.webp=1"], r"eot.mix: unknown transform\(s\) \['webp'\]"),
    (["eot=sharing", "eot.mix.jpeg=-1"], "weights must be finite and >= 0"),
    (["eot=sharing", "eot.mix.jpeg=0", "eot.mix.resize=0", "eot.mix.blur=0"], "needs a positive weight"),
    (["eot=sharing", "eot.jpeg_quality=[50,101]"], r"whole numbers within \[1, 100\]"),
    (["eot=sharing", "eot.jpeg_quality=[90,50]"], "low <= high"),
    (["eot=sharing", "eot.resize_factor=[0.5,1.5]"], r"within \(0, 1\]"),
    (["eot=sharing", "eot.blur_sigma=[0,1]"], "must be positive"),
    (["eot=sharing", "+eot.sample=3"], r"eot: .*unexpected keyword argument 'sample'"),
    (["eot=sharing", "attack=apgd", "aggregator=uniform"], "cannot drive attack=apgd"),
    (["eot=sharing", "aggregator=cmua_reference"], "cannot drive aggregator=cmua_reference"),
])
def test_a_bad_eot_setting_is_one_config_error_line(overrides: list[str], message: str) -> None:
    from test_configs import compose_with

    cfg = compose_with("+victims=[stargan]", *overrides)
    with pytest.raises(ConfigError, match=message) as error:
        build_module(cfg, [LinearVictim("stargan", 1.0)])
    assert "\n" not in str(error.value)
