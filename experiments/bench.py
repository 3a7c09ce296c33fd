"""Benchmark: time, FLOP rate and memory of one attack iteration, per victim and execution plan, and end to end.

Per victim (`--victims`), one gradient iteration of the engine (`advwm.attacks.domains.stacked_gradients`, victims
frozen) in several plans, next to a reference-style loop (weights NOT frozen, one call per condition, as the
CMUA/CDMAA code does it):

- reference-style: fp32, weights require grad, one forward/backward per condition
- frozen, stacked: every (image, condition) pair in one forward (micro_batch=null)
- frozen, per condition: one condition's images at a time (micro_batch=B)
- frozen, auto: what `micro_batch: auto` does (CPU: one pair at a time; CUDA: chunks from the free memory)
- bf16, auto: the same under bf16 autocast (trainer.precision=bf16-mixed)
- bf16 + channels_last, auto
- bf16 + channels_last + compile, auto (execution=gpu_fast; on the CPU only with --compile)

For each: ms per image·condition·iteration, speed-up over the reference-style loop, achieved TFLOP/s (the FLOPs
torch.utils.flop_counter.FlopCounterMode counts for the plan, eager), % of a peak (CUDA: --peak-tflops, default
790, the H100/H200 bf16 matmul peak measured by earlier sessions; CPU: this CPU's own fp32/bf16 matmul rate,
measured here, for the plan's dtype) and the peak memory of the warm-up call (CUDA: max_memory_allocated; CPU:
the process's peak RSS above its level when the call starts, a lower bound: the allocator reuses freed memory).
The plans are timed round-robin (`--iterations` rounds, the median), so a change of the machine's load hits
every plan alike. Then `--e2e-batches`: seconds per CMUA iteration (aggregator=cmua,
PGD, universal) through Lightning with the four CMUA victims (`--e2e-victims`), fp32 and the fast path.

    python experiments/bench.py                                   # stargan + attgan, 256 px, batch 2, CPU
    python experiments/bench.py --device cuda --batch 16 --victims stargan aggan attgan hisd stgan ugatit \\
        --e2e-batches 16 64                                         # what experiments/gpu_check.sh runs
    python experiments/bench.py --tiny --size 32 --e2e-batches 2    # the same entry points in seconds (dry run)

Writes `<out>/bench.json` and `bench.md`. Numbers depend on the machine and its load: report them with the
machine they came from (the JSON records it, and the load average on Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.flop_counter import FlopCounterMode

from advwm.attacks import PGD, BaseAttack, CMUAFusion, NoRegularizer, UniformDomains, Universal
from advwm.attacks.chunking import Chunker, CudaMemory, FixedChunks, MemoryAwareChunks
from advwm.attacks.domains import clean_outputs, stacked_gradients
from advwm.attacks.module import WatermarkAttack
from advwm.data import TensorFaces
from advwm.victims import build_victim
from advwm.victims.execution import apply_execution
from advwm.victims.small import SMALL_ARCHITECTURES

CMUA_VICTIMS = ("stargan", "aggan", "attgan", "hisd")
REFERENCE = "reference-style (weights not frozen, per condition)"


# ---- machine ---------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "device": str(device),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    with contextlib.suppress(OSError, AttributeError):
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    return info


def matmul_tflops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0, windows: int = 4) -> float:
    """This device's rate on square matrix products in `dtype` (n = 8192 on CUDA, 1024 on the CPU): the best of
    `windows` windows of seconds/windows each, so a busy moment of a shared machine does not lower the peak."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / windows:
            a @ b
            count += 1
            if device.type == "cuda" and count % 10 == 0:
                sync(device)
        sync(device)
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start) / 1e12)
    return best


def _proc_status_kib(field: str) -> int | None:
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
        return int(line.split()[1])
    except (OSError, StopIteration):
        return None


