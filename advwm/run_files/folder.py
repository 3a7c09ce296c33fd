"""One run per run folder: a run holds an exclusive lock on its folder while it works.

Why: two runs writing into one folder (the same `hydra.run.dir`, or two multiruns in one sweep folder) used to
overwrite each other's watermark and metrics, interleave their CSV logs, and both exit 0. Now the second one
stops at once with one line naming the folder and the run that holds it, before it writes anything there.

The lock is `fcntl.flock` on `<run>/.advwm.lock`. The kernel releases it when the holding process ends,
however it ends (SIGKILL included), so resuming a killed or a finished run in its own folder needs nothing
(`hydra.run.dir=<run> ckpt_path=<run>/checkpoints/last.ckpt`). The file stays behind and says who held it
last (pid, host, start time); its content is informational only. On NFS, Linux emulates flock with the
server's byte-range locks, so runs on different machines exclude each other too.

Where it is taken: for a single run by the Hydra callback `RunFolderLock` (conf/hydra/default.yaml) before
Hydra writes `.hydra/` and the log; for every run (each job of a multirun too) by `craft()` before its first
write (a no-op when this process holds the lock already). DDP worker processes other than rank 0 share the folder
of the rank-0 process and take no lock.

    with run_folder.exclusive(Path("outputs/craft/runs/x")):
        ...  # RunFolderBusy if another process works there

One `checkpoints/last.ckpt` per folder, always the newest run's: a run in a folder that holds an earlier run's
checkpoint must resume from it (`checkpoint_in_folder_problem`), else it stops before writing anything there (it
used to write `last-v1.ckpt` beside the killed run's `last.ckpt`, which the resume command then picked up). On SLURM
a requeued job resumes from its folder's newest checkpoint by itself (`requeue_checkpoint`).

A folder this process made and nothing but Hydra and the lock wrote into (a run stopped by a user error before any
work) is removed again by `discard_untouched`, so a typo leaves no folder that the report would count as a failed
run. "Made by this process": the lock's `acquire` made it, or it is a job folder inside a multirun folder that
`RunFolderLock.on_multirun_start` made (Hydra's launcher then made the job folders in this process). A folder that
existed before (`hydra.run.dir=<yours>`), one in another process's multirun folder, or one holding anything else
(checkpoints, metrics, a search trial's trial.json) is never removed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from advwm.run_files import io

LOCK_NAME = ".advwm.lock"
DISK_FULL_ADVICE = "free some space there, or write runs elsewhere (paths.log_dir=<folder on another disk>)"
# Environment variables that mark a worker of a distributed run (non-zero: not the process that holds the lock).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")

HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"  # Lightning's SLURM requeue checkpoints, in the run folder (default_root_dir)
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"

_held: dict[Path, int] = {}  # folder -> the open lock file descriptor
_made: set[Path] = set()  # folders (run folders, multirun folders) this process created
HYDRA_FILES = ".hydra"  # Hydra's own record of the run (config.yaml, hydra.yaml, overrides.yaml)
CONFIG_FILE = "config.yaml"  # advwm's resolved config, its first write (advwm.pipeline)
MULTIRUN_FILE = "multirun.yaml"  # what Hydra writes into a multirun folder before its first job


class RunFolderError(RuntimeError):
    """The run folder cannot be used (not writable, or another run works there); the message is one line."""


class RunFolderBusy(RunFolderError):
    """Another process holds the run folder's lock."""


def secondary_process() -> bool:
    """True in a distributed worker whose rank is not 0: it writes into the folder rank 0 has locked."""
    return any(os.environ.get(name, "0").strip() not in ("", "0") for name in RANK_VARIABLES)


def _key(folder: str | os.PathLike) -> Path:
    return Path(folder).expanduser().resolve()


def unwritable_message(folder: Path, error: OSError) -> str:
    if io.is_disk_full(error):
        return f"{io.disk_full_message(folder / LOCK_NAME)}: {DISK_FULL_ADVICE}"
    reason = error.strerror or type(error).__name__
    lock = folder / LOCK_NAME
    if folder.is_dir() and (lock.is_dir() or os.path.lexists(lock)):  # the folder is fine: its lock file is not
        what = "is a folder, not advwm's lock file" if lock.is_dir() else f"cannot be opened ({reason})"
        return (f"the run folder's lock file {lock} {what}: remove it (it holds nothing a run needs) or choose "
                "another run folder with hydra.run.dir=<folder>")
    return (f"cannot write the run folder {folder} ({reason}): choose a writable place with hydra.run.dir=<folder> "
            "or paths.log_dir=<folder>")


