"""Two runs, one folder (issue 9.2): a run locks its folder; a second run there stops at once with one line naming
the folder and the run holding it; a killed run's folder can be resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from full_disk import assert_whole
from test_run import run_cli, small

from advwm.run_files import folder as run_folder
from advwm.run_files.folder import RunFolderBusy, RunFolderError

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from advwm.run_files import folder; folder.acquire(sys.argv[1]); print('held', flush=True); "
        "time.sleep(3600)")
TRY = "import sys; from advwm.run_files import folder; folder.acquire(sys.argv[1]); print('acquired')"


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in run_folder.RANK_VARIABLES:
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_folder_held_by_this_process_is_refused_to_another_and_free_after_release(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    assert run_folder.acquire(folder) and not run_folder.acquire(folder)  # taken once; again is a no-op
    try:
        other = python(TRY, str(folder))
        _, err = other.communicate(timeout=1800)
        assert other.returncode != 0
        last = err.strip().splitlines()[-1]
        assert f"RunFolderBusy: run folder {folder} is in use by another run (pid {os.getpid()} on " in last
        assert "give this run its own folder" in last
    finally:
        run_folder.release(folder)
    other = python(TRY, str(folder))
    out, err = other.communicate(timeout=1800)
    assert other.returncode == 0 and out.strip() == "acquired", err
    info = json.loads((folder / run_folder.LOCK_NAME).read_text())  # says who held it last
    assert info["pid"] == other.pid


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    holder = python(HOLD, str(tmp_path))
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderBusy, match=f"pid {holder.pid} on "):
        run_folder.acquire(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=1800)
    try:
        assert run_folder.acquire(tmp_path)
    finally:
        run_folder.release(tmp_path)


def test_the_context_manager_takes_and_gives_back_only_its_own_lock(tmp_path: Path, monkeypatch) -> None:
    with run_folder.exclusive(tmp_path):
        assert run_folder.held(tmp_path)
        with run_folder.exclusive(tmp_path):  # nested (the Hydra callback, then craft): no second lock
            pass
        assert run_folder.held(tmp_path)
    assert not run_folder.held(tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker writes into rank 0's folder: no lock
    with run_folder.exclusive(tmp_path):
        assert not run_folder.held(tmp_path)


def test_leftover_temporary_files_of_a_killed_writer_are_removed_when_the_folder_is_taken(tmp_path: Path) -> None:
    leftover = tmp_path / "checkpoints" / ".last.ckpt.x1y2z3.advwm-tmp"
    leftover.parent.mkdir()
    leftover.write_bytes(b"half")
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"whole")
    with run_folder.exclusive(tmp_path):
        assert not leftover.exists() and (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == b"whole"


def test_an_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RunFolderError) as caught:
        run_folder.acquire(tmp_path / "file" / "run")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write the run folder {tmp_path / 'file' / 'run'} (Not a directory): ")
    assert "hydra.run.dir=<folder>" in message


# ---- the CLI -----------------------------------------------------------------------------------------------------

TINY = ["+victims=[stargan]", "weights=random", "logger=csv", "metrics=fast", "data.craft=[astronaut]",
        "data.evaluate=[grace_hopper]", "attack.iterations=2", "checkpoint_every=1", *small("stargan")]


def wait_for(condition, what: str, process: subprocess.Popen, log: Path) -> None:
    """Poll until `condition()` holds (no time limit: a loaded machine is slow, not wrong); fail if the run ended."""
    while not condition():
        assert process.poll() is None, f"the first run ended before {what}: " + log.read_text()[-3000:]
        time.sleep(0.5)


@pytest.mark.slow
def test_a_second_run_in_a_busy_folder_stops_at_once_and_a_killed_run_resumes_there(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    log = tmp_path / "first.txt"
    with log.open("w") as output:
        first = subprocess.Popen([sys.executable, "-m", "advwm.run", *TINY, "trainer.max_epochs=100000",
                                  f"hydra.run.dir={folder}"], cwd=REPO, env=env, stdout=output, stderr=output)
    try:
        wait_for(lambda: (folder / "checkpoints" / "last.ckpt").is_file(), "its first checkpoint", first, log)
        overrides = (folder / ".hydra" / "overrides.yaml").read_text()
        second = run_cli([*TINY, "seed=7", f"hydra.run.dir={folder}"])
        assert second.returncode == 1
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: run folder {folder} is in use by another run (pid {first.pid} on ")
        assert "Traceback" not in second.stderr and "seed=7" not in second.stdout
        # the second run wrote nothing there: the first run's Hydra files and log are its own
        assert (folder / ".hydra" / "overrides.yaml").read_text() == overrides
        assert "seed=7" not in (folder / "craft.log").read_text() and "in use" not in (folder / "craft.log").read_text()
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)  # killed mid-run: the kernel frees the lock
        first.wait(timeout=1800)
    assert not (folder / "metrics.json").exists()
    assert_whole(folder, killed=True)  # killed mid-run: still no half-written file
    epoch = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    resumed = run_cli([*TINY, f"trainer.max_epochs={epoch + 1}", f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}",
                       f"hydra.run.dir={folder}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((folder / "metrics.json").read_text())["steps"] == 2 * (epoch + 1)
    assert_whole(folder)  # a temporary file the kill left is gone: the resumed run removed it
