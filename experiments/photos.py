"""A person's photos: what pasting and JPEG quality 95 do to per-image protection, and how long a photo takes.

`jpeg`: per-image protection (`python -m advwm.protect --craft`'s recipe: MGDA, penalty, I-FGSM) of two bundled
portraits as JPEG files (scikit-image's astronaut, 512 x 512; matplotlib's Grace Hopper, 512 x 600), for each
seed; each face is scored on the crop the attack crafted on (x + delta at the victims' size: what the run's own
metrics see), in the photo as written (PNG, nearest-neighbour paste, `protection.csv`), in the photo had the
perturbation been pasted bilinearly instead (the alternative `advwm.protect.paste` rejects), and after JPEG quality
95 (Pillow, 4:2:0) of the written photo, against the victims' edits of the equally JPEG-compressed original (the
`metrics.robustness` rule: the forger only has the shared photo). The victims are rebuilt after each run from its
seed and checked to give the run's own PNG numbers. Default: **random** StarGAN and AGGAN of reduced width
(conv_dim 32, 3 residual blocks) at 64 px, as `experiments/robustness.py` (random AttGAN barely reacts to its input).

`time`: seconds per photo on this machine for the short command (`--craft`, the official architectures with random
weights at 256 px: the cost is the same as with the official weights) from runs of 2 and 6 iterations (a fixed
part plus a part per iteration, extrapolated to the default 80), and for the universal path with `--measure`
(a 512 px portrait and a 12-megapixel photo).

    python experiments/photos.py jpeg            # the README's JPEG numbers -> outputs/photos/jpeg.{json,md}
    python experiments/photos.py time            # the README's times        -> outputs/photos/time.{json,md}
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
from robustness import MEDIUM_ARCH, mean_std  # noqa: E402  (the same victims as the robustness numbers)

from advwm.data.decode import DecodedPhoto, open_photo  # noqa: E402
from advwm.protect import ledger  # noqa: E402
from advwm.protect.craft import CraftSettings, compose  # noqa: E402
from advwm.protect.paste import crop_faces, face_squares, from_levels, photo_tensor, to_levels  # noqa: E402
from advwm.run_files.watermark_file import load_watermark  # noqa: E402


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg())}


def portraits(folder: Path) -> list[str]:
    from matplotlib import cbook
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg", quality=95)
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
        hopper.convert("RGB").save(folder / "grace_hopper.jpg", quality=95)
    return ["astronaut.jpg", "grace_hopper.jpg"]


def jpeg(photo: DecodedPhoto, quality: int) -> DecodedPhoto:
    """The photo as Pillow's JPEG at `quality` gives it back."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(photo.on_white() * 255), 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return DecodedPhoto((np.asarray(decoded.convert("RGB")) / 255.0).astype(np.float32))


def bilinear_paste(photo: DecodedPhoto, squares, deltas: torch.Tensor) -> DecodedPhoto:
    """The photo as written had each perturbation been upsized bilinearly (antialiased) instead: pasted, clamped,
    rounded to levels within eps, like `advwm.protect.photos` does with its nearest-neighbour paste."""
    colour = torch.from_numpy(photo.colour.copy()).permute(2, 0, 1) * 2.0 - 1.0
    for (left, top, side), delta in reversed(list(zip(squares, deltas, strict=True))):
        up = torch.nn.functional.interpolate(delta[None], size=(side, side), mode="bilinear", antialias=True,
                                             align_corners=False)[0]
        colour[:, top:top + side, left:left + side] = (colour[:, top:top + side, left:left + side] + up).clamp(-1, 1)
    pasted = DecodedPhoto(((colour + 1.0) / 2.0).permute(1, 2, 0).numpy().astype(np.float32))
    return from_levels(to_levels(pasted, photo, 0.05), photo)


def run_victims(cfg):
    """The run's victims again: the pipeline seeds, builds its callbacks, then its victims."""
    import lightning.pytorch as pl

    from advwm.pipeline import build_callbacks, build_victims

    pl.seed_everything(int(cfg.seed), workers=True)
    build_callbacks(cfg)
    return [r.victim for r in build_victims(cfg)]


