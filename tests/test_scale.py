"""Scaling out: DDP gives the watermark of one process; submitit runs a multirun; the SLURM launcher composes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from advwm.run_files.watermark_file import load_watermark

REPO = Path(__file__).resolve().parents[1]
TINY = ["+victims=[stargan]", "weights=random", "logger=csv", "image_size=32", "victims.stargan.arch.conv_dim=8",
        "victims.stargan.arch.repeat_num=1", "attack.iterations=2"]


def run(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "advwm.run", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=1800, env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("held_out", [["data.evaluate=[grace_hopper,astronaut]"],
                                      # fewer held-out faces than processes: one process judges none (it hung)
                                      ["data.evaluate=[grace_hopper]", "metrics.robustness=[jpeg75]"]],
                         ids=["a-face-per-process", "one-face-for-two-processes"])
def test_two_process_ddp_on_cpu_gives_the_watermark_of_one_process_with_the_same_global_batch(
        tmp_path: Path, held_out: list[str]) -> None:
    data = ["data.craft=[astronaut,grace_hopper,astronaut@mirror,grace_hopper@mirror]", *held_out,
            "data.batch_size=4"]
    run([*TINY, *data, f"hydra.run.dir={tmp_path / 'one'}"])
    run([*TINY, *data, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
         f"hydra.run.dir={tmp_path / 'ddp'}"])
    one = load_watermark(tmp_path / "one" / "watermark.pt").tensor
    ddp = load_watermark(tmp_path / "ddp" / "watermark.pt").tensor
    assert one.abs().max() > 0
    assert torch.allclose(one, ddp, atol=1e-6)
    m_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m_ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    keys = ["judged/stargan", "images_judged", "sr_mask/stargan", "l2_mask/stargan", "avg_l/stargan", "steps"]
    keys += [key for key in m_one if key.startswith("robust/") and key.endswith("/stargan")]
    for key in keys:
        assert m_ddp[key] == pytest.approx(m_one[key], rel=1e-5), key  # metrics synchronised over processes


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_multirun(tmp_path: Path) -> None:
    run(["-m", "hydra/launcher=local", *TINY, "attack.iterations=1", "data.craft=[astronaut]",
         "data.evaluate=[grace_hopper]", "aggregator=mgda,uniform", f"paths.log_dir={tmp_path}"])
    results = sorted(tmp_path.glob("craft/multiruns/*/[0-9]/metrics.json"))
    assert len(results) == 2
    configs = [json.loads(p.read_text()) for p in results]
    assert all("sr_mask/mean" in c for c in configs)
    assert list(tmp_path.glob("craft/multiruns/*/.submitit"))


def test_slurm_launcher_config_composes_with_its_documented_keys() -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True,
                      overrides=["+victims=[stargan]", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.array_parallelism == 32
    assert "timeout_min" in launcher and "setup" in launcher
