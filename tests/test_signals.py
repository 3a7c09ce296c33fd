"""Every signal ends a run cleanly, in every phase (issue 17.2), with real processes: `python -m advwm.run` (and
`python -m advwm.protect`) on tiny random victims, signalled at a phase found from the run's files, never after a
fixed sleep.

- SIGTERM or SIGINT while crafting: the iteration in progress ends, a checkpoint is written there, exit status
  128 + n, and the last line says what is kept and the command that resumes; that command gives exactly the
  uninterrupted run's watermark and metrics.
- While judging (robust judging included): at once (metrics.json never written), watermark.pt and the checkpoint
  written when crafting ended are kept (a kill -9 keeps them too), and the resume only judges, to the same metrics.
- SLURM (simulated: SLURM_* set, `scontrol` a script that records its arguments): the requeue signal writes
  Lightning's hpc checkpoint at an iteration end and runs `scontrol requeue <job>`; the requeued job (same command,
  SLURM_RESTART_COUNT=1) resumes by itself and ends equal to an uninterrupted run. conf/hydra/launcher/slurm.yaml
  asks SLURM for that signal.
- A search trial stopped by SIGTERM: status 143, the trial FAIL at once, the next invocation goes on.
- protect: SIGTERM mid-folder, status 143 and one line.
- A run cut short by trainer.max_steps before any face was judged: exit 0, a line saying so and how to go on.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState
from PIL import Image
from test_run import REPO, compose_run, small

from advwm.attacks.module import WatermarkAttack
from advwm.callbacks import EvaluationCallback
from advwm.pipeline import craft
from advwm.run_files import signals
from advwm.run_files.watermark_file import load_watermark

ENV = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
# 3 faces in batches of 2, 40 iterations each: 80 steps, long enough to be signalled mid-craft; a checkpoint only
# every 1000 iterations, so the one a stop keeps is the stop's own
TINY = ["+victims=[stargan]", "weights=random", "logger=csv", "metrics=fast", "attack.iterations=40",
        "data.batch_size=2", "data.craft=[astronaut,astronaut@mirror,grace_hopper]",
        "data.evaluate=[grace_hopper@mirror]", "checkpoint_every=1000", *small("stargan")]
FIRST_SIGN = "iteration:"  # the progress bar: crafting has begun


class Run:
    """A `python -m <module>` process writing its output to a file, signalled while it works."""

    def __init__(self, tmp_path: Path, name: str, args: list[str], env: dict | None = None,
                 module: str = "advwm.run") -> None:
        self.log = tmp_path / f"{name}.txt"
        with self.log.open("w") as output:
            self.process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env or ENV,
                                            stdout=output, stderr=output)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll until `condition()` (no time limit: a loaded machine is slow, not wrong); fail if the run ended."""
        while not condition():
            assert self.process.poll() is None, f"the run ended before {what}: " + self.text()[-3000:]
            time.sleep(0.02)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self) -> tuple[int, str]:
        """(exit status, the last line)."""
        status = self.process.wait(timeout=1800)
        lines = [line for line in self.text().splitlines() if line.strip()]
        return status, lines[-1] if lines else ""


def cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advwm.run", *args], cwd=REPO, env=env or ENV, capture_output=True,
                          text=True, timeout=1800)


def outputs(folder: Path) -> tuple[torch.Tensor, dict]:
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("seconds")
    return load_watermark(folder / "watermark.pt").tensor, metrics


