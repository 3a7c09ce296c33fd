"""The three protection modes side by side: what each costs per new photo and what it gives, same victims and faces.

    python experiments/protection_modes.py                          # tiny random victims, 32 px (the README table)
    python experiments/protection_modes.py --size 64 --victims stargan attgan stgan ugatit

Each mode is built from its preset (`+method=cmua`, `+method=amortized`, `+method=cdmaa_ifgsm_t80`: the same config
groups `python -m advwm.run` instantiates, through `advwm.pipeline.build_module`) and run by a Lightning Trainer:

- universal (CMUA): crafted once on the crafting faces; a new photo costs one addition;
- amortized: a generator trained once on the crafting faces; a new photo costs one forward pass;
- per image (CDMAA, I-FGSM T=80 + MGDA + penalty): the whole optimisation for every new photo (one at a time, as a
  person uploads it; the Trainer's start-up is spread over the photos).

The new photos are framings of the demo person none of the modes learnt from (`advwm.data.demo.demo_variants`), and
all three are judged on them by the runs' own `Judge` (avg_L, SR_mask, PSNR...). Universal and amortized get the same
number of optimisation steps. The victims are `advwm.victims.small`'s architectures with RANDOM weights (seeded): the
numbers show the machinery and its costs, not protection against the real models. Every victim call takes all its
(image, condition) pairs at once (`micro_batch: null`) in every mode, one torch thread.

Writes `<out>/protection_modes.json` and `protection_modes.md`; numbers depend on the machine and its load (recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback, Trainer

from advwm.callbacks.evaluation import Judge, MetricSettings
from advwm.data import TensorFaces
from advwm.data.demo import demo_variants
from advwm.pipeline import build_module
from advwm.run_files import io
from advwm.victims import build_victim
from advwm.victims.small import SMALL_ARCHITECTURES, small_overrides

REPO = Path(__file__).resolve().parents[1]
MODES = {"universal": "cmua", "amortized": "amortized", "per image": "cdmaa_ifgsm_t80"}


def compose_mode(method: str, victims: list[str], size: int, batch: int, extra: list[str]):
    overrides = [f"+victims=[{','.join(victims)}]", "weights=random", f"image_size={size}", f"+method={method}",
                 f"data.batch_size={batch}", *[o for v in victims for o in small_overrides(v)],
                 *[f"victims.{v}.micro_batch=null" for v in victims], *extra]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def train(module, faces: torch.Tensor, labels: torch.Tensor, batch: int, epochs: int) -> float:
    """Seconds to fit `module` on `faces` (each batch repeated as its aggregator says)."""
    repeats = module.aggregator.repeats(module.attack.iterations)
    data = TensorFaces(faces, batch_size=batch, labels=labels, repeats=repeats)
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return time.perf_counter() - started


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class Protected:
    """What the Judge needs of a run: `protect`, `device`, `micro_batch` (the new photos' protected versions)."""

    def __init__(self, protected: torch.Tensor, faces: torch.Tensor, engine) -> None:
        self.protected, self.faces, self.engine = protected, faces, engine
        self.device = torch.device("cpu")

    def protect(self, x: torch.Tensor) -> torch.Tensor:
        assert torch.equal(x, self.faces)
        return self.protected

    def micro_batch(self, victim, batch: int, purpose: str = "gradient"):
        return self.engine.micro_batch(victim, batch, purpose)


def judge(victims: list, run: Protected, labels: torch.Tensor) -> dict[str, Any]:
    settings = MetricSettings(fid=False, liveness=False, robustness=[])
    referee = Judge(victims, settings, torch.device("cpu"))
    referee.update(run, run.faces, labels)
    return referee.results()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    victims = [build_victim(n, checkpoint=None, arch=SMALL_ARCHITECTURES[n], image_size=args.size)
               for n in args.victims]
    crafting, crafting_labels = demo_variants("astronaut", args.crafting, args.size, seed=0)
    photos, photo_labels = demo_variants("grace_hopper", args.photos, args.size, seed=1)
    rows: dict[str, dict[str, Any]] = {}

    cfg = compose_mode(MODES["universal"], args.victims, args.size, args.batch, [])
    universal = build_module(cfg, victims)
    one_off = train(universal, crafting, crafting_labels, args.batch, args.universal_epochs)
    watermark = universal.perturbation.detach()
    each = median_seconds(lambda: (photos[:1] + watermark).clamp(-1, 1), 100)
    rows["universal"] = {"one_off_s": one_off, "each_photo_s": each, "steps": universal.iteration,
                         "metrics": judge(victims, Protected((photos + watermark).clamp(-1, 1), photos, universal),
                                          photo_labels)}

    cfg = compose_mode(MODES["amortized"], args.victims, args.size, args.batch, [f"scope.width={args.width}"])
    amortized = build_module(cfg, victims)
    one_off = train(amortized, crafting, crafting_labels, args.batch, args.amortized_epochs)
    amortized.eval()
    with torch.no_grad():
        each = median_seconds(lambda: amortized.protect(photos[:1]), 20)
        protected = amortized.protect(photos)
    rows["amortized"] = {"one_off_s": one_off, "each_photo_s": each, "steps": amortized.iteration,
                         "generator_mb": amortized.generator.megabytes(),
                         "metrics": judge(victims, Protected(protected, photos, amortized), photo_labels)}

    cfg = compose_mode(MODES["per image"], args.victims, args.size, 1, [f"attack.iterations={args.iterations}"])
    per_image = build_module(cfg, victims)
    deltas: list[torch.Tensor] = []

    class KeepDeltas(Callback):  # each photo's perturbation once its last iteration is done
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if module.finished_batch is not None:
                deltas.append(module.perturbation.detach().clone())

    data = TensorFaces(photos, batch_size=1, labels=photo_labels, repeats=per_image.aggregator.repeats(args.iterations))
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[KeepDeltas()])
    started = time.perf_counter()
    trainer.fit(per_image, datamodule=data)
    total = time.perf_counter() - started
    protected = (photos + torch.cat(deltas)).clamp(-1, 1)
    rows["per image"] = {"one_off_s": 0.0, "each_photo_s": total / len(photos), "steps": per_image.iteration,
                         "metrics": judge(victims, Protected(protected, photos, per_image), photo_labels)}
    return {"rows": rows, "settings": {**vars(args), "out": str(args.out)}, "machine": machine()}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "load_average": load}


