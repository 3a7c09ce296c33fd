"""CMUA's TPE step-size search through Hydra's Optuna sweeper, with its study in SQLite, then the final run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = ["+victims=[stargan]", "weights=random", "logger=csv", "image_size=32", "victims.stargan.arch.conv_dim=8",
        "victims.stargan.arch.repeat_num=1", "attack.iterations=1", "data.craft=[astronaut]",
        "data.evaluate=[grace_hopper]"]


def cmua(tmp_path: Path, trials: int, out: str) -> None:
    command = [sys.executable, "experiments/cmua.py", "--trials", str(trials), "--out", str(tmp_path / out), *TINY,
               f"paths.log_dir={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_tpe_search_stores_resumes_and_the_final_run_uses_the_best_step_sizes(tmp_path: Path) -> None:
    cmua(tmp_path, 3, "final1")
    storage = f"sqlite:///{tmp_path / 'optuna' / 'cmua_stargan.db'}"
    study = optuna.load_study(study_name="cmua_stargan", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    values = [t.params["victims.stargan.step_scale"] for t in study.trials]
    assert all(0.0 <= v <= 10.0 for v in values) and len(set(values)) == 3
    # each trial's value is that run's mean SR_mask, as written in its metrics.json
    runs = sorted((tmp_path / "cmua_search" / "multiruns").glob("*/[0-9]*"))
    recorded = {json.loads((r / "metrics.json").read_text())["sr_mask/mean"] for r in runs}
    assert {t.value for t in study.trials} <= recorded

    cmua(tmp_path, 1, "final2")  # a second invocation resumes the same study
    study = optuna.load_study(study_name="cmua_stargan", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert study.trials[3].params["victims.stargan.step_scale"] not in values  # no replayed trial

    best = study.best_trial.params["victims.stargan.step_scale"]
    chosen = json.loads((tmp_path / "final2" / "step_sizes.json").read_text())
    assert chosen["step_sizes"] == {"victims.stargan.step_scale": best}
    assert chosen["trials_in_study"] == 4
    final_cfg = yaml.safe_load((tmp_path / "final2" / "config.yaml").read_text())
    assert final_cfg["victims"]["stargan"]["step_scale"] == pytest.approx(best)
    assert (tmp_path / "final2" / "watermark.pt").is_file()
