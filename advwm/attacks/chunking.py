"""How many (image, condition) pairs go through a victim at once: fixed chunks, or chosen from free memory.

Why an object: on a GPU the best chunk is the largest that fits (stacking fills the device), and what fits
depends on the victim, the image size and what else holds memory. CMUA's final setting (batch 64, four
victims, 256 px) asked for 68+ GiB stacked and ran out of memory on an 80 GB H100, while chunks of 64 pairs
fit in 34 GiB. So `micro_batch: auto` on an accelerator measures each victim's bytes per pair once (the
first chunk it runs is the probe, so no work is wasted), takes as many pairs as the free memory holds with
a safety margin, and, should a chunk still run out of memory, halves it, remembers the smaller size and
runs that chunk again. Chunks are computed independently (each one's gradient is taken on its own and
written to its own rows), so a retried chunk gives exactly the gradient an uninterrupted run gives.

On the CPU `auto` stays one pair at a time: the 2-core benchmark measured that fastest (README, Speed).

The device's memory is an injected `DeviceMemory`, so the choice is testable on the CPU with a simulated
budget (`SimulatedMemory`) and a victim that raises `torch.OutOfMemoryError` above a chunk size.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

import torch

log = logging.getLogger(__name__)

# One chunk of work: the rows (pairs) it covers. It must write its results to those rows only, so running
# it again after an out-of-memory error gives the same results.
Work = Callable[[slice], None]


class Chunker(ABC):
    """Runs `work` over `total` pairs in chunks."""

    @abstractmethod
    def run(self, total: int, work: Work) -> None:
        """Call `work(rows)` for consecutive slices covering range(total), each at most the chunk size."""


class FixedChunks(Chunker):
    """A fixed chunk size (None or <= 0: all pairs at once); an out-of-memory error is the user's to fix."""

    def __init__(self, size: int | None, limit: int | None = None, name: str = "") -> None:
        self.size = size if size and size > 0 else None
        self.limit = limit
        self.name = name

    def chunk(self, total: int) -> int:
        size = self.size or total
        return max(1, min(size, self.limit or size, total))

    def run(self, total: int, work: Work) -> None:
        size = self.chunk(total)
        try:
            for start in range(0, total, size):
                work(slice(start, min(start + size, total)))
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(
                f"victim {self.name or '?'} ran out of memory with {size} (image, condition) pairs at once: "
                f"set victims.{self.name or '<name>'}.micro_batch to a smaller number or to auto") from error

    def __repr__(self) -> str:
        return f"FixedChunks({self.size}{f', limit={self.limit}' if self.limit else ''})"


class DeviceMemory(Protocol):
    """What the memory-aware chunker needs to know about a device."""

    def available(self) -> int:
        """Bytes a new allocation can still get (free on the device plus what the allocator caches unused)."""

    def peak_during(self, work: Callable[[], None], pairs: int) -> int:
        """Run `work` (which processes `pairs` pairs) and return the bytes it needed above what was allocated
        before it started (its peak)."""

    def release(self) -> None:
        """Give cached blocks back after an out-of-memory error (fragmentation)."""


class CudaMemory:
    """A CUDA device's memory, read through torch.cuda (torch >= 2.0: mem_get_info, max_memory_allocated)."""

    def __init__(self, device: torch.device | int | None = None) -> None:
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)

    def available(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free + max(cached, 0))

    def peak_during(self, work: Callable[[], None], pairs: int) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        work()
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device) - before)

    def release(self) -> None:
        torch.cuda.empty_cache()


class SimulatedMemory:
    """A device with a fixed budget where each pair needs `bytes_per_pair` (+ `overhead` per chunk): tests,
    and `experiments/gpu_check.sh --dry-run` on the CPU. Counts the probes it was asked for."""

    def __init__(self, budget: int, bytes_per_pair: int, overhead: int = 0) -> None:
        self.budget = int(budget)
        self.bytes_per_pair = int(bytes_per_pair)
        self.overhead = int(overhead)
        self.probes = 0
        self.releases = 0

    def available(self) -> int:
        return self.budget

    def peak_during(self, work: Callable[[], None], pairs: int) -> int:
        self.probes += 1
        work()
        return self.overhead + pairs * self.bytes_per_pair

    def release(self) -> None:
        self.releases += 1