def _holder(handle: int) -> str:
    """Who holds the lock, from the lock file's content: 'pid 12 on host, since 2026-01-02 10:00:00'."""
    try:
        info: dict[str, Any] = json.loads(os.pread(handle, 65536, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _describe_self(handle: int) -> None:
    """Write this process into the lock file (pid, host, start time, command: what a second run will be told).

    Unbuffered writes on the descriptor: a full disk fails here, not again later when a buffer is flushed."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)}
    os.ftruncate(handle, 0)
    os.pwrite(handle, (json.dumps(info) + "\n").encode(), 0)


def acquire(folder: str | os.PathLike) -> bool:
    """Lock `folder` (created if missing) for this process; False when this process holds it already.

    Raises `RunFolderBusy` when another process holds it and `RunFolderError` when it cannot be written.
    Temporary files a killed writer left there (`advwm.run_files.io`) are removed once the lock is held.
    """
    key = _key(folder)
    if key in _held:
        return False
    existed = os.path.lexists(key)
    try:
        key.mkdir(parents=True, exist_ok=True)
        if not existed:
            _made.add(key)
        handle = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise RunFolderError(unwritable_message(key, error)) from error
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(handle)
        os.close(handle)
        raise RunFolderBusy(f"run folder {key} is in use by another run ({holder}): wait for it to finish, or give "
                            "this run its own folder (leave hydra.run.dir unset for a new one, or choose another)"
                            ) from None
    except OSError as error:  # e.g. ENOLCK: a network file system without locking
        os.close(handle)
        raise RunFolderError(f"cannot lock the run folder {key} ({error.strerror}): use a local folder "
                             "(hydra.run.dir=<folder> or paths.log_dir=<folder>)") from error
    try:
        _describe_self(handle)
    except OSError as error:  # a disk already full: Hydra's own files would fail next, with a traceback
        os.close(handle)
        raise RunFolderError(unwritable_message(key, error)) from error
    _held[key] = handle
    io.remove_temporaries(key)
    return True


def release(folder: str | os.PathLike) -> None:
    """Give the lock up (a no-op when this process does not hold it)."""
    handle = _held.pop(_key(folder), None)
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)


def held(folder: str | os.PathLike) -> bool:
    return _key(folder) in _held


def made_here(folder: str | os.PathLike) -> bool:
    """True when this process created `folder`, or the multirun folder it is a job folder of."""
    key = _key(folder)
    return key in _made or key.parent in _made


def untouched(folder: Path, log_name: str) -> bool:
    """Nothing in `folder` but Hydra's record, the lock, the run's log and advwm's config.yaml."""
    allowed = {HYDRA_FILES, LOCK_NAME, log_name, CONFIG_FILE}
    try:
        return all(entry.name in allowed for entry in folder.iterdir())
    except OSError:
        return False


def discard_untouched(folder: str | os.PathLike, log_name: str) -> bool:
    """Remove `folder` when this process made it, holds its lock and nothing but Hydra, the lock, the log and the
    config is in it (a run stopped before any work); True if removed. Log handlers writing into it are closed. The
    multirun folder it is a job of goes too when this process made it and nothing but Hydra's multirun.yaml is
    left (the first job stopped)."""
    key = _key(folder)
    if secondary_process() or key not in _held or not made_here(key) or not untouched(key, log_name):
        return False
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == key:
            root.removeHandler(handler)
            handler.close()
    try:
        shutil.rmtree(key)
        sweep = key.parent  # a multirun folder this process made, now holding only Hydra's multirun.yaml: gone too
        if sweep in _made and {entry.name for entry in sweep.iterdir()} <= {MULTIRUN_FILE}:
            shutil.rmtree(sweep)
    except OSError:
        return not key.exists()
    return True


@contextmanager
def exclusive(folder: str | os.PathLike) -> Iterator[None]:
    """Hold `folder`'s lock for the block; released at its end only if this block took it."""
    taken = False if secondary_process() else acquire(folder)
    try:
        yield
    finally:
        if taken:
            release(folder)


def _stop(error: Exception) -> None:
    """A Hydra callback's way to stop the run with one line: Hydra turns a callback's exceptions into warnings
    and carries on, so only SystemExit stops it (HYDRA_FULL_ERROR=1 prints the traceback first)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error)
    raise SystemExit(f"error: {error}") from None


def folder_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoints runs left in `folder`: `checkpoints/*.ckpt` and Lightning's SLURM `hpc_ckpt_<n>.ckpt`."""
    root = Path(folder).expanduser()
    return sorted([*(root / "checkpoints").glob("*.ckpt"), *root.glob(HPC_CHECKPOINTS)])


def on_slurm() -> bool:
    """True in a SLURM job step, as Lightning decides it (its SLURM support, requeueing included, is then on)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def requeue_checkpoint(folder: str | os.PathLike) -> Path | None:
    """On SLURM, the checkpoint a requeued job resumes from when it names none: the newest (most iterations, then
    the latest written) of Lightning's `hpc_ckpt_<n>.ckpt` and `checkpoints/last.ckpt`, once the job is a requeued
    one (an hpc checkpoint is there, or SLURM_RESTART_COUNT > 0). None elsewhere."""
    from advwm.run_files.resume import checkpoint_iteration

    if not on_slurm():
        return None
    root = Path(folder).expanduser()
    hpc = sorted(root.glob(HPC_CHECKPOINTS))
    restarted = os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")
    candidates = [p for p in [*hpc, root / LAST_CHECKPOINT] if p.is_file()] if hpc or restarted else []
    if not candidates:
        return None
    return max(candidates, key=lambda p: (checkpoint_iteration(p) or -1, p.stat().st_mtime_ns))


def checkpoint_in_folder_problem(folder: str | os.PathLike, ckpt_path: Any) -> str | None:
    """A run in a folder holding an earlier run's checkpoint must resume from one of them (one line, else None)."""
    from advwm.run_files.resume import checkpoint_iteration
    from advwm.run_files.signals import resume_command

    root = Path(folder).expanduser()
    found = folder_checkpoints(root)
    if not found:
        return None
    if ckpt_path is not None and Path(str(ckpt_path)).expanduser().resolve() in {p.resolve() for p in found}:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    iteration = checkpoint_iteration(newest)
    held = f"{newest.relative_to(root)}" + (f" (iteration {iteration})" if iteration is not None else "")
    try:  # the earlier run's overrides, while Hydra has not replaced them yet (a single run's folder lock)
        earlier = [str(o) for o in OmegaConf.load(root / ".hydra" / "overrides.yaml")]
    except Exception:  # noqa: BLE001  (missing, unreadable or not a list: the command shows a placeholder)
        earlier = ["<its overrides>"]
    command = resume_command(earlier, root, newest)
    return (f"run folder {root} holds {held} of an earlier run: resume that run ({command}), or give this run its "
            f"own folder (leave hydra.run.dir unset, or choose another), or move {newest} away first")


class RunFolderLock(Callback):
    """Hydra callback: lock a single run's folder before Hydra writes `.hydra/` and the log into it; check that a
    multirun's folder can be created. (Each job of a multirun is locked by `craft()` when it starts.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not secondary_process():
            folder = str(config.hydra.run.dir)
            try:
                acquire(folder)
                ckpt_path = config.get("ckpt_path")
                if ckpt_path is None and requeue_checkpoint(folder) is not None:
                    return  # a requeued SLURM job: craft() resumes it
                problem = checkpoint_in_folder_problem(folder, ckpt_path)
                if problem:
                    release(folder)
                    raise RunFolderError(problem)
            except RunFolderError as error:
                _stop(error)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = _key(str(config.hydra.sweep.dir))
        if not os.path.lexists(folder):
            _made.add(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            _stop(RunFolderError(unwritable_message(folder, error).replace("hydra.run.dir", "hydra.sweep.dir")))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(str(config.hydra.run.dir))
