"""On a CUDA GPU: every victim end to end in bf16 with channels_last and torch.compile, and `micro_batch: auto`
falling back (halving) on a real out-of-memory error. Marked `gpu`; skipped without CUDA (CI has none).

Run them where a GPU is: `pytest -m gpu tests/test_gpu.py` (experiments/gpu_check.sh does, with the benchmark).
They need no Hydra except the pipeline test, and use no timing. `ADVWM_GPU_DRY_RUN=1` runs the ones that need no
CUDA API on the CPU instead (`experiments/gpu_check.sh --dry-run`), to check the code before a GPU is at hand.
"""

from __future__ import annotations

import functools
import logging
import os

import pytest
import torch
from lightning.pytorch import Trainer

from advwm.attacks import PGD, BaseAttack, CMUAFusion, NoRegularizer, UniformDomains, Universal
from advwm.attacks.chunking import CudaMemory, MemoryAwareChunks
from advwm.attacks.domains import clean_outputs, stacked_gradients
from advwm.attacks.module import WatermarkAttack
from advwm.data import TensorFaces
from advwm.victims import build_victim
from advwm.victims.execution import apply_execution
from advwm.victims.small import SMALL_ARCHITECTURES

CUDA = torch.cuda.is_available()
DRY_RUN = not CUDA and os.environ.get("ADVWM_GPU_DRY_RUN") == "1"  # the same tests on the CPU
DEVICE = torch.device("cuda" if CUDA else "cpu")
ACCELERATOR = "gpu" if CUDA else "cpu"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (CUDA or DRY_RUN), reason="needs a CUDA GPU (run on a GPU "
                                                  "machine: bash experiments/gpu_check.sh)")]
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: this test reads CUDA's memory")

VICTIMS = ("stargan", "aggan", "attgan", "hisd", "stgan", "ugatit")
SIZE = 32
FACES = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
LABELS = (torch.arange(40) % 2).float().expand(4, -1).clone()  # alternate attributes: every victim edits


def tiny_victims(names, *, channels_last: bool, compile_network: bool) -> list:
    torch.manual_seed(0)
    return [apply_execution(build_victim(n, checkpoint=None, arch=SMALL_ARCHITECTURES[n], image_size=SIZE),
                            channels_last=channels_last, compile=compile_network) for n in names]