def resume_from(line: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the command a stop line gives (after "resume with: ")."""
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "advwm.run"], command
    return cli(command[3:], env)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, dict]:
    folder = tmp_path_factory.mktemp("straight") / "run"
    result = cli([*TINY, f"hydra.run.dir={folder}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return outputs(folder)


def crafting(run: Run) -> Callable[[], bool]:
    return lambda: FIRST_SIGN in run.text() and "iteration:   1%" in run.text()


# ---- while crafting ------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_crafting_keeps_the_iteration_and_its_command_resumes(
        tmp_path: Path, straight: tuple[torch.Tensor, dict], signum: int) -> None:
    folder = tmp_path / "run"
    run = Run(tmp_path, "stopped", [*TINY, f"hydra.run.dir={folder}"])
    run.wait_for(crafting(run), "crafting began")
    run.send(signum)
    status, line = run.finish()
    name = signal.Signals(signum).name
    assert status == 128 + signum, run.text()[-3000:]
    assert line.startswith(f"error: stopped by {name} while crafting, at the end of an iteration: kept in {folder}: "
                           "watermark.partial.pt, checkpoints/last.ckpt (iteration "), line
    iteration = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["advwm_iteration"]
    assert 0 < iteration < 80 and f"checkpoints/last.ckpt (iteration {iteration}); resume with: " in line
    assert "Traceback" not in run.text() and not (folder / "metrics.json").exists()
    resumed = resume_from(line)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    watermark, metrics = outputs(folder)
    assert torch.equal(watermark, straight[0]) and metrics == straight[1]


def test_the_first_signal_waits_for_the_iteration_the_second_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: the held signal, the same signal again, and the grace period's own second signal."""
    def sleep_a_while() -> None:
        for _ in range(100):  # a signal is handled between two of these (the grace timer's after 0.1 s)
            time.sleep(0.01)

    with signals.handled():
        signals.set_phase("crafting", holding=True)
        signal.raise_signal(signal.SIGTERM)
        sleep_a_while()  # held: nothing raised
        with pytest.raises(signals.RunStopped) as second:
            signal.raise_signal(signal.SIGTERM)
            sleep_a_while()
        assert (second.value.signum, second.value.phase, second.value.at_iteration_end) == (signal.SIGTERM,
                                                                                            "crafting", False)
        monkeypatch.setattr(signals, "GRACE_SECONDS", 0.1)
        signals.set_phase("crafting", holding=True)
        with pytest.raises(signals.RunStopped) as late:
            signal.raise_signal(signal.SIGINT)  # held, then re-sent by the grace timer
            sleep_a_while()
        assert late.value.signum == signal.SIGINT and late.value.status == 130
        signals.set_phase("crafting", holding=True)
        signal.raise_signal(signal.SIGTERM)
        with pytest.raises(signals.RunStopped, match="stopped by SIGTERM while judging"):
            signals.set_phase("judging")  # crafting ended: the held signal stops the run there
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers before the block are back


# ---- while judging ---------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("single_thread")
def test_the_watermark_and_the_checkpoint_are_written_before_judging_begins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    judge = EvaluationCallback.judge_held_out

    def judging(callback: EvaluationCallback, trainer, module) -> None:
        seen["files"] = sorted(p.name for p in (tmp_path / "run").rglob("*") if p.suffix in (".pt", ".ckpt"))
        seen["iteration"] = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)[
            "advwm_iteration"]
        judge(callback, trainer, module)

    monkeypatch.setattr(EvaluationCallback, "judge_held_out", judging)
    craft(compose_run(tmp_path / "run", [*TINY, "attack.iterations=2"]))
    assert seen == {"files": ["last.ckpt", "watermark.pt"], "iteration": 4}

@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 faces to craft on and 40 to judge: judging (with two sharing transforms) outlasts the signal's delivery."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(42):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def judged_reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, dict]:
    folder = tmp_path_factory.mktemp("judged") / "run"
    result = cli([*judged(photos), f"hydra.run.dir={folder}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return outputs(folder)


def judged(photos: Path) -> list[str]:
    return ["+victims=[stargan]", "weights=random", "logger=csv", "metrics=fast", "metrics.robustness=[jpeg75,blur1]",
            "data=folder", f"data.root={photos}", "data.detect=false", "data.n_craft=2", "data.batch_size=2",
            "data.eval_batch_size=1",
            "attack.iterations=2", "checkpoint_every=1000", *small("stargan")]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "kill"])
