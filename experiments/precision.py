"""What bf16 does to the attack, not only to its speed: fp32 against bf16 autocast on the fixture networks.

The fixture networks (`../shared/fixtures/victims/`: the official architectures, small and with seeded random
weights, 32 px; loaded as tests/test_victims_fixtures.py does) are run twice with the same inputs and seed:

1. **Gradient signs**: at a random point of the eps-ball around each face, the per-pair input gradient of the
   distortion (clean targets computed in each precision, as the engine does) in fp32 and under bf16 autocast:
   the share of entries whose sign agrees (all entries, and the entries above 1e-3 of the largest), the cosine,
   and the share of agreeing signs of CMUA's image-level vote (the sign of the batch mean of the signs).
2. **Short same-seed runs**: a universal watermark (aggregator=cmua, PGD, eps 0.05, step 0.01) crafted with
   `trainer.precision=32-true` and `bf16-mixed` from the same seed, per victim and for CMUA's four together, then
   judged in fp32 on held-out faces: SR_mask and avg_L of each, and how far the two watermarks are apart
   (next to two fp32 runs with different seeds: how far apart watermarks of equal quality are anyway).

    python experiments/precision.py                       # every fixture victim, 3 seeds, 20 iterations
    python experiments/precision.py --device cuda         # the same on a GPU (its bf16 kernels differ)

Writes `<out>/precision.json` and `precision.md`. Random weights: these numbers say how bf16 rounding moves
the attack through these architectures, not how it does with the official weights; check those before
trusting a table crafted in bf16.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
from pathlib import Path

import torch
from lightning.pytorch import Trainer

from advwm.attacks import PGD, BaseAttack, CMUAFusion, NoRegularizer, UniformDomains, Universal
from advwm.attacks.domains import clean_outputs, stacked_gradients
from advwm.attacks.module import WatermarkAttack
from advwm.data import TensorFaces
from advwm.data.attributes import CELEBA_ATTRIBUTES
from advwm.data.references import reference_image
from advwm.victims import build_victim

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "victims"
CMUA = ("stargan", "aggan", "attgan", "hisd")
CRAFT_FACES = ("astronaut", "astronaut@mirror")
HELD_OUT_FACES = ("grace_hopper", "grace_hopper@mirror")


def fixture_victim(folder: Path, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor]:
    """The fixture's network with its small weights, and the case's images; labels as the case gives them."""
    case = torch.load(folder / "case.pt", map_location="cpu", weights_only=True)
    options = {k: case[k] for k in ("thres_int", "test_int") if k in case}
    attrs = case.get("selected_attrs", case.get("attrs"))
    if attrs:
        options["attrs"] = list(attrs)
    if "reference" in case:
        options["reference"] = case["reference"]
    victim = build_victim(folder.name.split("_")[0], checkpoint=folder / "small_state_dict.pt", arch=case["config"],
                          image_size=case["x"].shape[-1], **options).to(device)
    return victim, case["x"].to(device)


def celeba_labels(batch: int) -> torch.Tensor:
    """The same CelebA labels for every face: the 40 attributes alternately 0 and 1 (every victim reads its own)."""
    return (torch.arange(len(CELEBA_ATTRIBUTES)) % 2).float().expand(batch, -1).clone()


def faces(names: tuple[str, ...], size: int, device: torch.device) -> torch.Tensor:
    return torch.cat([reference_image(n, size) for n in names]).to(device)


def gradient_agreement(victim, x: torch.Tensor, eps: float, seed: int, device: torch.device) -> dict:
    """fp32 vs bf16 input gradients at one random point of the eps-ball around each face."""
    generator = torch.Generator().manual_seed(seed)
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(device) * eps
    protected = (x + delta).clamp(-1, 1)
    conditions = [c.to(device) for c in victim.conditions(celeba_labels(x.shape[0]).to(device))]
    grads = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            targets = clean_outputs(victim, x, conditions, 1)
            grads[name], _ = stacked_gradients(victim, protected, conditions, targets, 1)
    g32, g16 = grads["fp32"], grads["bf16"]
    large = g32.abs() > 1e-3 * g32.abs().max()
    vote32, vote16 = g32.sign().mean(dim=1).sign(), g16.sign().mean(dim=1).sign()  # CMUA's image-level fusion
    cosine = torch.nn.functional.cosine_similarity(g32.flatten(), g16.flatten(), dim=0)
    return {"sign_agreement": (g32.sign() == g16.sign()).float().mean().item(),
            "sign_agreement_large": (g32.sign() == g16.sign())[large].float().mean().item(),
            "vote_agreement": (vote32 == vote16).float().mean().item(), "cosine": cosine.item(),
            "relative_l2_error": ((g16 - g32).norm() / g32.norm()).item()}


def craft(victims: list, x: torch.Tensor, precision: str, seed: int, iterations: int,
          device: torch.device) -> torch.Tensor:
    """A universal watermark by CMUA fusion with PGD, `iterations` steps, under `precision`."""
    torch.manual_seed(seed)
    attack = BaseAttack(functools.partial(PGD), step_size=0.01, iterations=iterations, name="pgd")
    module = WatermarkAttack(victims, aggregator=CMUAFusion(), domains=UniformDomains(), regularizer=NoRegularizer(),
                             attack=attack, scope=Universal(), eps=0.05, image_size=x.shape[-1],
                             batch_size=x.shape[0], seed=seed)
    Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision, max_epochs=1,
            logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(module, TensorFaces(x.cpu(), repeats=iterations,
                                                             labels=celeba_labels(x.shape[0]).cpu()))
    return module.watermark()


@torch.no_grad()
def judge(victim, x: torch.Tensor, watermark: torch.Tensor) -> dict:
    """SR_mask and avg_L (README, metrics) of a watermark on faces x, in fp32, written out."""
    protected = (x + watermark.to(x.device)).clamp(-1, 1)
    conditions = [c.to(x.device) for c in victim.conditions(celeba_labels(x.shape[0]).to(x.device))]
    fakes, fakes_protected = clean_outputs(victim, x, conditions, 1), clean_outputs(victim, protected, conditions, 1)
    successes, distortions = [], []
    for fake, fake_protected in zip(fakes, fakes_protected, strict=True):
        squared = (fake_protected - fake).pow(2)
        distortions += squared.flatten(1).mean(1).tolist()
        mask = (fake - x).abs().sum(dim=1, keepdim=True) > 0.5
        for b in range(x.shape[0]):
            pixels = mask[b].expand_as(squared[b])
            successes.append(bool(pixels.any()) and squared[b][pixels].mean().item() > 0.05)
    return {"sr_mask": sum(successes) / len(successes), "avg_l": statistics.fmean(distortions)}


def watermark_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    return {"sign_agreement": (a.sign() == b.sign()).float().mean().item(),
            "mean_abs_difference": (a - b).abs().mean().item(), "max_abs_difference": (a - b).abs().max().item()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    parser.add_argument("--victims", nargs="*", help="fixture folders (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny networks: 1 is fastest)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "precision")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    folders = sorted(p for p in args.fixtures.iterdir() if p.is_dir() and (p / "case.pt").is_file())
    if args.victims:
        folders = [p for p in folders if p.name in args.victims]
    results: dict = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "device": str(device),
                                 "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
                     "args": {k: str(v) for k, v in vars(args).items()}, "gradients": {}, "runs": {}}
    loaded = {p.name: fixture_victim(p, device) for p in folders}
    for name, (victim, case_x) in loaded.items():
        size = case_x.shape[-1]
        x = torch.cat([case_x, faces(CRAFT_FACES + HELD_OUT_FACES, size, device)])
        rows = [gradient_agreement(victim, x, 0.05, seed, device) for seed in args.seeds]
        results["gradients"][name] = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
        print(f"{name:13s} gradients: " + ", ".join(f"{k} {v:.4f}" for k, v in results["gradients"][name].items()),
              flush=True)
    groups = {name: [name] for name in loaded}
    if all(v in loaded for v in CMUA):
        groups["cmua (stargan+aggan+attgan+hisd)"] = list(CMUA)
    for group, names in groups.items():
        victims = [loaded[n][0] for n in names]
        size = loaded[names[0]][1].shape[-1]
        craft_x, held_out = faces(CRAFT_FACES, size, device), faces(HELD_OUT_FACES, size, device)
        per_seed = []
        for seed in args.seeds:
            marks = {p: craft(victims, craft_x, p, seed, args.iterations, device) for p in ("32-true", "bf16-mixed")}
            per_seed.append({"seed": seed, "marks": marks,
                             "fp32": {n: judge(loaded[n][0], held_out, marks["32-true"]) for n in names},
                             "bf16": {n: judge(loaded[n][0], held_out, marks["bf16-mixed"]) for n in names},
                             "difference": watermark_difference(marks["32-true"], marks["bf16-mixed"])})
        floor = (watermark_difference(per_seed[0]["marks"]["32-true"], per_seed[1]["marks"]["32-true"])
                 if len(per_seed) > 1 else None)
        summary = {"victims": names, "fp32_seed_to_seed": floor, "seeds": []}
        for row in per_seed:
            row.pop("marks")
            summary["seeds"].append(row)
        for p in ("fp32", "bf16"):
            summary[f"{p}_mean"] = {n: {m: statistics.fmean(r[p][n][m] for r in per_seed)
                                        for m in ("sr_mask", "avg_l")} for n in names}
        summary["difference_mean"] = {m: statistics.fmean(r["difference"][m] for r in per_seed)
                                      for m in per_seed[0]["difference"]}
        results["runs"][group] = summary
        print(f"{group}: fp32 {summary['fp32_mean']} | bf16 {summary['bf16_mean']} | watermarks "
              f"{summary['difference_mean']} | fp32 seed-to-seed {floor}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(results, indent=2))
    (args.out / "precision.md").write_text(markdown(results))
    print(f"wrote {args.out / 'precision.json'} and {args.out / 'precision.md'}")
    return results


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# fp32 vs bf16 on the fixture networks ({m['cuda'] or m['platform']}, torch {m['torch']})", "",
             "| victim | sign agreement | of entries > 1e-3 max | CMUA vote agreement | cosine | relative L2 error |",
             "|---|---|---|---|---|---|"]
    for name, g in results["gradients"].items():
        lines.append(f"| {name} | {g['sign_agreement']:.3f} | {g['sign_agreement_large']:.3f} | "
                     f"{g['vote_agreement']:.3f} | {g['cosine']:.4f} | {g['relative_l2_error']:.4f} |")
    lines += ["", "| run | victim | SR_mask fp32 | SR_mask bf16 | avg_L fp32 | avg_L bf16 | watermark sign agreement "
              "fp32-bf16 (same seed) | fp32-fp32 (seeds 0, 1) |", "|---|---|---|---|---|---|---|---|"]
    for group, run in results["runs"].items():
        floor = run["fp32_seed_to_seed"]
        for name in run["victims"]:
            a, b = run["fp32_mean"][name], run["bf16_mean"][name]
            lines.append(f"| {group} | {name} | {a['sr_mask']:.3f} | {b['sr_mask']:.3f} | {a['avg_l']:.5f} | "
                         f"{b['avg_l']:.5f} | {run['difference_mean']['sign_agreement']:.3f} | "
                         f"{floor['sign_agreement'] if floor else float('nan'):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
