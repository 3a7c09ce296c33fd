"""CMUA-Watermark in one command: TPE step-size search on a small crafting set, then the final watermark.

Phase 1 runs `python -m advwm.run -m hparams_search=cmua_step_sizes ...` (Hydra's Optuna sweeper, TPE,
study in an RDB; re-running resumes the same study). Phase 2 reads the study's best step sizes and
crafts the final watermark with them at the final batch size; `step_sizes.json` is written next to it.

    python experiments/cmua.py +victims=[stargan,attgan] data=celeba data.root=/data/celeba
    python experiments/cmua.py --trials 3 +victims=[stargan] weights=random image_size=64   # a smoke run

Every argument that is not an option below is passed to both phases as a Hydra override.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
from hydra import compose, initialize_config_dir

from advwm import resolvers  # noqa: F401  (registers ${advwm.sqlite:...})

REPO = Path(__file__).resolve().parents[1]
SIZED_DATA = ("celeba", "folder")  # data modules with a crafting-set size (n_craft)


def data_choice(overrides: list[str]) -> str:
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("data=")]
    return chosen[-1] if chosen else "demo"


def study_of(overrides: list[str]) -> tuple[str, str]:
    """(study name, storage URL) exactly as the search config composes them."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "hparams_search=cmua_step_sizes"])
    return str(cfg.study_name), str(cfg.hparams_search_storage)


def run(args: list[str]) -> None:
    command = [sys.executable, "-m", "advwm.run", *args]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="TPE trials in this invocation (added to the study)")
    parser.add_argument("--search-images", type=int, default=16, help="crafting faces during the search")
    parser.add_argument("--final-batch", type=int, default=64, help="batch size of the final watermark")
    parser.add_argument("--out", default=None, help="folder of the final run (default outputs/cmua/<time>)")
    options, overrides = parser.parse_known_args()
    sized = data_choice(overrides) in SIZED_DATA
    search = [f"data.n_craft={options.search_images}", f"data.batch_size={options.search_images}"] if sized else []
    run(["-m", "hparams_search=cmua_step_sizes", f"hydra.sweeper.n_trials={options.trials}", "task_name=cmua_search",
         *overrides, *search])

    study_name, storage = study_of(overrides)
    study = optuna.load_study(study_name=study_name, storage=storage)
    best = study.best_trial
    steps = {key: float(value) for key, value in best.params.items()}
    out = Path(options.out) if options.out else REPO / "outputs" / "cmua" / time.strftime("%Y-%m-%d_%H-%M-%S")
    final = [f"data.batch_size={options.final_batch}"] if sized else []
    run(["task_name=cmua_final", f"hydra.run.dir={out}", *overrides, *final,
         *(f"{key}={value}" for key, value in steps.items())])
    record = {"step_sizes": steps, "search_objective": best.value, "best_trial": best.number,
              "trials_in_study": len(study.trials), "study_name": study_name, "storage": storage}
    (out / "step_sizes.json").write_text(json.dumps(record, indent=2))
    print(f"final watermark and its step sizes: {out}")


if __name__ == "__main__":
    main()