def craft(victims, precision: str, iterations: int = 3, micro_batches: dict | None = None) -> WatermarkAttack:
    attack = BaseAttack(functools.partial(PGD), step_size=0.01, iterations=iterations, name="pgd")
    module = WatermarkAttack(victims, aggregator=CMUAFusion(), domains=UniformDomains(), regularizer=NoRegularizer(),
                             attack=attack, scope=Universal(), eps=0.05, image_size=SIZE, batch_size=4, seed=0,
                             micro_batches=micro_batches)
    Trainer(accelerator=ACCELERATOR, devices=1, precision=precision, max_epochs=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(module, TensorFaces(FACES, repeats=iterations, labels=LABELS))
    return module


def _check_watermark(module: WatermarkAttack) -> None:
    mark = module.watermark()
    assert mark.dtype == torch.float32 and torch.isfinite(mark).all()
    assert 0 < mark.abs().max() <= 0.05 + 1e-6
    sizes = module.chunk_sizes()  # auto on CUDA: memory-aware, probed once per victim and purpose
    if CUDA:
        assert {key.split("/")[0] for key in sizes} == {v.name for v in module.victims}
        assert all(size is not None and size >= 1 for size in sizes.values()), sizes


def test_every_victim_in_one_bf16_run_on_cuda() -> None:
    module = craft(tiny_victims(VICTIMS, channels_last=False, compile_network=False), "bf16-mixed")
    _check_watermark(module)


def test_every_victim_with_bf16_channels_last_and_compile_on_cuda() -> None:
    """execution=gpu_fast on tiny victims. All pairs at once (micro_batch=null), so each network compiles for two
    shapes only (clean outputs without a graph, gradients): auto's probe and chunks would add shapes, and
    compile time; auto itself is checked by the other tests."""
    module = craft(tiny_victims(VICTIMS, channels_last=True, compile_network=True), "bf16-mixed", iterations=2,
                   micro_batches=dict.fromkeys(VICTIMS))
    mark = module.watermark()
    assert mark.dtype == torch.float32 and torch.isfinite(mark).all() and 0 < mark.abs().max() <= 0.05 + 1e-6
    assert all(type(v.network).__name__ == "OptimizedModule" for v in module.victims)


def test_fp32_and_bf16_gradients_on_cuda_mostly_agree_in_sign() -> None:
    for victim in tiny_victims(VICTIMS, channels_last=False, compile_network=False):
        victim.to(DEVICE)
        x = torch.rand(2, 3, SIZE, SIZE, device=DEVICE) * 1.8 - 0.9
        conditions = [c.to(DEVICE) for c in victim.conditions(torch.zeros(2, 40, device=DEVICE))]
        protected = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
        g32, _ = stacked_gradients(victim, protected, conditions, clean_outputs(victim, x, conditions, None), None)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            g16, _ = stacked_gradients(victim, protected, conditions, clean_outputs(victim, x, conditions, None), None)
        assert g16.dtype == torch.float32 and torch.isfinite(g16).all()
        assert (g16.sign() == g32.sign()).float().mean() > 0.75, victim.name


@needs_cuda
def test_auto_halves_on_a_real_out_of_memory_error_and_keeps_the_gradient(caplog) -> None:
    """StarGAN at full size, 256 px: 8 images x 5 conditions stacked need ~11 GiB; capped at ~2 GiB more than
    what is allocated, the probe's estimate (from the device's free memory, which knows no cap) overshoots,
    the chunk runs out of memory, halves until it fits, and the gradient is the one computed pair by pair."""
    torch.cuda.empty_cache()
    victim = build_victim("stargan", checkpoint=None, image_size=256).cuda()
    x = torch.rand(8, 3, 256, 256, device="cuda") * 2 - 1
    conditions = [c.cuda() for c in victim.conditions(torch.zeros(8, 40, device="cuda"))]
    targets = clean_outputs(victim, x, conditions, 8)
    protected = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    expected, _ = stacked_gradients(victim, protected, conditions, targets, 1)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = (torch.cuda.memory_allocated() + 2 * 2**30) / total
    chunker = MemoryAwareChunks("stargan", CudaMemory(), margin=0.2)
    torch.cuda.set_per_process_memory_fraction(cap)
    try:
        with caplog.at_level(logging.INFO, logger="advwm.attacks.chunking"):
            got, _ = stacked_gradients(victim, protected, conditions, targets, chunker)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert chunker.halvings >= 1 and 1 <= chunker.size < 40
    assert any("out of memory with" in r.getMessage() for r in caplog.records)
    # TF32 convolutions (cuDNN's default) pick kernels by batch size: equal up to their rounding
    assert ((got - expected).norm() / expected.norm()).item() < 1e-2


@needs_cuda
def test_auto_fills_the_free_memory_without_a_cap() -> None:
    victim = build_victim("stargan", checkpoint=None, image_size=256).cuda()
    x = torch.rand(4, 3, 256, 256, device="cuda") * 2 - 1
    conditions = [c.cuda() for c in victim.conditions(torch.zeros(4, 40, device="cuda"))]
    targets = clean_outputs(victim, x, conditions, 4)
    chunker = MemoryAwareChunks("stargan", CudaMemory(), margin=0.2)
    stacked_gradients(victim, x, conditions, targets, chunker)
    # one pair at 256 px: tens to hundreds of MiB; an 80 GB GPU holds all 20 pairs (the old auto stacked them)
    assert chunker.bytes_per_pair is not None and 2**20 < chunker.bytes_per_pair < 4 * 2**30
    assert chunker.halvings == 0 and chunker.size >= 20


def test_the_pipeline_runs_with_execution_gpu_fast(tmp_path) -> None:
    """python -m advwm.run's craft(cfg) with execution=gpu_fast on tiny victims (needs Hydra: carried wheels)."""
    pytest.importorskip("hydra")
    from test_run import compose_run, small

    from advwm.pipeline import craft as craft_run

    cfg = compose_run(tmp_path, ["+victims=[stargan,attgan]", "weights=random", "execution=gpu_fast",
                                 f"trainer.accelerator={ACCELERATOR}", "attack.iterations=2", "data.craft=[astronaut]",
                                 "data.evaluate=[grace_hopper]", *small("stargan", "attgan")])
    metrics = craft_run(cfg)
    assert metrics["avg_l/stargan"] > 0 and 0 <= metrics["sr_mask/mean"] <= 1
