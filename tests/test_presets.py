"""A paper preset runs as one multirun (tiny victims on the demo faces) and the report tabulates it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advwm.report import build_table, collect, varying

REPO = Path(__file__).resolve().parents[1]
CDMAA_TINY = [
    "data=demo", "weights=random", "metrics=fast", "logger=csv", "attack.iterations=1", "data.craft=[astronaut]",
    "data.evaluate=[grace_hopper]", "image_size=32", "victims.stargan.arch.conv_dim=8",
    "victims.stargan.arch.repeat_num=2", "victims.attgan.arch.enc_dim=8", "victims.attgan.arch.dec_dim=8",
    "victims.attgan.arch.enc_layers=3", "victims.attgan.arch.dec_layers=3", "victims.stgan.arch.conv_dim=8",
    "victims.stgan.arch.n_layers=3", "victims.stgan.arch.shortcut_layers=2", "victims.ugatit.arch.ngf=8",
    "victims.ugatit.arch.n_blocks=1", "victims.ugatit.arch.light=true",
]


@pytest.mark.slow
def test_cdmaa_table4_preset_runs_as_one_multirun_and_the_report_matches_its_metrics(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline"}
    run = subprocess.run([sys.executable, "-m", "advwm.run", "experiment=cdmaa_table4", *CDMAA_TINY,
                          f"paths.log_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    (multirun,) = list((tmp_path / "cdmaa_table4" / "multiruns").iterdir())
    runs = collect([multirun])
    assert len(runs) == 4 and not any(r.failed for r in runs)
    assert varying(runs)[0] == ["regularizer"]
    for metric in ("avg_l", "attack_rate", "sr_mask"):
        columns, rows = build_table(runs, metric)
        assert columns[1:] == [f"{metric}/{v}" for v in ("stargan", "attgan", "stgan", "ugatit")] + [f"{metric}/mean"]
        for run_, row in zip(runs, rows, strict=True):
            recorded = json.loads((run_.path / "metrics.json").read_text())
            assert row[1:] == pytest.approx([recorded[c] for c in columns[1:]])
    report = subprocess.run([sys.executable, "-m", "advwm.report", str(multirun), "--metrics", "avg_l,attack_rate"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (multirun / "report.md").read_text()
    for regularizer in ("none", "l2", "log", "penalty"):
        assert f"regularizer={regularizer}" in text
    assert (multirun / "report.html").is_file()