class PeakMemory:
    """Peak memory of a region. CUDA: max_memory_allocated (everything allocated, weights included). CPU: the
    process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above its RSS when the region began, so the
    libraries and weights already loaded are not counted; without /proc, the process's high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib: float | None = None
        self._start_kib = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        self._start_kib = _proc_status_kib("VmRSS") or 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        peak = _proc_status_kib("VmHWM")
        if peak is None:
            self.mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        else:
            self.mib = (peak - self._start_kib) / 1024


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---- per-victim plans ------------------------------------------------------------------------------------
def make_victim(name: str, size: int, device: torch.device, tiny: bool) -> torch.nn.Module:
    arch = SMALL_ARCHITECTURES[name] if tiny else {}
    return build_victim(name, checkpoint=None, image_size=size, arch=arch).to(device)


def reference_style_step(victim, x, conditions, targets) -> None:
    """The reference codes' inner step: parameters require grad, one forward/backward per condition."""
    victim.network.requires_grad_(True)
    try:
        for condition, target in zip(conditions, targets, strict=True):
            p = x.detach().clone().requires_grad_(True)
            loss = torch.nn.functional.mse_loss(victim(p, condition), target)
            victim.network.zero_grad()
            loss.backward()
    finally:
        victim.network.requires_grad_(False)
        victim.network.zero_grad(set_to_none=True)


def frozen_input_gradient(victim, x, conditions, targets) -> None:
    """The frozen plans' arithmetic, written with backward() for FlopCounterMode (whose module tracker cannot
    follow torch.autograd.grad on a leaf): all pairs stacked, the input gradient only (weights are frozen)."""
    p = x.detach().repeat(len(conditions), 1, 1, 1).requires_grad_(True)
    out = victim(p, torch.cat(list(conditions)))
    (out - torch.cat(list(targets))).pow(2).flatten(1).mean(1).sum().backward()


def auto_chunker(name: str, device: torch.device) -> Chunker:
    """What `micro_batch: auto` gives a victim on this device (advwm.attacks.module.WatermarkAttack.micro_batch)."""
    return MemoryAwareChunks(name, CudaMemory(device)) if device.type == "cuda" else FixedChunks(1)


@dataclass
class Plan:
    name: str
    run: Callable[[], object]
    flops: str  # which FLOP count applies: "reference" or "frozen" (chunking, dtype and layout change none)
    dtype: str  # "fp32" or "bf16": which peak a CPU run compares with
    chunker: Chunker | None = None


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def victim_plans(name: str, victim, fast_victim, protected, conditions, targets, batch: int,
                 device: torch.device) -> list[Plan]:
    def gradient(v, chunker, bf16: bool = False):
        def run():
            with autocast(device, bf16):
                stacked_gradients(v, protected, conditions, targets, chunker)
        return run

    auto, auto_bf16, auto_cl = (auto_chunker(name, device) for _ in range(3))
    plans = [
        Plan(REFERENCE, lambda: reference_style_step(victim, protected, conditions, targets), "reference", "fp32"),
        Plan("frozen, stacked (micro_batch=null)", gradient(victim, None), "frozen", "fp32"),
        Plan("frozen, per condition (micro_batch=B)", gradient(victim, batch), "frozen", "fp32"),
        Plan("frozen, auto", gradient(victim, auto), "frozen", "fp32", auto),
        Plan("bf16, auto", gradient(victim, auto_bf16, bf16=True), "frozen", "bf16", auto_bf16),
    ]
    cl_victim = copy.deepcopy(victim)
    apply_execution(cl_victim, channels_last=True)
    plans.append(Plan("bf16 + channels_last, auto", gradient(cl_victim, auto_cl, bf16=True), "frozen", "bf16",
                      auto_cl))
    if fast_victim is not None:
        auto_fast = auto_chunker(name, device)
        plans.append(Plan("bf16 + channels_last + compile, auto", gradient(fast_victim, auto_fast, bf16=True),
                          "frozen", "bf16", auto_fast))
    return plans


