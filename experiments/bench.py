"""Benchmark: seconds per image x condition x iteration of one attack iteration, per victim, at 256 px.

Measures the engine's gradient step (`advwm.attacks.domains.stacked_gradients`, victims frozen) in
three execution plans, next to a reference-style loop (weights NOT frozen, one call per condition, as
the CMUA/CDMAA code does it), and writes the numbers to `outputs/bench/bench.json` and `bench.md`.

    python experiments/bench.py                       # stargan + attgan, batch 2, 2 timed iterations
    python experiments/bench.py --victims stargan --batch 4 --iterations 3 --device cuda

Numbers depend on the machine: report them with the machine they came from (the JSON records it).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from advwm.attacks.domains import clean_outputs, stacked_gradients
from advwm.victims import build_victim


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


def timed(fn, iterations: int, device: torch.device) -> float:
    fn()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations


def bench_victim(name: str, size: int, batch: int, iterations: int, device: torch.device,
                 compile_network: bool = False) -> dict:
    victim = build_victim(name, checkpoint=None, image_size=size).to(device)
    torch.manual_seed(0)
    x = (torch.rand(batch, 3, size, size, device=device) * 2 - 1)
    conditions = [c.to(device) for c in victim.conditions(torch.zeros(batch, 40, device=device))]
    targets = clean_outputs(victim, x, conditions, micro_batch=batch)
    protected = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    k = len(conditions)
    units = batch * k  # image x condition pairs per iteration
    plans = {
        "reference-style (weights not frozen, per condition)":
            lambda: reference_style_step(victim, protected, conditions, targets),
        "frozen, per condition (micro_batch=B)":
            lambda: stacked_gradients(victim, protected, conditions, targets, micro_batch=batch),
        "frozen, conditions stacked (micro_batch=null)":
            lambda: stacked_gradients(victim, protected, conditions, targets, micro_batch=None),
        "frozen, one image-condition at a time (micro_batch=1)":
            lambda: stacked_gradients(victim, protected, conditions, targets, micro_batch=1),
    }
    if compile_network:
        compiled = build_victim(name, checkpoint=None, image_size=size).to(device)
        compiled.network = torch.compile(compiled.network)
        started = time.perf_counter()
        stacked_gradients(compiled, protected, conditions, targets, micro_batch=1)
        print(f"{name:8s} torch.compile: first iteration (compiling) {time.perf_counter() - started:.1f} s", flush=True)
        plans["frozen + torch.compile, one image-condition at a time"] = \
            lambda: stacked_gradients(compiled, protected, conditions, targets, micro_batch=1)
    rows = {}
    for plan, fn in plans.items():
        seconds = timed(fn, iterations, device)
        rows[plan] = {"seconds_per_iteration": round(seconds, 3),
                      "seconds_per_image_condition_iteration": round(seconds / units, 4)}
        print(f"{name:8s} {plan:55s} {seconds / units:8.4f} s per image-condition-iteration", flush=True)
    base = rows["reference-style (weights not frozen, per condition)"]["seconds_per_iteration"]
    for row in rows.values():
        row["speedup_vs_reference_style"] = round(base / row["seconds_per_iteration"], 2)
    return {"conditions": k, "batch": batch, "image_size": size, "plans": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victims", nargs="+", default=["stargan", "attgan"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per plan (after 1 warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd network")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                    "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "victims": {name: bench_victim(name, args.size, args.batch, args.iterations, device, args.compile)
                    for name in args.victims},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    lines = [f"# advwm benchmark ({results['machine']['platform']}, torch {torch.__version__}, {device})", "",
             "| victim | plan | s / image·condition·iteration | speed-up vs reference-style |", "|---|---|---|---|"]
    for name, result in results["victims"].items():
        for plan, row in result["plans"].items():
            lines.append(f"| {name} | {plan} | {row['seconds_per_image_condition_iteration']} | "
                         f"{row['speedup_vs_reference_style']} |")
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")


if __name__ == "__main__":
    main()
