"""bf16 (trainer.precision=bf16-mixed) and channels_last on the CPU: only the victims run under autocast, the
perturbation, the attack's arithmetic, losses and gradients stay fp32; channels_last changes no result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from test_run import compose_run, small
from toys import LinearVictim, MixVictim, TensorFaces, base_attack

from advwm.attacks import MGDA, NoRegularizer, UniformDomains, Universal
from advwm.attacks.domains import clean_outputs, stacked_gradients
from advwm.attacks.losses import distortion
from advwm.attacks.module import WatermarkAttack
from advwm.errors import ConfigError
from advwm.pipeline import craft
from advwm.run_files.watermark_file import load_watermark
from advwm.victims import build_victim
from advwm.victims.execution import ExecutionSettings, apply_execution, check_precision

pytestmark = pytest.mark.usefixtures("single_thread")


def test_only_fp32_and_bf16_mixed_are_accepted() -> None:
    check_precision("32-true")
    check_precision("bf16-mixed")
    for bad in ("16-mixed", "bf16-true", "64-true"):
        with pytest.raises(ConfigError, match="not supported by the attack"):
            check_precision(bad)
    with pytest.raises(ConfigError, match="16-mixed"):
        ExecutionSettings(precision="16-mixed")


def test_the_distortion_of_bf16_outputs_is_computed_in_fp32() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 8, 8).bfloat16(), torch.randn(2, 3, 8, 8).bfloat16()
    loss = distortion(a, b)
    by_hand = (a.double() - b.double()).pow(2).flatten(1).mean(1)  # the bf16 values, exactly, in fp64
    assert loss.dtype == torch.float32
    assert torch.allclose(loss.double(), by_hand, rtol=1e-6)
    assert distortion(a.double(), b.double()).dtype == torch.float64  # never lowers a wider dtype


class SpyVictim(MixVictim):
    """Records whether autocast was on (and its dtype) at each of its forwards."""

    def __init__(self, name: str, gain: float) -> None:
        super().__init__(name, gain)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return super().forward(x, condition)


class SpyRegularizer(NoRegularizer):
    """Records whether autocast was on, and the gradient's dtype, where the aggregator rescales gradients."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, torch.dtype]] = []

    def __call__(self, grad: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.is_autocast_enabled("cpu"), grad.dtype))
        return super().__call__(grad, loss)


FACES = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9


def _fit(precision: str, victims, regularizer) -> WatermarkAttack:
    module = WatermarkAttack(victims, aggregator=MGDA(), domains=UniformDomains(), regularizer=regularizer,
                             attack=base_attack("pgd", 0.01, iterations=2), scope=Universal(), eps=0.05,
                             image_size=4, batch_size=2, seed=1)
    Trainer(max_epochs=1, accelerator="cpu", devices=1, precision=precision, logger=False,
            enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(module, TensorFaces(FACES, 2, 2))
    return module


def test_bf16_mixed_autocasts_the_victims_only() -> None:
    victims, regularizer = [SpyVictim("a", 1.0), SpyVictim("b", 2.0)], SpyRegularizer()
    module = _fit("bf16-mixed", victims, regularizer)
    seen = [s for v in victims for s in v.seen]
    assert seen and all(s == (True, torch.bfloat16) for s in seen)  # targets and gradients: under autocast
    assert regularizer.seen and all(s == (False, torch.float32) for s in regularizer.seen)  # the aggregator: not
    assert module.perturbation.dtype == torch.float32 and module.perturbation.abs().max() > 0
    fp32_victims = [SpyVictim("a", 1.0), SpyVictim("b", 2.0)]
    _fit("32-true", fp32_victims, SpyRegularizer())
    assert not any(enabled for v in fp32_victims for enabled, _ in v.seen)


def test_a_bf16_run_of_elementwise_victims_equals_the_fp32_run() -> None:
    """Autocast changes matmuls and convolutions only: victims without them, and the fp32 attack around them
    (MGDA's Gram matrices included), must give the fp32 watermark exactly."""
    fp32 = _fit("32-true", [MixVictim("a", 1.0), LinearVictim("b", 2.0)], NoRegularizer())
    bf16 = _fit("bf16-mixed", [MixVictim("a", 1.0), LinearVictim("b", 2.0)], NoRegularizer())
    assert torch.equal(fp32.watermark(), bf16.watermark())


def _small_stargan() -> torch.nn.Module:
    torch.manual_seed(4)
    return build_victim("stargan", checkpoint=None, arch={"conv_dim": 8, "repeat_num": 1}, image_size=16)


def test_bf16_gradients_are_fp32_tensors_that_differ_from_fp32_but_mostly_keep_the_sign() -> None:
    victim = _small_stargan()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    conditions = victim.conditions(torch.zeros(2, 40))
    protected = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    targets = clean_outputs(victim, x, conditions, None)
    grads, losses = stacked_gradients(victim, protected, conditions, targets, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_targets = clean_outputs(victim, x, conditions, None)
        bf16_grads, bf16_losses = stacked_gradients(victim, protected, conditions, bf16_targets, None)
    assert bf16_targets[0].dtype == torch.float32 and bf16_grads.dtype == torch.float32
    assert bf16_losses.dtype == torch.float32 and torch.isfinite(bf16_grads).all()
    assert not torch.equal(bf16_grads, grads)  # bf16 really ran
    agree = (bf16_grads.sign() == grads.sign()).float().mean().item()
    assert agree > 0.75, agree
    assert torch.allclose(bf16_losses, losses, rtol=0.1, atol=1e-4)


def test_channels_last_changes_no_output_or_gradient() -> None:
    plain, fast = _small_stargan(), _small_stargan()
    apply_execution(fast, channels_last=True)
    first_conv = next(m for m in fast.network.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    layout = torch.channels_last
    fast.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous(memory_format=layout)))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    conditions = plain.conditions(torch.zeros(2, 40))
    targets = clean_outputs(plain, x, conditions, None)
    protected = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    expected, _ = stacked_gradients(plain, protected, conditions, targets, None)
    got, _ = stacked_gradients(fast, protected, conditions, targets, None)
    assert seen and all(seen)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)
    assert torch.allclose(fast(x, conditions[0]), plain(x, conditions[0]), atol=1e-6)


@pytest.mark.slow
def test_a_bf16_channels_last_run_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, ["+victims=[stargan,attgan]", "weights=random", "execution.precision=bf16-mixed",
                                 "execution.channels_last=true", "attack.iterations=2", "data.craft=[astronaut]",
                                 "data.evaluate=[grace_hopper]", *small("stargan", "attgan")])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.victims.stargan.channels_last is True
    metrics = craft(cfg)
    watermark = load_watermark(tmp_path / "watermark.pt").tensor
    assert watermark.dtype == torch.float32 and 0 < watermark.abs().max() <= 0.05 + 1e-6
    for name in ("stargan", "attgan"):
        assert 0.0 <= metrics[f"sr_mask/{name}"] <= 1.0 and metrics[f"avg_l/{name}"] > 0


def test_a_run_refuses_fp16_before_any_work(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, ["+victims=[stargan]", "weights=random", "trainer.precision=16-mixed",
                                 *small("stargan")])
    with pytest.raises(ConfigError, match="trainer.precision=16-mixed"):
        craft(cfg)
