"""Does the watermark survive sharing, and does crafting for it (eot=sharing) help? Same seeds, with and without.

For each seed, one universal watermark with `eot=none` and one with `eot=sharing`, everything else equal, and a
control: uniform noise in the same eps-ball, not crafted at all (`attack.step_size=0`: PGD's random start, kept),
which shows how much of a number is what any perturbation of that size does. Each is judged on the held-out faces
unshared and after the sharing transforms (`metrics.robustness`, Pillow's codecs), against the fake of the equally
shared clean photo. Writes `<out>/robustness.json` (every run's numbers, the
settings, the machine) and `<out>/robustness.md` (mean over seeds, ± sample std), and keeps the run folders under
`<out>/runs/` (`python -m advwm.report <out>/runs` draws SR_mask against the JPEG quality).

    python experiments/robustness.py                                   # the README's numbers (random victims, 64 px)
    python experiments/robustness.py --seeds 0 --iterations 2 --size 32 --arch small   # a smoke run
    python experiments/robustness.py victims.stargan.checkpoint=/data/200000-G.ckpt --weights checkpoint --size 256

Arguments that are not options below are passed to every run as Hydra overrides.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[1]
SMALL_ARCH = {  # the tests' tiny victims (fast on a CPU, and just as random)
    "stargan": ["victims.stargan.arch.conv_dim=8", "victims.stargan.arch.repeat_num=2"],
    "attgan": ["victims.attgan.arch.enc_dim=8", "victims.attgan.arch.dec_dim=8", "victims.attgan.arch.enc_layers=3",
               "victims.attgan.arch.dec_layers=3"],
    "aggan": ["victims.aggan.arch.conv_dim=8", "victims.aggan.arch.repeat_num=2"],
}
MEDIUM_ARCH = {  # wider and deeper, still quick at 64 px on 2 cores
    "stargan": ["victims.stargan.arch.conv_dim=32", "victims.stargan.arch.repeat_num=3"],
    "attgan": ["victims.attgan.arch.enc_dim=32", "victims.attgan.arch.dec_dim=32", "victims.attgan.arch.enc_layers=4",
               "victims.attgan.arch.dec_layers=4"],
    "aggan": ["victims.aggan.arch.conv_dim=32", "victims.aggan.arch.repeat_num=3"],
}
SHOWN = ("sr_mask", "avg_l")


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "load_average": list(os.getloadavg())}


ARMS = ("noise", "none", "sharing")  # the control (uniform noise, not crafted), eot=none, eot=sharing
ARM_LABELS = {"noise": "noise (control)", "none": "eot=none", "sharing": "eot=sharing"}


def overrides_for(options: argparse.Namespace, arm: str, seed: int, extra: list[str]) -> list[str]:
    """The Hydra overrides of one run; the control is PGD's uniform random start, kept (a step size of 1e-12: advwm
    refuses 0, and 1e-12 moves no pixel by a visible amount)."""
    victims = options.victims.split(",")
    arch = {"small": SMALL_ARCH, "medium": MEDIUM_ARCH, "full": {}}[options.arch]
    eot = ["eot=sharing", f"eot.samples={options.samples}"] if arm == "sharing" else ["eot=none"]
    attack = ["attack.step_size=1e-12", "attack.iterations=1"] if arm == "noise" else [
        f"attack.iterations={options.iterations}"]
    return ["logger=csv", "metrics=fast", "attack=pgd", f"+victims=[{options.victims}]", f"weights={options.weights}",
            f"image_size={options.size}", f"seed={seed}", *eot, *attack,
            f"metrics.robustness=[{','.join(options.transforms)}]", "trainer.enable_progress_bar=false",
            f"data.craft=[{','.join(options.craft)}]", f"data.evaluate=[{','.join(options.evaluate)}]",
            *(o for v in victims for o in arch.get(v, [])), *extra]


def craft_one(overrides: list[str], folder: Path) -> dict:
    from advwm.pipeline import craft

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)
    return craft(cfg)


def mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
    return mean, std


def summarise(runs: list[dict], victims: list[str], transforms: list[str]) -> dict:
    """{victim|mean: {arm: {transform|unshared: {metric: [mean, std]}}}} over the seeds."""
    summary: dict = {}
    for victim in [*victims, "mean"]:
        for arm in ARMS:
            chosen = [r["metrics"] for r in runs if r["arm"] == arm]
            for transform in ["unshared", *transforms]:
                for metric in SHOWN:
                    key = f"{metric}/{victim}" if transform == "unshared" else f"robust/{transform}/{metric}/{victim}"
                    values = [float(m.get(key, math.nan)) for m in chosen]
                    summary.setdefault(victim, {}).setdefault(arm, {}).setdefault(transform, {})[metric] = \
                        list(mean_std(values))
    return summary


def fmt(pair: list[float], digits: int) -> str:
    mean, std = pair
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def markdown(result: dict) -> str:
    transforms, summary = ["unshared", *result["settings"]["transforms"]], result["summary"]
    lines = []
    for metric, title, digits in (("sr_mask", "SR_mask", 3), ("avg_l", "avg_L", 4)):
        head = ["victim", "watermark", *transforms]
        lines += [f"{title}:", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(transforms)]
        for victim, by_arm in summary.items():
            for arm, by_transform in by_arm.items():
                cells = [fmt(by_transform[t][metric], digits) for t in transforms]
                lines.append(f"| {victim} | {ARM_LABELS[arm]} | " + " | ".join(cells) + " |")
        lines.append("")
    settings, host = result["settings"], result["machine"]
    seconds = {arm: mean_std([r["seconds"] for r in result["runs"] if r["arm"] == arm])[0] for arm in ARMS}
    lines += [f"Mean ± sample std over seeds {settings['seeds']}; {settings['weights']} victims "
              f"{settings['victims']} ({settings['arch']} architectures) at {settings['size']} px, "
              f"{settings['iterations']} PGD iterations, eot.samples={settings['samples']}, crafted on "
              f"{settings['craft']}, judged on {settings['evaluate']}. noise (control): uniform noise in the "
              f"eps-ball, not crafted. Seconds per run (crafting and judging): eot=none {seconds['none']:.0f}, "
              f"eot=sharing {seconds['sharing']:.0f}. Machine: {host['processor']}, {host['cpu_count']} CPUs, "
              f"torch {host['torch']} ({host['torch_threads']} threads), load average at the end "
              f"{host['load_average'][0]:.1f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victims", default="stargan,aggan",
                        help="random AttGAN barely reacts to its input (L ~ 1e-8), so it is not a default")
    parser.add_argument("--weights", default="random", choices=["random", "checkpoint", "auto"])
    parser.add_argument("--arch", default="medium", choices=["small", "medium", "full"],
                        help="victim sizes for random weights (full = the official architecture)")
    parser.add_argument("--size", type=int, default=64, help="image_size")
    parser.add_argument("--iterations", type=int, default=20, help="attack iterations per crafting batch")
    parser.add_argument("--samples", type=int, default=4, help="eot.samples for the eot=sharing runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--transforms", nargs="+", default=["jpeg95", "jpeg75", "jpeg50", "resize0.5"])
    parser.add_argument("--craft", nargs="+", default=["astronaut", "astronaut@mirror"])
    parser.add_argument("--evaluate", nargs="+", default=["grace_hopper", "grace_hopper@mirror"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(REPO / "outputs" / "robustness"))
    options, extra = parser.parse_known_args()
    torch.set_num_threads(options.threads)
    out = Path(options.out)
    if (out / "runs").exists():
        shutil.rmtree(out / "runs")
    runs = []
    for seed in options.seeds:
        for arm in ARMS:
            folder = out / "runs" / f"{arm},seed={seed}"
            started = time.perf_counter()
            metrics = craft_one(overrides_for(options, arm, seed, extra), folder)
            seconds = time.perf_counter() - started
            runs.append({"arm": arm, "seed": seed, "seconds": round(seconds, 1), "folder": str(folder),
                         "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)}})
            print(f"seed {seed} {ARM_LABELS[arm]}: SR_mask {metrics.get('sr_mask/mean', math.nan):.3f}, "
                  + ", ".join(f"{t} {metrics.get(f'robust/{t}/sr_mask/mean', math.nan):.3f}"
                              for t in options.transforms) + f" ({seconds:.0f} s)", flush=True)
    victims = options.victims.split(",")
    settings = {k: getattr(options, k) for k in ("victims", "weights", "arch", "size", "iterations", "samples",
                                                 "seeds", "transforms", "craft", "evaluate", "threads")}
    settings["overrides"] = extra
    result = {"settings": settings, "machine": machine(), "runs": runs,
              "summary": summarise(runs, victims, options.transforms)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(result, indent=2))
    (out / "robustness.md").write_text(markdown(result))
    print(markdown(result))
    print(f"written: {out / 'robustness.json'}, {out / 'robustness.md'}; runs under {out / 'runs'}")


if __name__ == "__main__":
    main()