def test_a_signal_while_judging_stops_at_once_keeping_the_crafted_watermark(
        tmp_path: Path, photos: Path, judged_reference: tuple[torch.Tensor, dict], signum: int) -> None:
    args = judged(photos)
    folder = tmp_path / "run"
    run = Run(tmp_path, "stopped", [*args, f"hydra.run.dir={folder}"])
    run.wait_for(lambda: (folder / "watermark.pt").is_file(), "crafting ended")
    run.send(signum)
    status, line = run.finish()
    assert not (folder / "metrics.json").exists()  # it stopped while judging, not after
    assert not re.search(r"judging \([^\r\n]*100%", run.text())  # the judging bar never finished
    assert torch.equal(load_watermark(folder / "watermark.pt").tensor, judged_reference[0])
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["advwm_iteration"] == 2
    if signum == signal.SIGKILL:
        assert status == -signal.SIGKILL
        overrides = [*args, f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={folder}"]
        line = "resume with: python -m advwm.run " + " ".join(shlex.quote(o) for o in overrides)
    else:
        name = signal.Signals(signum).name
        assert status == 128 + signum, run.text()[-3000:]
        assert line.startswith(f"error: stopped by {name} while judging: kept in {folder}: watermark.pt, "
                               "checkpoints/last.ckpt (iteration 2); resume with: python -m advwm.run "), line
        assert "Traceback" not in run.text()
    resumed = resume_from(line)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "iteration:" not in resumed.stderr.replace("iteration: 100%", "")  # nothing crafted again
    assert outputs(folder)[1] == judged_reference[1]


# ---- SLURM -------------------------------------------------------------------------------------------------------

def slurm_env(tmp_path: Path, **extra: str) -> tuple[dict, Path]:
    """A SLURM job step's environment (one task), `scontrol` a script recording its arguments in scontrol.txt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "scontrol.txt"
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {record}\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}:{ENV['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1",
           "SLURM_JOB_NAME": "advwm-test", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0", **extra}
    return env, record


@pytest.mark.slow
@pytest.mark.parametrize("then", [signal.SIGTERM, signal.SIGKILL], ids=["then-SIGTERM", "then-killed"])
def test_slurm_requeue_signal_checkpoints_requeues_and_the_requeued_job_resumes(
        tmp_path: Path, straight: tuple[torch.Tensor, dict], then: int) -> None:
    env, record = slurm_env(tmp_path)
    folder = tmp_path / "run"
    command = [*TINY, f"hydra.run.dir={folder}"]
    run = Run(tmp_path, "preempted", command, env)
    run.wait_for(crafting(run), "crafting began")
    run.send(signal.SIGUSR1)  # SLURM: the time limit is near (conf/hydra/launcher/slurm.yaml)
    run.wait_for(lambda: record.is_file() and "requeue" in record.read_text(), "the job was requeued")
    assert record.read_text() == "requeue 4242\n"
    hpc = torch.load(folder / "hpc_ckpt_1.ckpt", weights_only=True)
    assert 0 < hpc["advwm_iteration"] == hpc["global_step"] < 80  # written at an iteration's end
    run.send(then)  # SLURM ends the job it requeued (SIGTERM; SIGKILL after its grace)
    status, line = run.finish()
    assert status == (143 if then == signal.SIGTERM else -signal.SIGKILL), run.text()[-3000:]
    requeued = cli(command, {**env, "SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    newest = "checkpoints/last.ckpt" if then == signal.SIGTERM else "hpc_ckpt_1.ckpt"
    assert f"requeued SLURM job: resuming from {folder / newest}" in requeued.stdout
    watermark, metrics = outputs(folder)
    assert torch.equal(watermark, straight[0]) and metrics == straight[1]


@pytest.mark.usefixtures("single_thread")
def test_the_requeue_signal_in_the_middle_of_an_iteration_checkpoints_at_its_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process and deterministic: the signal arrives right after the attack's step of iteration 3, before the
    iteration is counted. Lightning's own handler would write the checkpoint there (3 steps, 2 iterations: a resume
    would take the step again); held to the iteration's end, the checkpoint is whole."""
    env, record = slurm_env(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    take_step = WatermarkAttack.take_step

    def step_then_signal(module: WatermarkAttack, loss: torch.Tensor | None = None) -> None:
        take_step(module, loss)
        if module.trainer.global_step == 3:
            signal.raise_signal(signal.SIGUSR1)

    monkeypatch.setattr(WatermarkAttack, "take_step", step_then_signal)
    metrics = craft(compose_run(tmp_path / "run", [*TINY, "attack.iterations=3"]))
    assert metrics["steps"] == 6 and record.read_text() == "requeue 4242\n"
    hpc = torch.load(tmp_path / "run" / "hpc_ckpt_1.ckpt", weights_only=True)
    assert hpc["global_step"] == hpc["advwm_iteration"] == 3


def test_the_slurm_launcher_asks_for_lightnings_requeue_signal(tmp_path: Path) -> None:
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from submitit.slurm.slurm import _make_sbatch_string

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    sbatch = _make_sbatch_string(command="python -m advwm.run", folder=tmp_path,
                                 signal_delay_s=int(launcher.signal_delay_s),
                                 additional_parameters=dict(launcher.additional_parameters))
    requeue_signal = SLURMEnvironment().requeue_signal
    assert f"#SBATCH --signal={requeue_signal.name.removeprefix('SIG')}@120" in sbatch.splitlines()
    assert "#SBATCH --requeue" in sbatch.splitlines()


# ---- a search, protect, a run cut short ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_search_stopped_by_sigterm_fails_its_trial_at_once_and_goes_on(tmp_path: Path) -> None:
    search = ["-m", "hparams_search=cmua_step_sizes", "hydra.sweeper.n_trials=1", "+victims=[stargan]",
              "weights=random", "logger=csv", "metrics=fast", *small("stargan"), "attack.iterations=1",
              "data.craft=[astronaut]", "data.evaluate=[grace_hopper]", "checkpoint_every=1",
              f"paths.log_dir={tmp_path}",
              # long enough to be stopped mid-run, short enough to finish when continued; the same in both
              # invocations (a study refuses trials scored with other settings: advwm.studies.study_signature)
              "trainer.max_epochs=100000", "trainer.max_steps=100"]
    url = f"sqlite:///{tmp_path / 'optuna' / 'cmua_stargan.db'}"
    run = Run(tmp_path, "search", search)
    run.wait_for(lambda: bool(list(tmp_path.glob("craft/multiruns/*/0/checkpoints/last.ckpt"))), "a trial crafted")
    run.send(signal.SIGTERM)
    status, line = run.finish()
    assert status == 143, run.text()[-3000:]
    assert line.startswith("error: stopped by SIGTERM while crafting, at the end of an iteration: kept in ")
    assert line.endswith("the search (study cmua_stargan) keeps its finished trials and marks this one failed: run "
                         "the same command again to continue it")
    trials = optuna.load_study(study_name="cmua_stargan", storage=url).trials
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL)]  # at once, not after a grace period
    again = cli(search)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="cmua_stargan", storage=url).trials
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.COMPLETE)]