def chunk_for(available: int, bytes_per_pair: float, margin: float) -> int:
    """The most pairs whose memory fits in `available` bytes less the safety `margin` (a fraction), >= 1."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must lie in [0, 1), got {margin}")
    usable = available * (1.0 - margin)
    return max(1, int(usable // max(bytes_per_pair, 1.0)))


class MemoryAwareChunks(Chunker):
    """`micro_batch: auto` on an accelerator: probe once, fill the free memory, halve on out-of-memory.

    The first chunk of the first call runs `probe_pairs` pairs and measures the bytes it needed (peak above
    the baseline, per pair); the chunk is then the most pairs `chunk_for` allows in the memory available
    right after the probe. On `torch.OutOfMemoryError` the chunk is halved (down to 1 pair; below that the
    error stands), remembered for every later call, and the failed chunk runs again. The size chosen and
    every halving are logged once, naming the victim and what the chunk is for (`purpose`).
    """

    def __init__(self, name: str, memory: DeviceMemory, *, margin: float = 0.2, probe_pairs: int = 1,
                 limit: int | None = None, purpose: str = "gradient") -> None:
        if probe_pairs < 1:
            raise ValueError(f"probe_pairs must be >= 1, got {probe_pairs}")
        chunk_for(1, 1, margin)  # validates the margin
        self.name = name
        self.memory = memory
        self.margin = float(margin)
        self.probe_pairs = int(probe_pairs)
        self.limit = limit
        self.purpose = purpose
        self.size: int | None = None  # the remembered chunk (None until probed)
        self.bytes_per_pair: float | None = None
        self.halvings = 0

    def _probe(self, start: int, total: int, work: Work) -> int:
        pairs = min(self.probe_pairs, total - start, self.limit or total)
        needed = self.memory.peak_during(lambda: work(slice(start, start + pairs)), pairs)
        self.bytes_per_pair = max(needed, 1) / pairs
        available = self.memory.available()
        size = chunk_for(available, self.bytes_per_pair, self.margin)
        self.size = min(size, self.limit) if self.limit else size
        log.info("victim %s: micro_batch auto -> %d (image, condition) pairs per %s chunk (%.1f MiB per pair "
                 "measured, %.1f GiB available, margin %.0f%%)", self.name, self.size, self.purpose,
                 self.bytes_per_pair / 2**20, available / 2**30, 100 * self.margin)
        return start + pairs

    def _halve(self, failed: int) -> None:
        if failed <= 1:
            raise torch.OutOfMemoryError(f"victim {self.name}: one (image, condition) pair does not fit in the "
                                         "device's memory: use a smaller image_size or a larger device")
        self.size = max(1, failed // 2)
        self.halvings += 1
        self.memory.release()
        log.warning("victim %s: out of memory with %d pairs per %s chunk: micro_batch auto -> %d from now on",
                    self.name, failed, self.purpose, self.size)

    def run(self, total: int, work: Work) -> None:
        start = 0
        while start < total:
            if self.size is None:
                try:
                    start = self._probe(start, total, work)
                except torch.OutOfMemoryError:
                    if self.probe_pairs <= 1:
                        raise
                    self.probe_pairs //= 2  # a probe larger than the memory: a smaller one
                    self.memory.release()
                continue
            stop = min(start + self.size, total)
            try:
                work(slice(start, stop))
            except torch.OutOfMemoryError:
                failed = stop - start
            else:
                start = stop
                continue
            self._halve(failed)  # outside the except block: the failed chunk's tensors are freed by now

    def __repr__(self) -> str:
        return f"MemoryAwareChunks({self.name!r}, size={self.size}, margin={self.margin})"


MicroBatch = int | None | Chunker


def as_chunker(micro_batch: MicroBatch) -> Chunker:
    """A Chunker for a micro_batch given as a number (None = all pairs) or as a Chunker already."""
    return micro_batch if isinstance(micro_batch, Chunker) else FixedChunks(micro_batch)
