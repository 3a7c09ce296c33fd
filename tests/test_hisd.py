"""HiSD beyond the shared fixture checks: style conditions, their stacking, the reference and the latents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from advwm.data.demo import demo_item
from advwm.data.transforms import preprocess
from advwm.pipeline import build_victims
from advwm.victims import HiSDVictim, build_victim, load_generator
from advwm.victims.hisd import Generator, hisd_condition, hisd_config, latent_codes, load_reference, split_condition

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-4  # outputs are unbounded (|y| up to ~45 in the fixture): compare relative to their scale
SIZE = 32
# A tiny architecture for 32 px CPU runs; SMALL_OVERRIDES says the same as Hydra command-line overrides.
SMALL: dict[str, Any] = {
    "style_dim": 8,
    "noise_dim": 4,
    "encoder": {"channels": [8, 16]},
    "decoder": {"channels": [16, 8]},
    "translators": {"channels": [8, 8]},
    "extractors": {"channels": [8, 16, 16]},
    "mappers": {"pre_channels": [8, 8], "post_channels": [8, 8]},
}
SMALL_OVERRIDES = [
    "victims.hisd.arch.style_dim=8",
    "victims.hisd.arch.noise_dim=4",
    "victims.hisd.arch.encoder.channels=[8,16]",
    "victims.hisd.arch.decoder.channels=[16,8]",
    "victims.hisd.arch.translators.channels=[8,8]",
    "victims.hisd.arch.extractors.channels=[8,16,16]",
    "victims.hisd.arch.mappers.pre_channels=[8,8]",
    "victims.hisd.arch.mappers.post_channels=[8,8]",
]


pytestmark = pytest.mark.usefixtures("single_thread")


def _victim(seed: int = 0, **options: Any) -> HiSDVictim:
    torch.manual_seed(seed)
    victim = build_victim("hisd", checkpoint=None, arch=SMALL, image_size=SIZE, **options)
    assert isinstance(victim, HiSDVictim)
    return victim


def _faces(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, SIZE, SIZE, generator=generator) * 2 - 1
    labels = torch.randint(0, 2, (batch, 40), generator=generator).float()
    return x, labels


def _assert_close(out: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    err = (out - expected).abs().max().item()
    scale = max(expected.abs().max().item(), 1.0)
    assert err <= RTOL * scale, f"{what}: max abs error {err:.3g} at scale {scale:.3g}"


# ---- the reference fixture through the wrapper (the shared fixture test is written for label-driven victims) ----
@pytest.mark.parametrize("weights", ["small_state_dict.pt", "small_checkpoint.pt"])
def test_fixture_outputs_through_the_wrapper(fixtures_dir: Path, weights: str) -> None:
    folder = fixtures_dir / "victims" / "hisd"
    case = torch.load(folder / "case.pt", map_location="cpu", weights_only=True)
    latents = torch.cat([c["z"] for c in case["conditions"] if c["type"] == "latent-guided"])
    victim = build_victim("hisd", checkpoint=folder / weights, arch=case["config"], image_size=case["x"].shape[-1],
                          mode="both", tags=[0, 1, 2], reference=case["reference"], latents=latents)
    # ours: the reference conditions of tags 0, 1, 2, then the 7 latent ones; the case starts with CMUA's (tag 1)
    assert victim.condition_names[:4] == ["Bangs@ref", "Eyeglasses@ref", "HairColor@ref", "Bangs@latent-with"]
    order = [1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    conditions = victim.conditions(torch.zeros(case["x"].shape[0], 40))
    with torch.no_grad():
        for k, (ref, style, expected) in enumerate(zip(case["conditions"], case["styles"], case["outputs"],
                                                       strict=True)):
            cond = conditions[order[k]]
            styles, tags = split_condition(cond)
            assert torch.all(tags == ref["tag"])
            _assert_close(styles, style.expand_as(styles), f"style {k}")
            _assert_close(victim(case["x"], cond), expected, f"output {k} ({ref['type']}, tag {ref['tag']})")
        network = victim.network
        _assert_close(network.encode(case["x"]), case["encoded"], "encoded")
        _assert_close(network.decode(network.encode(case["x"])), case["reconstruction"], "reconstruction")


def test_load_generator_returns_the_official_module() -> None:
    net = load_generator("hisd", **SMALL)
    assert isinstance(net, Generator)
    for part in ("encoder", "decoder", "extractors", "translators", "mappers"):
        assert isinstance(getattr(net, part), torch.nn.Module)
    assert len(net.translators) == len(net.mappers) == 3 and net.tag_names == ["Bangs", "Eyeglasses", "HairColor"]
    assert not any(p.requires_grad for p in net.parameters()) and len(list(net.buffers())) == 0
    x = torch.zeros(1, 3, SIZE, SIZE)
    s = net.extract(x, 1)
    assert s.shape == (1, 8)
    assert net(x, s, 1).shape == x.shape == net.decode(net.translate(net.encode(x), s, 1)).shape
    assert net.map(torch.zeros(1, 4), 2, 2).shape == (1, 8)


# ---- conditions: shape, stacking, mixed tags ----
def test_conditions_are_style_rows_with_the_tag_last() -> None:
    victim = _victim()
    assert victim.condition_names == ["Eyeglasses@ref"]  # CMUA's default
    _, labels = _faces(3)
    (cond,) = victim.conditions(labels)
    assert cond.shape == (3, 8 + 1) and cond.dtype == torch.float32
    assert torch.equal(cond[:, -1], torch.ones(3)) and torch.equal(cond[0], cond[2])
    both = _victim(mode="both", tags=["Bangs", 2])
    assert both.condition_names == ["Bangs@ref", "HairColor@ref", "Bangs@latent-with", "Bangs@latent-without",
                                    "HairColor@latent-black", "HairColor@latent-blond", "HairColor@latent-brown"]
    assert [int(c[0, -1]) for c in both.conditions(labels)] == [0, 2, 0, 0, 2, 2, 2]


def test_stacked_mixed_tags_equal_per_condition_forwards() -> None:
    victim = _victim(mode="both", tags=[0, 1, 2])
    assert victim.stackable and victim.num_conditions == 3 + 7
    x, labels = _faces(2)
    conditions = victim.conditions(labels)
    with torch.no_grad():
        separate = torch.cat([victim(x, c) for c in conditions])
        stacked = victim(x.repeat(len(conditions), 1, 1, 1), torch.cat(conditions))
        _assert_close(stacked, separate, "stacked")
        # rows interleaved across tags: every row still gets its own tag's translator and its own style
        rows = torch.cat(conditions)
        perm = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))
        inputs = x.repeat(len(conditions), 1, 1, 1)
        _assert_close(victim(inputs[perm], rows[perm]), separate[perm], "interleaved")
    # the batched path is differentiable with respect to the input only
    inputs = inputs.clone().requires_grad_(True)
    victim(inputs, rows).square().mean().backward()
    assert inputs.grad is not None and bool((inputs.grad.flatten(1).abs().sum(1) > 0).all())
    assert all(p.grad is None for p in victim.parameters())


def test_condition_helpers_round_trip_and_forward_checks_shapes() -> None:
    style = torch.randn(4, 8)
    styles, tags = split_condition(hisd_condition(style, 2))
    assert torch.equal(styles, style) and torch.equal(tags, torch.full((4,), 2))
    victim = _victim()
    x, _ = _faces(2)
    with pytest.raises(ValueError, match="condition must be"):
        victim(x, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="out of range"):
        victim(x, hisd_condition(torch.zeros(2, 8), 3))


# ---- the reference ----
def test_reference_condition_uses_the_configured_reference() -> None:
    reference = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    victim = _victim(reference=reference)
    assert torch.equal(victim.reference, reference)
    _, labels = _faces(2)
    (cond,) = victim.conditions(labels)
    with torch.no_grad():
        expected = victim.network.extract(reference, 1)
    assert torch.equal(cond[:, :-1], expected.expand(2, -1))
    other = _victim(reference=-reference)
    assert not torch.allclose(other.conditions(labels)[0], cond)


def test_default_reference_is_the_demo_face_with_glasses() -> None:
    item = demo_item("grace_hopper")
    expected = preprocess(item.open(), SIZE, box=item.box).unsqueeze(0)
    victim = _victim()
    assert torch.equal(victim.reference, expected)
    assert torch.equal(load_reference("grace_hopper", SIZE), expected)
    assert not torch.equal(load_reference("astronaut", SIZE), expected)
    assert torch.equal(load_reference("grace_hopper@mirror", SIZE), expected.flip(-1))


def test_reference_from_an_image_file(tmp_path: Path) -> None:
    path = tmp_path / "ref.png"
    pixels = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    Image.fromarray(pixels.numpy()).save(path)
    with Image.open(path) as image:
        expected = preprocess(image, SIZE).unsqueeze(0)
    victim = _victim(reference=str(path))
    assert torch.equal(victim.reference, expected) and victim.reference.shape == (1, 3, SIZE, SIZE)
    with pytest.raises(FileNotFoundError, match="neither an image file nor a demo face"):
        _victim(reference=str(tmp_path / "missing.png"))


# ---- the latents ----
def test_latent_conditions_are_reproducible_from_the_seed() -> None:
    _, labels = _faces(2)
    first = _victim(mode="latent", tags=[0, 1, 2], latent_seed=7)
    again = _victim(mode="latent", tags=[0, 1, 2], latent_seed=7)
    other = _victim(mode="latent", tags=[0, 1, 2], latent_seed=8)
    a, b, c = (v.conditions(labels) for v in (first, again, other))
    assert len(a) == 7 and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not any(torch.equal(p, q) for p, q in zip(a, c, strict=True))
    # a name means the same code whatever the other tags: Eyeglasses alone draws the same z
    subset = _victim(mode="latent", tags=[1], latent_seed=7)
    assert subset.condition_names == ["Eyeglasses@latent-with", "Eyeglasses@latent-without"]
    assert torch.equal(subset.latents, first.latents[2:4])
    assert all(torch.equal(p, q) for p, q in zip(subset.conditions(labels), a[2:4], strict=True))
    # the codes are the documented draw, and explicit codes replace it
    codes = latent_codes(first.network, 7)
    assert torch.equal(first.latents, torch.cat(list(codes.values())))
    given = torch.randn(7, 4)
    explicit = _victim(mode="latent", tags=[2], latents=given)
    assert torch.equal(explicit.latents, given[4:])
    with torch.no_grad():
        assert torch.equal(explicit.conditions(labels)[1][0, :-1], explicit.network.map(given[5:6], 2, 1)[0])
    with pytest.raises(ValueError, match="latents must be"):
        _victim(mode="latent", latents=torch.zeros(3, 4))


# ---- options and architecture ----
def test_invalid_options_fail_clearly() -> None:
    with pytest.raises(ValueError, match="mode must be"):
        _victim(mode="random")
    with pytest.raises(ValueError, match="unknown tag"):
        _victim(tags=["Glasses"])
    with pytest.raises(ValueError, match="out of range"):
        _victim(tags=[3])
    with pytest.raises(ValueError, match="distinct"):
        _victim(tags=[1, "Eyeglasses"])
    with pytest.raises(ValueError, match="multiple of 2"):
        build_victim("hisd", checkpoint=None, arch=SMALL, image_size=33)
    with pytest.raises(ValueError, match="extractor halves it 6 times"):
        build_victim("hisd", checkpoint=None, arch={**SMALL, "extractors": {"channels": [8] * 7}}, image_size=SIZE)


def test_official_configs_and_overrides() -> None:
    assert hisd_config()["extractors"]["channels"] == [32, 64, 128, 256, 512, 512, 512]
    assert hisd_config("celeba-hq.yaml")["extractors"]["channels"] == [64, 128, 256, 512, 1024, 2048]
    merged = hisd_config(mappers={"pre_channels": [16, 16], "post_channels": None}, style_dim=None)
    assert merged["mappers"] == {"pre_channels": [16, 16], "post_channels": [256, 256, 256]}
    assert merged["style_dim"] == 256
    with pytest.raises(ValueError, match="unknown config"):
        hisd_config("celeba.yaml")
    with pytest.raises(ValueError, match="must equal decoder"):
        Generator(**{**SMALL, "decoder": {"channels": [8, 8]}})


def test_config_from_an_official_style_yaml_file(tmp_path: Path) -> None:
    text = "\n".join([
        "style_dim: 8", "noise_dim: 4", "input_dim: 3", "init: gaussian", "batch_size: 8",
        "encoder: {channels: [8, 16]}", "decoder: {channels: [16, 8]}", "translators: {channels: [8, 8]}",
        "extractors: {channels: [8, 16]}", "mappers: {pre_channels: [8, 8], post_channels: [8, 8]}",
        "tags:", "  - name: Smile", "    attributes:", "      - {name: 'with', filename: a.txt}",
    ])
    path = tmp_path / "custom.yaml"
    path.write_text(text)
    net = Generator(yaml=str(path))
    assert net.tags == (("Smile", ("with",)),) and len(net.translators) == 1
    assert net.extractors.model[-1].out_channels == 8
    assert net.encoder[0].bias.detach()[0].item() == pytest.approx(0.01)  # the official init's bias


def test_hydra_config_builds_the_small_victim() -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+victims=[hisd]", "weights=random", f"image_size={SIZE}",
                                           *SMALL_OVERRIDES])
    assert cfg.victims.hisd.arch.yaml == "celeba-hq_256.yaml" and list(cfg.victims.hisd.options.tags) == [1]
    (resolved,) = build_victims(cfg)
    victim = resolved.victim
    assert resolved.weights == "random" and victim.name == "hisd"
    assert victim.condition_names == ["Eyeglasses@ref"] and victim.network.style_dim == 8
    assert victim.reference.shape == (1, 3, SIZE, SIZE)
