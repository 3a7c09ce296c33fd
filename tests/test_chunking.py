"""`micro_batch: auto` on an accelerator, checked on the CPU with a simulated memory budget and fake out-of-memory
errors: the chunk follows the budget and the measured bytes per pair, halves and remembers on out-of-memory,
and the gradient is the one an unchunked pass gives."""

from __future__ import annotations

import logging

import pytest
import torch
from lightning.pytorch import Trainer
from toys import LinearVictim, MixVictim, TensorFaces, base_attack

from advwm.attacks import NoRegularizer, Uniform, UniformDomains, Universal
from advwm.attacks.aggregators.base import Iteration
from advwm.attacks.chunking import FixedChunks, MemoryAwareChunks, SimulatedMemory, as_chunker, chunk_for
from advwm.attacks.domains import clean_outputs, stacked_gradients
from advwm.attacks.module import WatermarkAttack
from advwm.victims import build_victim

pytestmark = pytest.mark.usefixtures("single_thread")


class Recorder:
    """Work that records the rows it was given and fails with an out-of-memory error above `threshold` rows."""

    def __init__(self, threshold: int | None = None) -> None:
        self.threshold = threshold
        self.calls: list[tuple[int, int]] = []
        self.failures = 0

    def __call__(self, rows: slice) -> None:
        self.calls.append((rows.start, rows.stop))
        if self.threshold is not None and rows.stop - rows.start > self.threshold:
            self.failures += 1
            raise torch.OutOfMemoryError(f"simulated: {rows.stop - rows.start} rows > {self.threshold}")


def test_chunk_for_fills_the_budget_less_the_margin() -> None:
    assert chunk_for(1000, 100, 0.2) == 8  # 800 usable bytes / 100 per pair
    assert chunk_for(1000, 100, 0.0) == 10
    assert chunk_for(999, 100, 0.0) == 9
    assert chunk_for(50, 100, 0.2) == 1  # never below one pair
    with pytest.raises(ValueError, match="margin"):
        chunk_for(1000, 100, 1.0)


def test_auto_probes_once_then_fills_the_simulated_budget(caplog) -> None:
    memory = SimulatedMemory(budget=1000, bytes_per_pair=30)
    chunker = MemoryAwareChunks("toy", memory, margin=0.2)
    work = Recorder()
    with caplog.at_level(logging.INFO, logger="advwm.attacks.chunking"):
        chunker.run(37, work)
        chunker.run(37, work)
    # the probe is one pair (and real work), then floor(1000 * 0.8 / 30) = 26 pairs per chunk
    assert work.calls[:3] == [(0, 1), (1, 27), (27, 37)]
    assert work.calls[3:] == [(0, 26), (26, 37)]  # the second call reuses the size: no second probe
    assert memory.probes == 1 and chunker.size == 26 and chunker.bytes_per_pair == 30
    chosen = [r.getMessage() for r in caplog.records if "micro_batch auto -> 26" in r.getMessage()]
    assert len(chosen) == 1 and "toy" in chosen[0]


def test_auto_halves_on_out_of_memory_remembers_and_reruns_the_failed_chunk(caplog) -> None:
    memory = SimulatedMemory(budget=1000, bytes_per_pair=30)
    chunker = MemoryAwareChunks("toy", memory, margin=0.2)
    work = Recorder(threshold=5)  # the device holds less than the estimate says
    with caplog.at_level(logging.WARNING, logger="advwm.attacks.chunking"):
        chunker.run(20, work)
    # probe (0,1); then 26 by the budget: the 19 rows left fail -> 9 (half the failed chunk) fails -> 4 fits
    assert work.calls == [(0, 1), (1, 20), (1, 10), (1, 5), (5, 9), (9, 13), (13, 17), (17, 20)]
    assert chunker.size == 4 and chunker.halvings == 2 and memory.releases == 2
    work.calls.clear()
    chunker.run(20, work)  # remembered: no failure the second time
    assert work.failures == 2 and work.calls == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20)]
    assert sum("out of memory with" in r.getMessage() for r in caplog.records) == 2


def test_auto_gives_up_when_one_pair_does_not_fit_and_fixed_chunks_say_what_to_change() -> None:
    chunker = MemoryAwareChunks("toy", SimulatedMemory(budget=1000, bytes_per_pair=30), margin=0.2)
    with pytest.raises(torch.OutOfMemoryError, match="one \\(image, condition\\) pair does not fit"):
        chunker.run(4, _fails_after_probe())
    with pytest.raises(torch.OutOfMemoryError, match="victims.toy.micro_batch"):
        FixedChunks(8, name="toy").run(16, Recorder(threshold=4))


def _fails_after_probe():
    calls = {"n": 0}

    def work(rows: slice) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise torch.OutOfMemoryError("simulated")

    return work


def test_a_probe_too_large_is_halved() -> None:
    chunker = MemoryAwareChunks("toy", SimulatedMemory(budget=1000, bytes_per_pair=30), probe_pairs=8)
    work = Recorder(threshold=2)
    chunker.run(10, work)
    assert work.calls[:3] == [(0, 8), (0, 4), (0, 2)] and chunker.probe_pairs == 2 and chunker.bytes_per_pair == 30


def test_fixed_chunks_cover_every_pair_once() -> None:
    for size, expected in ((None, [(0, 7)]), (0, [(0, 7)]), (3, [(0, 3), (3, 6), (6, 7)]), (10, [(0, 7)])):
        work = Recorder()
        as_chunker(size).run(7, work)
        assert work.calls == expected, size
    work = Recorder()
    FixedChunks(None, limit=2).run(5, work)  # a victim that cannot stack conditions: at most one batch
    assert work.calls == [(0, 2), (2, 4), (4, 5)]