def jpeg_part(options: argparse.Namespace, out: Path) -> None:
    from advwm.callbacks.evaluation import MetricSettings
    from advwm.data.labels import label_vector
    from advwm.pipeline import craft
    from advwm.protect.measure import score_victims

    folder = out / "photos"
    names = portraits(folder)
    victims = options.victims.split(",")
    thresholds = MetricSettings(robustness=[])
    records = []
    for seed in options.seeds:
        protected = out / f"seed{seed}"
        shutil.rmtree(protected, ignore_errors=True)
        settings = CraftSettings(victims=victims, weights="random", iterations=options.iterations,
                                 image_size=options.size, overrides=[
                                     f"seed={seed}", "trainer.enable_progress_bar=false",
                                     *(o for v in victims for o in MEDIUM_ARCH.get(v, []))])
        cfg = compose(settings, folder, names, protected, protected / "run")
        started = time.perf_counter()
        craft(cfg)
        seconds = time.perf_counter() - started
        rows = ledger.read(protected)
        networks = run_victims(cfg)
        saved = load_watermark(protected / "run" / "watermark.pt", scope="per_image")
        for name in names:
            original = open_photo(folder / name)
            written = open_photo(protected / f"{name}.png")
            squares = face_squares(original)
            labels = label_vector(["Young"])[None].expand(len(squares), -1)
            deltas = torch.stack([saved.perturbations[saved.names.index(f"{name}#{k}")]
                                  for k in range(1, len(squares) + 1)])
            crop = crop_faces(photo_tensor(original), squares, options.size)
            bilinear = bilinear_paste(original, squares, deltas)
            scores = {}
            for label, (before, after) in {"crop": (crop, (crop + deltas).clamp(-1, 1)),
                                           "bilinear": (original, bilinear), "png": (original, written),
                                           f"jpeg{options.quality}": (jpeg(original, options.quality),
                                                                      jpeg(written, options.quality))}.items():
                pair = [p if isinstance(p, torch.Tensor) else crop_faces(photo_tensor(p), squares, options.size)
                        for p in (before, after)]
                scores[label] = {v: {"avg_l": s.avg_l, "sr_mask": s.sr_mask}
                                 for v, s in score_victims(networks, *pair, labels, thresholds).items()}
            same = all(math.isclose(scores["png"][v]["avg_l"], float(rows[name][f"avg_l/{v}"]), rel_tol=1e-4)
                       for v in victims)
            records.append({"seed": seed, "photo": name, "faces": len(squares), "scores": scores,
                            "victims_match_the_run": same, "run_seconds": round(seconds, 1)})
            print(f"seed {seed} {name}: " + "; ".join(
                f"{label} " + ", ".join(f"{v} avg_L {s[v]['avg_l']:.5f} SR {s[v]['sr_mask']:.2f}" for v in victims)
                for label, s in scores.items()) + ("" if same else "  (victims differ from the run's!)"), flush=True)
    labels = ["crop", "bilinear", "png", f"jpeg{options.quality}"]
    shown = {"crop": "the crop as crafted (x + delta)", "bilinear": "photo, had it been pasted bilinearly",
             "png": "photo as written (PNG)",
             f"jpeg{options.quality}": f"photo as written, then JPEG {options.quality}"}
    lines = ["| victim | seen by the victims | avg_L | SR_mask |", "|---|---|---:|---:|"]
    summary = {}
    for victim in victims:
        for label in labels:
            cell = {m: mean_std([r["scores"][label][victim][m] for r in records]) for m in ("avg_l", "sr_mask")}
            summary.setdefault(victim, {})[label] = cell
            lines.append(f"| {victim} | {shown[label]} | "
                         f"{cell['avg_l'][0]:.5f} ± {cell['avg_l'][1]:.5f} | {cell['sr_mask'][0]:.3f} ± "
                         f"{cell['sr_mask'][1]:.3f} |")
    host = machine()
    lines.append(f"\nMean ± sample std over {len(records)} photos x seeds (seeds {options.seeds}; {names}); random "
                 f"{victims} (conv_dim 32, 3 residual blocks) at {options.size} px, {options.iterations} I-FGSM "
                 f"iterations, MGDA, penalty, eps 0.05. Victims rebuilt identical to the run's: "
                 f"{all(r['victims_match_the_run'] for r in records)}. Machine: {host['processor']}, "
                 f"{host['cpu_count']} CPUs, torch {host['torch']}, load average {host['load_average'][0]:.1f}.")
    result = {"settings": vars(options), "machine": host, "records": records, "summary": summary}
    (out / "jpeg.json").write_text(json.dumps(result, indent=2))
    (out / "jpeg.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def twelve_megapixels(folder: Path) -> str:
    from skimage import data

    canvas = np.full((3000, 4000, 3), 128, np.uint8)
    canvas[1000:2536, 1500:3036] = np.asarray(Image.fromarray(data.astronaut()).resize((1536, 1536)))
    Image.fromarray(canvas).save(folder / "twelve_mp.jpg", quality=95)
    return "twelve_mp.jpg"


def time_part(options: argparse.Namespace, out: Path) -> None:
    from omegaconf import open_dict

    from advwm.pipeline import craft
    from advwm.protect.cli import main as protect_main

    folder = out / "photos"
    names = portraits(folder)
    victims = ["stargan", "attgan"]
    result: dict = {"craft": {}, "universal": {}}
    for iterations in (2, 2, 6):  # the first run of 2 warms up (imports, allocator); its time is not used
        target = out / f"craft{iterations}"
        shutil.rmtree(target, ignore_errors=True)
        settings = CraftSettings(victims=victims, weights="random", iterations=iterations, image_size=256,
                                 overrides=["trainer.enable_progress_bar=false"])
        cfg = compose(settings, folder, names[:1], target, target / "run")
        started = time.perf_counter()
        craft(cfg)
        result["craft"][iterations] = round(time.perf_counter() - started, 1)
        print(f"--craft, {iterations} iterations, 1 photo: {result['craft'][iterations]} s", flush=True)
    per_iteration = (result["craft"][6] - result["craft"][2]) / 4
    fixed = result["craft"][2] - 2 * per_iteration
    result["craft_per_iteration"] = round(per_iteration, 2)
    result["craft_fixed"] = round(fixed, 1)
    result["craft_80"] = round(fixed + 80 * per_iteration, 0)
    # the universal path: a watermark crafted in one step against the same victims, applied with --measure
    universal = out / "universal"
    shutil.rmtree(universal, ignore_errors=True)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["+victims=[stargan,attgan]", "weights=random", "attack.iterations=1",
                                                 "metrics=fast", "logger=csv", "trainer.enable_progress_bar=false"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(universal / "run")
    craft(cfg)
    big = twelve_megapixels(folder)
    for photo in (names[0], big):
        started = time.perf_counter()
        protect_main([str(universal / "run" / "watermark.pt"), str(folder / photo), "--out",
                      str(out / f"universal_{photo}"), "--measure"])
        result["universal"][photo] = round(time.perf_counter() - started, 1)
        print(f"universal watermark + --measure, {photo}: {result['universal'][photo]} s", flush=True)
    host = machine()
    result["machine"] = host
    lines = [f"--craft (random StarGAN + AttGAN, official architectures, 256 px, 1 face): {result['craft'][2]} s at 2 "
             f"iterations, {result['craft'][6]} s at 6: {per_iteration:.1f} s per iteration + {fixed:.0f} s fixed; "
             f"at the default 80 iterations ~{result['craft_80']:.0f} s per face.",
             "universal watermark with --measure: " + ", ".join(f"{p} {s} s" for p, s in result["universal"].items()),
             f"Machine: {host['processor']}, {host['cpu_count']} CPUs, torch {host['torch']} "
             f"({host['torch_threads']} threads), load average {host['load_average'][0]:.1f}."]
    (out / "time.json").write_text(json.dumps(result, indent=2))
    (out / "time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("jpeg", "time"))
    parser.add_argument("--victims", default="stargan,aggan", help="jpeg: the victims (random, reduced width)")
    parser.add_argument("--size", type=int, default=64, help="jpeg: image_size")
    parser.add_argument("--iterations", type=int, default=20, help="jpeg: I-FGSM iterations per face")
    parser.add_argument("--quality", type=int, default=95, help="jpeg: the JPEG quality")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(REPO / "outputs" / "photos"))
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    (jpeg_part if options.part == "jpeg" else time_part)(options, out)


if __name__ == "__main__":
    main()