def table(result: dict[str, Any]) -> str:
    rows, settings = result["rows"], result["settings"]
    victims = settings["victims"]
    header = ["mode", "one-off (s)", "each new photo", f"per photo, {settings['spread']} photos",
              *[f"avg_L {v}" for v in victims], "SR_mask mean", "PSNR (dB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode, row in rows.items():
        metrics = row["metrics"]
        spread = row["one_off_s"] / settings["spread"] + row["each_photo_s"]
        lines.append("| " + " | ".join([
            mode, f"{row['one_off_s']:.1f}", duration(row["each_photo_s"]), duration(spread),
            *[f"{metrics[f'avg_l/{v}']:.3g}" for v in victims], f"{metrics['sr_mask/mean']:.3f}",
            f"{metrics['psnr']:.1f}"]) + " |")
    ratio = rows["per image"]["each_photo_s"] / rows["amortized"]["each_photo_s"]
    lines.append("")
    lines.append(f"Each new photo: amortized {ratio:.0f}x faster than per image ({settings['size']} px, victims "
                 f"{', '.join(victims)} with random weights; {result['machine']['cpu']}, {settings['threads']} torch "
                 f"thread(s), load average {result['machine']['load_average']}).")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victims", nargs="+", default=["stargan", "attgan"])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--crafting", type=int, default=16, help="framings of the person the modes learn from")
    parser.add_argument("--photos", type=int, default=8, help="new photos: framings of the other person")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--amortized-epochs", type=int, default=100)
    parser.add_argument("--universal-epochs", type=int, default=10, help="10 x 10 PGD iterations a batch: the "
                        "amortized default's step count")
    parser.add_argument("--iterations", type=int, default=80, help="per image: I-FGSM iterations per photo")
    parser.add_argument("--width", type=int, default=32, help="the generator's width (scope.width)")
    parser.add_argument("--spread", type=int, default=100, help="photos the one-off cost is spread over")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the random victims' weights")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "protection_modes")
    args = parser.parse_args(argv)
    result = measure(args)
    io.write_text(args.out / "protection_modes.json", json.dumps(result, indent=2, default=str) + "\n")
    text = table(result)
    io.write_text(args.out / "protection_modes.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