class OutOfMemoryAbove(torch.nn.Module):
    """Wraps a victim; its forward raises torch.OutOfMemoryError for more than `threshold` rows."""

    def __init__(self, victim: torch.nn.Module, threshold: int) -> None:
        super().__init__()
        self.victim = victim
        self.threshold = threshold
        self.name = victim.name
        self.stackable = True
        self.failures = 0
        self.condition_names = victim.condition_names

    def conditions(self, labels: torch.Tensor) -> list[torch.Tensor]:
        return self.victim.conditions(labels)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.threshold:
            self.failures += 1
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]} rows")
        return self.victim(x, condition)


def test_stargan_gradient_with_out_of_memory_retries_equals_the_unchunked_one() -> None:
    torch.manual_seed(3)
    stargan = build_victim("stargan", checkpoint=None, arch={"conv_dim": 8, "repeat_num": 1}, image_size=16)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    conditions = stargan.conditions(torch.zeros(3, 40))
    targets = clean_outputs(stargan, x, conditions, micro_batch=None)
    protected = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    whole, whole_losses = stacked_gradients(stargan, protected, conditions, targets, micro_batch=None)
    flaky = OutOfMemoryAbove(stargan, threshold=4)
    chunker = MemoryAwareChunks("stargan", SimulatedMemory(budget=10**6, bytes_per_pair=10**4), margin=0.2)
    chunked, chunked_losses = stacked_gradients(flaky, protected, conditions, targets, micro_batch=chunker)
    # 15 pairs: the probe (1), then 80 by the budget -> 14 left in one chunk fails, 7 fails, 3 fits
    assert flaky.failures == 2 and chunker.size == 3
    assert torch.allclose(chunked, whole, atol=1e-6, rtol=1e-4)
    assert torch.allclose(chunked_losses, whole_losses, atol=1e-7)
    # and against the gradient written out condition by condition
    for k, (c, t) in enumerate(zip(conditions, targets, strict=True)):
        p = protected.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((stargan(p, c) - t).pow(2).flatten(1).mean(1).sum(), p)
        assert torch.allclose(chunked[k], g, atol=1e-6, rtol=1e-4)


def _module(victims, **kwargs) -> WatermarkAttack:
    return WatermarkAttack(victims, aggregator=Uniform(), domains=UniformDomains(), regularizer=NoRegularizer(),
                           attack=base_attack("pgd", 0.01, iterations=2), scope=Universal(), eps=0.05, image_size=4,
                           batch_size=4, seed=3, **kwargs)


def test_engine_auto_uses_the_injected_memory_and_its_gradient_is_the_hand_computed_one() -> None:
    """LinearVictim: d/dp mean((g (1+c) (p - x))^2) = 2 g^2 (1+c)^2 (p - x) / N, averaged over its two conditions."""
    gain, x = 1.5, torch.rand(4, 3, 4, 4) * 1.8 - 0.9
    flaky = OutOfMemoryAbove(LinearVictim("a", gain), threshold=3)
    module = _module([flaky], memory=SimulatedMemory(budget=8000, bytes_per_pair=1000))
    module.perturbation.data.uniform_(-0.05, 0.05)
    conditions = [c for c in flaky.conditions(torch.zeros(4, 40))]
    targets = clean_outputs(flaky, x, conditions, micro_batch=1)
    result = module.victim_gradient(0, Iteration(x=x, labels=torch.zeros(4, 40), conditions=[conditions],
                                                 targets=[targets], step=0, batch_number=0))
    p = (x + module.perturbation.detach()).clamp(-1, 1)
    by_hand = sum(2 * gain**2 * (1 + level) ** 2 * (p - x) / 48 for level in (0.0, 1.0)) / 2
    assert torch.allclose(result.grad, by_hand, atol=1e-7)
    chunker = module.micro_batch(flaky, 4)
    assert isinstance(chunker, MemoryAwareChunks) and chunker.size == 3 and flaky.failures == 1  # 6 by budget -> 3
    assert module.chunk_sizes() == {"a/gradient": 3}


def test_cpu_auto_stays_one_pair_at_a_time_without_injected_memory() -> None:
    module = _module([LinearVictim("a", 1.0)])
    chunker = module.micro_batch(module.victims[0], 4)
    assert isinstance(chunker, FixedChunks) and chunker.chunk(8) == 1
    module.micro_batches = {"a": None}
    assert module.micro_batch(module.victims[0], 4).chunk(8) == 8


def test_a_run_with_out_of_memory_retries_crafts_the_unchunked_watermark() -> None:
    x = torch.rand(4, 3, 4, 4) * 1.8 - 0.9
    watermarks = []
    for setting in ("stacked", "auto with failures"):
        victims = [MixVictim("a", 1.0), LinearVictim("b", 2.0)]
        if setting == "stacked":
            module = _module(victims, micro_batches={"a": None, "b": None})
        else:
            victims = [OutOfMemoryAbove(v, threshold=3) for v in victims]
            module = _module(victims, memory=SimulatedMemory(budget=10**6, bytes_per_pair=10))
        Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False).fit(module, TensorFaces(x, 4, 2))
        watermarks.append(module.watermark())
    assert sum(v.failures for v in victims) >= 2
    assert torch.allclose(watermarks[0], watermarks[1], atol=1e-7)
    assert watermarks[0].abs().max() > 0
