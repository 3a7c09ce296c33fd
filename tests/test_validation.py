"""Config checked before any work (issue 9.6): one line naming each bad key and what to choose, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_run import compose_run, run_cli, small

from advwm.validation import (
    ConfigValueError,
    check_config,
    check_image_size,
    config_problems,
    image_size_problem,
    output_shape,
)
from advwm.victims import build_victim

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")
STARGAN = ["+victims=[stargan]", "weights=random"]


@pytest.mark.parametrize(("override", "expected"), [
    ("eps=0", "eps=0: choose a value in (0, 1]"),
    ("eps=-0.1", "eps=-0.1: choose a value in (0, 1]"),
    ("eps=1.5", "eps=1.5: choose a value in (0, 1]"),
    ("eps=nan", "eps=nan: choose a value in (0, 1]"),
    ("image_size=0", "image_size=0: choose a whole number >= 1"),
    ("data.batch_size=0", "data.batch_size=0: choose a whole number >= 1"),
    ("data.eval_batch_size=-2", "data.eval_batch_size=-2: choose a whole number >= 1"),
    ("attack.iterations=0", "attack.iterations=0: choose a whole number >= 1"),
    ("attack.iterations=2.5", "attack.iterations=2.5: choose a whole number >= 1"),
    ("attack.iterations=true", "attack.iterations=True: choose a whole number >= 1"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: choose a whole number >= 1"),
    ("checkpoint_every=0", "checkpoint_every=0: choose a whole number >= 1"),
    ("metrics.every_n_steps=-1", "metrics.every_n_steps=-1: choose a whole number >= 0"),
    ("attack.step_size=nan", "attack.step_size=nan: choose a finite number > 0"),
    ("attack.step_size=inf", "attack.step_size=inf: choose a finite number > 0"),
    ("attack.step_size=0", "attack.step_size=0: choose a finite number > 0"),
    ("attack.step_size=-0.01", "attack.step_size=-0.01: choose a finite number > 0"),
    ("victims.stargan.step_scale=nan", "victims.stargan.step_scale=nan: choose a finite number >= 0"),
    ("victims.stargan.micro_batch=0", "victims.stargan.micro_batch=0: choose auto, null (all at once) or"),
    ("trainer.precision=16-mixed", "trainer.precision=16-mixed is not supported by the attack: use 32-true"),
])
def test_each_bad_value_is_named_with_what_to_choose(tmp_path: Path, override: str, expected: str) -> None:
    cfg = compose_run(tmp_path, [*STARGAN, override])
    with pytest.raises(ConfigValueError) as caught:
        check_config(cfg)
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)


def test_good_values_and_their_edges_pass(tmp_path: Path) -> None:
    for overrides in ([], ["eps=1"], ["eps=0.0001"], ["victims.stargan.step_scale=0"], ["metrics.every_n_steps=0"],
                      ["victims.stargan.micro_batch=null"], ["victims.stargan.micro_batch=3"], ["data=folder"],
                      ["data=celeba", "data.n_eval=null"]):
        assert config_problems(compose_run(tmp_path, [*STARGAN, *overrides])) == [], overrides
    cfg = compose_run(tmp_path, [*STARGAN, "data=celeba", "data.n_craft=0"])
    assert config_problems(cfg) == ["data.n_craft=0: choose a whole number >= 1"]


def test_several_problems_are_one_line(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, [*STARGAN, "eps=0", "data.batch_size=0", "attack.step_size=nan"])
    with pytest.raises(ConfigValueError) as caught:
        check_config(cfg)
    message = str(caught.value)
    assert "\n" not in message and message.count("; ") == 2
    assert message.index("eps=0") < message.index("data.batch_size=0") < message.index("attack.step_size=nan")


# ---- image size per victim ------------------------------------------------------------------------------------------

def _stargan(size: int):
    """A small StarGAN: two stride-2 convolutions down and two transposed ones up, so it needs multiples of 4."""
    return build_victim("stargan", checkpoint=None, arch={"conv_dim": 8, "repeat_num": 1}, image_size=size,
                        attrs=["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"])


def test_an_image_size_a_victim_cannot_take_names_the_multiple_it_needs() -> None:
    victim = _stargan(90)
    assert output_shape(victim, 90) == (1, 3, 88, 88)  # (90 -> 45 -> 22 -> 44 -> 88)
    for size in (88, 92, 96, 32):
        assert output_shape(victim, size) == (1, 3, size, size)
    assert image_size_problem(victim, 90) == ("image_size=90 does not fit victim stargan (it returns 88x88 images for "
                                              "90x90): choose a multiple of 4, e.g. 88 or 92")
    assert image_size_problem(victim, 102) == ("image_size=102 does not fit victim stargan (it returns 100x100 images "
                                               "for 102x102): choose a multiple of 4, e.g. 100 or 104")
    assert image_size_problem(victim, 92) is None
    aggan = build_victim("aggan", checkpoint=None, arch={"conv_dim": 8, "repeat_num": 1}, image_size=90,
                         attrs=["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"])
    problem = image_size_problem(aggan, 90)  # AGGAN fails inside (its attention mask has the input's size)
    assert problem.startswith("image_size=90 does not fit victim aggan (a 90x90 image fails: The size of tensor a")
    assert problem.endswith("choose a multiple of 4, e.g. 88 or 92")
    with pytest.raises(ConfigValueError, match="victim stargan .*; image_size=90 does not fit victim aggan"):
        check_image_size([victim, aggan], 90)


class TrainModeVictim(torch.nn.Module):
    """A victim in train mode whose forward moves BatchNorm statistics and draws random numbers (dropout)."""

    name = "trainmode"

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(3)
        self.drop = torch.nn.Dropout(0.5)

    def conditions(self, labels: torch.Tensor) -> list[torch.Tensor]:
        return [torch.zeros(labels.shape[0], 1)]

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(x + 1))


def test_probing_a_victim_changes_neither_it_nor_the_random_state() -> None:
    victim = TrainModeVictim().train()
    with torch.no_grad():
        victim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1))  # what an unguarded probe does: statistics move
    assert victim.norm.running_mean.abs().max() > 0
    victim = TrainModeVictim().train()
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    assert image_size_problem(victim, 8) is None
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(victim.norm.running_mean, torch.zeros(3)) and int(victim.norm.num_batches_tracked) == 0


# ---- the CLI: one line, before any work; HYDRA_FULL_ERROR=1 shows the traceback ---------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "expected"), [
    (["image_size=90"], "error: image_size=90 does not fit victim stargan (it returns 88x88 images for 90x90): "
                        "choose a multiple of 4, e.g. 88 or 92"),
    (["image_size=32", "attack.step_size=nan"], "error: attack.step_size=nan: choose a finite number > 0"),
    (["image_size=32", "ckpt_path=/nonexistent/last.ckpt"], "error: ckpt_path=/nonexistent/last.ckpt: no such file"),
])
def test_the_cli_stops_before_crafting_with_one_line(tmp_path: Path, overrides: list[str], expected: str) -> None:
    tiny = [*STARGAN, "logger=csv", "victims.stargan.arch.conv_dim=8", "victims.stargan.arch.repeat_num=1",
            "data.craft=[astronaut]", "data.evaluate=[grace_hopper]"]
    result = run_cli([*tiny, *overrides, f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(expected)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists() and not list(tmp_path.glob("watermark*"))
    full = subprocess.run([sys.executable, "-m", "advwm.run", *tiny, *overrides, f"hydra.run.dir={tmp_path / 'full'}"],
                          cwd=REPO, env={**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"},
                          capture_output=True, text=True, timeout=1800)
    assert full.returncode == 1 and "Traceback" in full.stderr and "ConfigValueError" in full.stderr


@pytest.mark.slow
def test_an_unwritable_output_folder_is_one_line_for_a_run_and_a_multirun(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    result = run_cli([*STARGAN, *small("stargan"), f"hydra.run.dir={tmp_path / 'file' / 'run'}"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot write the run folder {tmp_path / 'file' / 'run'} (Not a directory): choose a writable place "
        "with hydra.run.dir=<folder> or paths.log_dir=<folder>")
    result = run_cli(["-m", *STARGAN, *small("stargan"), f"hydra.sweep.dir={tmp_path / 'file' / 'sweep'}"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot write the run folder {tmp_path / 'file' / 'sweep'} (Not a directory): choose a writable place "
        "with hydra.sweep.dir=<folder> or paths.log_dir=<folder>")