def bench_victim(name: str, size: int, batch: int, iterations: int, device: torch.device, *, compile_plan: bool,
                 tiny: bool, peaks: dict[str, float], plan_filter: list[str] | None) -> dict:
    torch.manual_seed(0)
    victim = make_victim(name, size, device, tiny)
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    conditions = [c.to(device) for c in victim.conditions(torch.zeros(batch, 40, device=device))]
    targets = clean_outputs(victim, x, conditions, micro_batch=batch)
    protected = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    units = batch * len(conditions)  # image x condition pairs per iteration
    fast_victim = None
    if compile_plan:
        fast_victim = copy.deepcopy(victim)
        apply_execution(fast_victim, channels_last=True, compile=True)
    plans = victim_plans(name, victim, fast_victim, protected, conditions, targets, batch, device)
    if plan_filter:
        plans = [p for p in plans if p.name == REFERENCE or any(f in p.name for f in plan_filter)]
    flops = {"reference": count_flops(plans[0].run),
             "frozen": count_flops(lambda: frozen_input_gradient(victim, protected, conditions, targets))}
    rows: dict[str, dict] = {}
    times: dict[str, list[float]] = {}
    peaks_mib: dict[str, float] = {}
    for plan in plans:  # warm-up (allocator, kernels, auto's probe, compilation) and the peak memory of one call
        try:
            with PeakMemory(device) as peak:
                plan.run()
                sync(device)
        except torch.OutOfMemoryError as error:
            rows[plan.name] = {"error": f"out of memory: {str(error).splitlines()[0][:200]}"}
            print(f"{name:8s} {plan.name:42s} OUT OF MEMORY", flush=True)
            continue
        times[plan.name], peaks_mib[plan.name] = [], peak.mib or 0.0
    live = [p for p in plans if p.name in times]
    for _ in range(iterations):  # round-robin: a change of the machine's load hits every plan alike
        for plan in live:
            sync(device)
            start = time.perf_counter()
            plan.run()
            sync(device)
            times[plan.name].append(time.perf_counter() - start)
    for plan in live:
        seconds = statistics.median(times[plan.name])
        tflops = flops[plan.flops] / seconds / 1e12
        peak_tflops = peaks.get(plan.dtype, peaks.get("bf16"))
        row = {"seconds_per_iteration": round(seconds, 4), "ms_per_pair": round(1000 * seconds / units, 3),
               "times": [round(t, 4) for t in times[plan.name]], "flops_per_iteration": flops[plan.flops],
               "tflops": round(tflops, 3), "percent_of_peak": round(100 * tflops / peak_tflops, 2),
               "peak_memory_mib": round(peaks_mib[plan.name], 1)}
        if isinstance(plan.chunker, MemoryAwareChunks):
            row["chunk"] = plan.chunker.size
            row["chunk_halvings"] = plan.chunker.halvings
        rows[plan.name] = row
        print(f"{name:8s} {plan.name:42s} {row['ms_per_pair']:10.3f} ms/pair {row['tflops']:9.3f} TFLOP/s "
              f"{row['percent_of_peak']:6.2f}% peak {row['peak_memory_mib']:9.1f} MiB", flush=True)
    base = rows[REFERENCE].get("seconds_per_iteration")
    for row in rows.values():
        if "seconds_per_iteration" in row and base:
            row["speedup_vs_reference_style"] = round(base / row["seconds_per_iteration"], 2)
    return {"conditions": len(conditions), "batch": batch, "image_size": size, "pairs": units, "plans": rows}


# ---- end to end: seconds per CMUA iteration --------------------------------------------------------------
def random_faces(batch: int, size: int) -> torch.Tensor:
    """`batch` random faces in [-1, 1] (seed 0): what the victims see does not change their speed."""
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


