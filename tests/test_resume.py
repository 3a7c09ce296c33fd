"""Resuming gives exactly what the uninterrupted run gives (issue: a resumed run crafted on the wrong faces).

Each case runs straight through, then again stopped after k iterations (`trainer.max_steps=k`, a
checkpoint every iteration, as a kill would leave it), then resumed from that run's last.ckpt: the resumed
watermark.pt must equal the straight one bit for bit and metrics.json must hold the same values, for a stop
inside a batch and one at a batch boundary, for both scopes and for base attacks with state (momentum,
APGD's schedule and best point, DI2's draws). A checkpoint of another config is refused with one line naming the
settings that differ (tests/test_resume_checks.py: every key of the config, and what a checkpoint holds).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_run import compose_run, small

from advwm.errors import ConfigError
from advwm.pipeline import craft
from advwm.run_files.watermark_file import load_watermark

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

# 3 crafting faces in batches of 2: batch 0 has 2 faces, batch 1 one; 3 iterations each = 6 steps
COMMON = ["+victims=[stargan]", "weights=random", "attack.iterations=3", "data.batch_size=2",
          "data.craft=[astronaut,astronaut@mirror,grace_hopper]", "data.evaluate=[grace_hopper@mirror]",
          "checkpoint_every=1", *small("stargan")]
CASES = {
    "universal-pgd-cmua": ["attack=pgd", "aggregator=cmua"],
    "universal-mifgsm-mgda": ["attack=mifgsm", "aggregator=mgda"],
    "universal-apgd-uniform": ["attack=apgd", "aggregator=uniform"],
    "universal-di2fgsm-uniform": ["attack=di2fgsm", "aggregator=uniform"],
    "per_image-ifgsm-mgda": ["scope=per_image", "attack=ifgsm", "aggregator=mgda"],
    "per_image-apgd-single": ["scope=per_image", "attack=apgd", "aggregator=single"],
    "per_image-mdi2fgsm-uniform": ["scope=per_image", "attack=mdi2fgsm", "aggregator=uniform"],
}
TIME_KEYS = ("seconds",)


def run(folder: Path, overrides: list[str]) -> tuple[torch.Tensor, dict]:
    metrics = craft(compose_run(folder, [*COMMON, *overrides]))
    saved = load_watermark(folder / "watermark.pt")
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    return saved.tensor, {k: v for k, v in metrics.items() if k not in TIME_KEYS}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("stop", [2, 3], ids=["inside-a-batch", "at-a-batch-boundary"])
def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path: Path, case: str, stop: int) -> None:
    overrides = CASES[case]
    straight, straight_metrics = run(tmp_path / "straight", overrides)
    craft(compose_run(tmp_path / "stopped", [*COMMON, *overrides, f"trainer.max_steps={stop}"]))
    checkpoint = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=False)["global_step"] == stop
    resumed, resumed_metrics = run(tmp_path / "resumed", [*overrides, f"ckpt_path={checkpoint}"])
    assert torch.equal(resumed, straight)
    assert resumed_metrics == straight_metrics
    assert straight_metrics["steps"] == 6


def test_the_released_loop_resumes_at_a_batch_boundary(tmp_path: Path) -> None:
    overrides = ["aggregator=cmua_reference"]  # one step per batch: 2 steps
    straight, straight_metrics = run(tmp_path / "straight", overrides)
    craft(compose_run(tmp_path / "stopped", [*COMMON, *overrides, "trainer.max_steps=1"]))
    resumed, resumed_metrics = run(tmp_path / "resumed", [*overrides,
                                                          f"ckpt_path={tmp_path / 'stopped/checkpoints/last.ckpt'}"])
    assert torch.equal(resumed, straight) and resumed_metrics == straight_metrics


@pytest.mark.parametrize(("override", "key"), [("image_size=64", "image_size (32 there, 64 here)"),
                                                ("eps=0.04", "eps (0.05 there, 0.04 here)"),
                                                ("scope=per_image", "scope (Universal there, PerImage here)"),
                                                ("data.batch_size=1", "data.batch_size (2 there, 1 here)"),
                                                ("+victims=[attgan]", "victims.attgan (unset there, set here)"),
                                                ("attack.step_size=0.05", "attack.step_size (0.01 there, 0.05 here)"),
                                                ("eot=sharing", "eot (None there, SharingEOT here)")])
def test_a_checkpoint_of_another_config_is_refused_naming_the_key(tmp_path: Path, override: str, key: str) -> None:
    craft(compose_run(tmp_path / "first", [*COMMON, "trainer.max_steps=1"]))
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    extra = small("attgan") if "attgan" in override else []
    with pytest.raises(ConfigError, match=rf"^ckpt_path={checkpoint}: the checkpoint was written with other settings "
                                          rf"than this run's: {re.escape(key)}"):
        craft(compose_run(tmp_path / "second", [*COMMON, override, *extra, f"ckpt_path={checkpoint}"]))
    assert not (tmp_path / "second").exists()  # refused before any work: nothing written