@pytest.mark.slow
def test_protect_stopped_by_sigterm_says_so_in_one_line(tmp_path: Path) -> None:
    watermark = tmp_path / "watermark.pt"
    made = cli([*TINY, "attack.iterations=1", f"hydra.run.dir={tmp_path / 'run'}"])
    assert made.returncode == 0, made.stderr[-3000:]
    (tmp_path / "run" / "watermark.pt").rename(watermark)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for index in range(300):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(photos / f"{index:03d}.png")
    out = tmp_path / "out"
    run = Run(tmp_path, "protect", [str(watermark), str(photos), "--out", str(out), "--no-detect"],
              module="advwm.protect")
    run.wait_for(lambda: out.is_dir() and any(out.glob("*.png")), "the first photo was written")
    run.send(signal.SIGTERM)
    status, line = run.finish()
    assert status == 143, run.text()[-3000:]
    assert line == ("error: stopped by SIGTERM while protecting photos: each protected photo written so far is whole, "
                    "the others are not written; run the same command again to protect them all")
    assert "Traceback" not in run.text() and len(list(out.glob("*.png"))) < 300
    for written in out.glob("*.png"):
        Image.open(written).load()  # whole


@pytest.mark.slow
def test_a_run_cut_short_before_any_face_was_judged_says_so_and_exits_0(tmp_path: Path) -> None:
    per_image = [*TINY[:4], "attack.iterations=3", *TINY[5:], "scope=per_image", "attack=ifgsm", "aggregator=mgda"]
    folder = tmp_path / "run"
    cut = cli([*per_image, "trainer.max_steps=2", f"hydra.run.dir={folder}"])
    assert cut.returncode == 0, cut.stderr[-3000:]
    assert "not among the metrics" not in cut.stderr
    said = next(line for line in cut.stdout.splitlines() if line.startswith("stopped after"))
    assert said.startswith("stopped after 2 of 6 iterations (trainer.max_steps=2) before any face was judged: nothing "
                           "judged yet")
    command = said.split("go on with: ", 1)[1].split(" (and a larger", 1)[0]
    assert "max_steps" not in command and f"ckpt_path={folder}/checkpoints/last.ckpt" in command
    went_on = cli(shlex.split(command)[3:])
    assert went_on.returncode == 0, went_on.stderr[-3000:]
    reference = tmp_path / "straight"
    assert cli([*per_image, f"hydra.run.dir={reference}"]).returncode == 0
    assert outputs(folder)[1] == outputs(reference)[1]
    assert torch.equal(outputs(folder)[0], outputs(reference)[0])
