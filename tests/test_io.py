"""Atomic, ordered writes (issue 9.3): a kill or a full disk never leaves half a file, metrics.json comes before the
grids, a full disk stops the run with one line, a run that took no step leaves no partial watermark."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from full_disk import ROOM, assert_whole, filling
from hydra import compose, initialize_config_dir
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_run import compose_run, small
from toys import LinearVictim, TensorFaces

import advwm.run_files.io
from advwm.pipeline import craft
from advwm.run_files import io
from advwm.run_files.checkpoints import AtomicCheckpointIO
from advwm.run_files.watermark_file import load_watermark

REPO = Path(__file__).resolve().parents[1]
TINY = ["+victims=[stargan]", "weights=random", "attack.iterations=2", "data.craft=[astronaut]",
        "data.evaluate=[grace_hopper]", "checkpoint_every=1", *small("stargan")]

pytestmark = pytest.mark.usefixtures("single_thread")


def broken_serializer(real_save, fail_on_call: int):
    """torch.save that, on its `fail_on_call`-th call, writes the first bytes of the object and then dies."""
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise RuntimeError("serializer died mid-write")
        return real_save(obj, f, *args, **kwargs)
    return save


def test_an_interrupted_write_keeps_the_old_file_whole_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out" / "watermark.pt"
    io.torch_save({"x": torch.arange(3)}, target)
    monkeypatch.setattr(torch, "save", broken_serializer(torch.save, 1))
    with pytest.raises(RuntimeError, match="mid-write"):
        io.torch_save({"x": torch.arange(5)}, target)
    assert torch.equal(torch.load(target)["x"], torch.arange(3))
    assert os.listdir(target.parent) == ["watermark.pt"]


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_content(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "metrics.json"
    io.save_json(target, {"sr_mask/mean": 0.5})
    monkeypatch.setattr(advwm.run_files.io, "_open_stream", filling("metrics.json"))
    with pytest.raises(io.DiskFullError) as caught:
        io.save_json(target, {"sr_mask/mean": 0.7, "padding": "x" * 2 * ROOM})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"disk full: no space left to write {target} (")
    assert "free on that disk" in message and caught.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"sr_mask/mean": 0.5}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        io.write_text(tmp_path / "a.txt", "a")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644 and (tmp_path / "a.txt").read_text() == "a"


def test_the_run_log_stays_quiet_on_a_full_disk_and_not_on_other_errors(tmp_path: Path, capsys) -> None:
    class Failing:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def write(self, text: str) -> None:
            raise self.error

        def flush(self) -> None:
            pass

    handler = io.RunLogHandler(tmp_path / "run.log")
    record = logging.LogRecord("advwm", logging.INFO, __file__, 1, "a line", None, None)
    handler.stream = Failing(OSError(errno.ENOSPC, "No space left on device"))
    handler.emit(record)
    assert capsys.readouterr().err == ""
    handler.stream = Failing(ValueError("a bug in a log call"))
    handler.emit(record)
    assert "Logging error" in capsys.readouterr().err
    handler.stream = None
    handler.close()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    # the run's log file uses it
    assert cfg.hydra.job_logging.handlers.file["class"] == "advwm.run_files.io.RunLogHandler"


def _fit_with_checkpoints(folder: Path, steps: int) -> None:
    from toys import base_attack

    from advwm.attacks import NoRegularizer, Uniform, UniformDomains, Universal
    from advwm.attacks.module import WatermarkAttack

    victim = LinearVictim("lin", 1.0)
    module = WatermarkAttack([victim], aggregator=Uniform(), domains=UniformDomains(), regularizer=NoRegularizer(),
                             attack=base_attack("pgd", 0.01, iterations=steps), scope=Universal(), eps=0.05,
                             image_size=4, batch_size=1)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      plugins=[AtomicCheckpointIO()],
                      callbacks=[ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0, every_n_train_steps=1)])
    trainer.fit(module, datamodule=TensorFaces(torch.zeros(1, 3, 4, 4), batch_size=1, repeats=steps))


def test_a_checkpoint_write_that_dies_midway_leaves_the_previous_last_ckpt_intact(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    monkeypatch.setattr(torch, "save", broken_serializer(torch.save, 3))  # steps 1 and 2 save, step 3 dies
    with pytest.raises(RuntimeError, match="mid-write"):
        _fit_with_checkpoints(tmp_path, steps=4)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 and checkpoint["advwm_iteration"] == 2
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_every_run_writes_its_checkpoints_through_the_atomic_checkpoint_io(tmp_path: Path) -> None:
    import hydra

    for trainer_choice in ("default", "ddp"):
        cfg = compose_run(tmp_path, ["+victims=[stargan]", f"trainer={trainer_choice}", "trainer.accelerator=cpu"])
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False)
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO), trainer_choice


@pytest.mark.slow
@pytest.mark.parametrize(("full", "written"), [
    ("images/stargan.png", True),       # after the evaluation: the numbers are kept
    ("watermark.pt", False),            # at the end of crafting
    ("checkpoints/last.ckpt", False),   # mid-run
])
def test_a_disk_full_during_a_run_stops_it_and_leaves_only_whole_files(tmp_path: Path, monkeypatch, full: str,
                                                                       written: bool) -> None:
    monkeypatch.setattr(advwm.run_files.io, "_open_stream", filling(full))
    with pytest.raises(io.DiskFullError, match=f"disk full: no space left to write {tmp_path / full}"):
        craft(compose_run(tmp_path, TINY))
    files = assert_whole(tmp_path)
    assert full not in files
    assert ("metrics.json" in files) == written
    if written:
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["steps"] == 2 and "sr_mask/stargan" in metrics
        assert load_watermark(tmp_path / "watermark.pt").tensor.shape == (3, 32, 32)


@pytest.mark.slow
def test_the_cli_says_disk_full_in_one_line_and_keeps_the_evaluation(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "tests/full_disk.py", "images/stargan.png", *TINY, "logger=csv",
                             "metrics=fast", f"hydra.run.dir={tmp_path}"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: disk full: no space left to write {tmp_path / 'images' / 'stargan.png'} (")
    assert last.endswith("free some space there, or write runs elsewhere (paths.log_dir=<folder on another disk>)")
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2
    assert not (tmp_path / "images" / "stargan.png").exists()
    assert_whole(tmp_path)
    assert last in (tmp_path / "craft.log").read_text()


# ---- a real full disk: a small tmpfs (needs root and mount; skipped where that is impossible, e.g. in CI) ----------

def _mount_tmpfs(folder: Path, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True, timeout=1800)
    except OSError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True, timeout=1800, check=False)


def _run_into(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "advwm.run", *TINY, "logger=csv", "metrics=fast",
                           f"hydra.run.dir={folder / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)


def _used(folder: Path) -> int:
    usage = os.statvfs(folder)
    return (usage.f_blocks - usage.f_bfree) * usage.f_frsize


@pytest.mark.slow
def test_a_disk_full_before_the_run_starts_is_one_line_too(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, 64 << 10)
    try:
        with pytest.raises(OSError) as full:  # fill it up
            with (disk / "filler").open("wb") as filler:
                while True:
                    filler.write(b"x" * 4096)
                    filler.flush()
        assert full.value.errno == errno.ENOSPC
        result = _run_into(disk)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: disk full: no space left to write {disk / 'run' / '.advwm.lock'} (0 B free on that disk): "
            "free some space there, or write runs elsewhere (paths.log_dir=<folder on another disk>)")
        assert "Traceback" not in result.stderr
        assert [p.name for p in (disk / "run").iterdir()] == [".advwm.lock"]  # Hydra wrote nothing: it never started
    finally:
        _unmount(disk)


@pytest.mark.slow
def test_a_real_full_disk_after_the_evaluation_keeps_metrics_json_and_says_so_in_one_line(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, 8 << 20)  # first, room for everything: how much does the run take, and its grid?
    try:
        assert _run_into(disk).returncode == 0
        grid = (disk / "run" / "images" / "stargan.png").stat().st_size
        used = _used(disk)
    finally:
        _unmount(disk)
    page = os.sysconf("SC_PAGE_SIZE")
    grid_pages = -(-grid // page) * page
    assert grid_pages >= 4 * page  # else the margin below cannot tell "before the grid" from "the grid"
    _mount_tmpfs(disk, used - grid_pages // 2)  # everything but half of the grid fits
    try:
        result = _run_into(disk)
        run = disk / "run"
        assert result.returncode == 1, result.stderr[-3000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: disk full: no space left to write {run / 'images' / 'stargan.png'} (")
        assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
        files = assert_whole(run)
        assert "metrics.json" in files and "images/stargan.png" not in files
        assert json.loads((run / "metrics.json").read_text())["steps"] == 2
        assert load_watermark(run / "watermark.pt").tensor.shape == (3, 32, 32)
    finally:
        _unmount(disk)