class StepTimer(Callback):
    """Wall seconds of every training step (one CMUA iteration), the device synchronised at both ends."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        sync(module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        sync(module.device)
        self.seconds.append(time.perf_counter() - self._start)


def cmua_iteration(names: list[str], batch: int, size: int, steps: int, warmup: int, device: torch.device, *,
                   precision: str, channels_last: bool, compile_network: bool, tiny: bool) -> dict:
    """Seconds per CMUA iteration (all victims, their conditions, the fusion), peak memory and chunks chosen."""
    torch.manual_seed(0)
    victims = [apply_execution(make_victim(n, size, device, tiny), channels_last=channels_last,
                               compile=compile_network) for n in names]
    attack = BaseAttack(functools.partial(PGD), step_size=0.01, iterations=warmup + steps, name="pgd")
    module = WatermarkAttack(victims, aggregator=CMUAFusion(), domains=UniformDomains(), regularizer=NoRegularizer(),
                             attack=attack, scope=Universal(), eps=0.05, image_size=size, batch_size=batch)
    timer = StepTimer()
    trainer = Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
                      max_steps=warmup + steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[timer])
    started = time.perf_counter()
    try:
        with PeakMemory(device) as peak:
            trainer.fit(module, TensorFaces(random_faces(batch, size), repeats=warmup + steps))
    except torch.OutOfMemoryError as error:
        return {"error": f"out of memory: {str(error).splitlines()[0][:200]}"}
    timed_steps = timer.seconds[warmup:]
    chunks = module.chunk_sizes()
    return {"seconds_per_iteration": round(statistics.median(timed_steps), 3) if timed_steps else None,
            "steps": [round(s, 3) for s in timer.seconds], "warmup_steps": warmup,
            "peak_memory_mib": round(peak.mib or 0.0, 1), "chunks": chunks,
            "finite": bool(torch.isfinite(module.perturbation).all()),
            "wall_s": round(time.perf_counter() - started, 1)}


E2E_PLANS = {  # name -> (trainer precision, channels_last, compile)
    "fp32": ("32-true", False, False),
    "bf16": ("bf16-mixed", False, False),
    "gpu_fast": ("bf16-mixed", True, True),
}


# ---- report ----------------------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# advwm benchmark ({m['cuda'] or m['processor'] or m['platform']}, torch {m['torch']}, {m['device']}, "
             f"load {m.get('load_average_1_5_15')})", "",
             f"Peaks: {results['peaks_tflops']} TFLOP/s ({results['peak_source']}).", "",
             "Peak memory: " + ("max_memory_allocated." if m["device"].startswith("cuda")
                                else "peak RSS above the plan's start."),
             "", "| victim | plan | ms / image·condition·iteration | speed-up vs reference-style | TFLOP/s | % of peak "
             "| peak memory MiB | chunk |", "|---|---|---|---|---|---|---|---|"]
    for name, result in results["victims"].items():
        for plan, row in result["plans"].items():
            if "error" in row:
                lines.append(f"| {name} | {plan} | {row['error']} | | | | | |")
                continue
            lines.append(f"| {name} | {plan} | {row['ms_per_pair']} | {row.get('speedup_vs_reference_style')} | "
                         f"{row['tflops']} | {row['percent_of_peak']} | {row['peak_memory_mib']} | "
                         f"{row.get('chunk', '')} |")
    if results.get("cmua_end_to_end"):
        lines += ["", "End to end, one CMUA iteration (aggregator=cmua, PGD, universal):", "",
                  "| victims | batch | px | plan | s / iteration | peak memory MiB | chunks |",
                  "|---|---|---|---|---|---|---|"]
        for row in results["cmua_end_to_end"]:
            r = row["result"]
            lines.append(f"| {','.join(row['victims'])} | {row['batch']} | {row['image_size']} | {row['plan']} | "
                         f"{r.get('seconds_per_iteration', r.get('error'))} | {r.get('peak_memory_mib', '')} | "
                         f"{r.get('chunks', '')} |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def section(title: str) -> Iterator[None]:
    print(f"== {title}", flush=True)
    yield


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victims", nargs="*", default=["stargan", "attgan"])
    parser.add_argument("--size", "--image-size", dest="size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3, help="timed rounds: each plan once per round, "
                        "round-robin, after one warm-up call each; the median is reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("--plans", nargs="*", help="only plans whose name contains one of these (the reference "
                        "always runs), e.g. --plans 'frozen, auto' bf16")
    parser.add_argument("--compile", action="store_true", help="time the compiled plan on the CPU too (always on CUDA)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled plan on CUDA")
    parser.add_argument("--peak-tflops", type=float, help="the peak the %% column compares with (default: 790 on "
                        "CUDA, the measured bf16 matmul peak; on the CPU this CPU's own matmul rate per dtype)")
    parser.add_argument("--e2e-batches", nargs="*", type=int, default=[], help="batches of the end-to-end CMUA "
                        "iteration (e.g. 16 64); none by default")
    parser.add_argument("--e2e-victims", nargs="*", default=list(CMUA_VICTIMS))
    parser.add_argument("--e2e-size", type=int, help="image size of the end-to-end runs (default --size)")
    parser.add_argument("--e2e-steps", type=int, default=2, help="timed CMUA iterations (after --e2e-warmup)")
    parser.add_argument("--e2e-warmup", type=int, default=1)
    parser.add_argument("--e2e-plans", nargs="*", default=["fp32", "gpu_fast"], choices=sorted(E2E_PLANS))
    parser.add_argument("--tiny", action="store_true", help="tiny architectures (a dry run of the same code)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: dict = {"machine": machine_info(device), "args": vars(args)}
    with section("matmul peaks"):
        measured = {"fp32": matmul_tflops(device, torch.float32), "bf16": matmul_tflops(device, torch.bfloat16)}
        results["measured_matmul_tflops"] = {k: round(v, 3) for k, v in measured.items()}
        if args.peak_tflops or device.type == "cuda":
            peak = args.peak_tflops or 790.0
            results["peaks_tflops"] = {"fp32": peak, "bf16": peak}
            results["peak_source"] = "--peak-tflops" if args.peak_tflops else "the bf16 matmul peak of an H100/H200"
        else:
            results["peaks_tflops"] = {k: round(v, 3) for k, v in measured.items()}
            results["peak_source"] = "this CPU's matmul rate, measured, per plan dtype"
        print(f"matmul: {results['measured_matmul_tflops']} TFLOP/s measured; % against {results['peaks_tflops']}",
              flush=True)
    compile_plan = (device.type == "cuda" and not args.no_compile) or args.compile
    results["victims"] = {}
    results["cmua_end_to_end"] = []
    for name in args.victims:
        with section(f"{name}: {args.batch} images at {args.size} px"):
            results["victims"][name] = bench_victim(name, args.size, args.batch, args.iterations, device,
                                                    compile_plan=compile_plan, tiny=args.tiny,
                                                    peaks=results["peaks_tflops"], plan_filter=args.plans)
            save(results, Path(args.out))
    for batch in args.e2e_batches:
        for plan in args.e2e_plans:
            precision, channels_last, compile_network = E2E_PLANS[plan]
            size = args.e2e_size or args.size
            with section(f"CMUA end to end: {','.join(args.e2e_victims)}, batch {batch}, {size} px, {plan}"):
                result = cmua_iteration(args.e2e_victims, batch, size, args.e2e_steps, args.e2e_warmup, device,
                                        precision=precision, channels_last=channels_last,
                                        compile_network=compile_network, tiny=args.tiny)
                print(json.dumps(result), flush=True)
            results["cmua_end_to_end"].append({"victims": list(args.e2e_victims), "batch": batch, "image_size": size,
                                               "plan": plan, "result": result})
            save(results, Path(args.out))
    save(results, Path(args.out))
    print(f"wrote {Path(args.out) / 'bench.json'} and {Path(args.out) / 'bench.md'}")
    return results


def save(results: dict, out: Path) -> None:
    """Write what is measured so far (after every victim and every end-to-end run: a run stopped by a time limit
    keeps its finished part)."""
    with contextlib.suppress(OSError, AttributeError):
        results["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    (out / "bench.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
