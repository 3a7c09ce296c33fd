"""Signals end a run cleanly in every phase: SIGTERM (SLURM, `timeout`, systemd, docker stop) and SIGINT (Ctrl-C) stop
it within seconds, exit status 128 + the signal's number, with one line saying what is kept and how to resume.

Why: Lightning turns SIGTERM into a SystemExit whose status is 0 at its next batch (no line, only
`watermark.partial.pt`), ignores it outside its training loop (judging carried on), and makes Ctrl-C exit status 1.

How, by phase (`phase()`; the pipeline and the callbacks say which one runs):
- *crafting* (the attack's iterations): the signal is held until the iteration in progress ends; there a checkpoint is
  written and the run stops (`IterationEnd`), so nothing crafted is lost. The same signal again, or
  `GRACE_SECONDS` without an iteration end (a large run on a CPU), stops it at once; the last checkpoint is kept.
- every other phase (starting, judging, robust judging, saving the results, a search between trials, protect): at
  once. What is finished is on disk already: every file is written atomically (`advwm.run_files.io`), and
  `watermark.pt` and a checkpoint are written the moment crafting ends, before judging.
The stop is a `RunStopped` (a BaseException, so no `except Exception` on the way swallows it); `ending_cleanly()`
turns it into its line and the exit status.

SLURM: the requeue signal of Lightning's SLURM support (`SLURMEnvironment.requeue_signal`, SIGUSR1 unless set
otherwise; conf/hydra/launcher/slurm.yaml has SLURM send it before the time limit) is held the same way: at the
iteration end Lightning's own handler writes `hpc_ckpt_<n>.ckpt` and runs `scontrol requeue`; the SIGTERM that SLURM
sends next stops the run, and the requeued job resumes from the newest checkpoint in its folder
(`advwm.run_files.folder.requeue_checkpoint`). Lightning's handler, called whenever the signal arrives, could write a
checkpoint in the middle of an iteration (a perturbation stepped for one victim of two, the step count not yet).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_SECONDS = 10.0  # crafting: the longest wait for the iteration in progress before stopping at once


class RunStopped(BaseException):  # noqa: N818  (a stop, not an error: named for what happened)
    """A signal stopped the run. `line` (filled in by whoever knows the run: the pipeline) says what is kept."""

    def __init__(self, signum: int, phase: str, at_iteration_end: bool = False) -> None:
        self.signum = int(signum)
        self.phase = phase
        self.at_iteration_end = at_iteration_end
        self.line: str | None = None
        super().__init__(f"stopped by {signal_name(signum)} while {phase}")

    @property
    def status(self) -> int:
        """The exit status a shell gives a process its signal ended: 128 + the signal's number."""
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class _State:
    phase: str = "starting"
    holding: bool = False  # crafting: a stop signal waits for the iteration end
    pending: int | None = None  # the stop signal held
    requeue_pending: int | None = None  # the requeue signal held
    requeue: Callable[[int], None] | None = None  # Lightning's SLURM requeue (saves hpc_ckpt_<n>, scontrol requeue)
    trainer: Trainer | None = None  # the trainer crafting now (its SIGTERM flag is ours to clear)
    timer: threading.Timer | None = None
    previous: dict[int, Any] = field(default_factory=dict)  # signal -> the handler before ours


_state = _State()


def _stop_handler(signum: int, frame: Any) -> None:
    if _state.trainer is not None:  # Lightning's own SIGTERM handler ran first: its flag would end the fit at the
        _state.trainer._signal_connector.received_sigterm = False  # next batch with a SystemExit of status 0
    if _state.holding and _state.pending is None:
        _state.pending = signum
        name = signal_name(signum)
        print(f"advwm: {name} received: stopping when the iteration in progress ends (a checkpoint is written there); "
              f"{name} again stops at once", file=sys.stderr, flush=True)
        _state.timer = threading.Timer(GRACE_SECONDS, _resend, (signum,))
        _state.timer.daemon = True
        _state.timer.start()
        return
    _cancel_timer()
    _state.pending = None  # delivered now
    raise RunStopped(signum, _state.phase)


def _resend(signum: int) -> None:
    """The grace period is over: the same signal again, which stops the run at once (in the main thread)."""
    os.kill(os.getpid(), signum)


def _cancel_timer() -> None:
    if _state.timer is not None:
        _state.timer.cancel()
        _state.timer = None


REQUEUED_WHILE = "judging"  # besides crafting (at an iteration end): judging may be long, saving takes seconds


def _requeue_handler(signum: int, frame: Any) -> None:
    if _state.holding:
        _state.requeue_pending = signum
    else:
        _requeue_now(signum)


def _requeue_now(signum: int) -> None:
    if _state.requeue is not None and _state.phase == REQUEUED_WHILE:  # crafting ended: its checkpoint is whole
        _state.requeue(signum)
    else:
        log.warning("%s received while %s: not requeued (the run ends by itself in seconds, or nothing is crafted "
                    "yet)", signal_name(signum), _state.phase)


def _quiet_lightning(record: logging.LogRecord) -> bool:
    """Drop Lightning's "Received SIGTERM" (the run's own line says it, with what is kept)."""
    return "Received SIGTERM" not in record.getMessage()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGINT stop the run cleanly inside the block (see the module); the handlers before it return after.
    Nested blocks and threads other than the main one (signals reach only the main thread) change nothing."""
    if not _main_thread() or _state.previous:
        yield
        return
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").addFilter(_quiet_lightning)
    for signum in STOP_SIGNALS:
        _state.previous[signum] = signal.signal(signum, _stop_handler)
    try:
        yield
    finally:
        _cancel_timer()
        for signum, handler in _state.previous.items():
            signal.signal(signum, handler)
        _state.previous.clear()
        _state.phase, _state.holding, _state.pending, _state.requeue_pending = "starting", False, None, None
        _state.trainer = None


def set_phase(name: str, holding: bool = False) -> None:
    """The run is now `name`; `holding`: a signal waits for the next `iteration_ended` (crafting). A signal held so
    far stops the run here when the new phase does not hold (crafting ended: its files are written)."""
    _state.phase = name
    _state.holding = holding
    if not holding and _state.pending is not None:
        signum, _state.pending = _state.pending, None
        _cancel_timer()
        raise RunStopped(signum, name)
    if not holding and _state.requeue_pending is not None:
        signum, _state.requeue_pending = _state.requeue_pending, None
        _requeue_now(signum)


def current_phase() -> str:
    return _state.phase


@contextmanager
def phase(name: str) -> Iterator[None]:
    """A phase that a signal ends at once (judging, saving), restoring the phase before it afterwards."""
    before, holding = _state.phase, _state.holding
    set_phase(name)
    try:
        yield
    finally:
        _state.phase, _state.holding = before, holding


@contextmanager
def slurm_requeue(trainer: Trainer) -> Iterator[None]:
    """Under Lightning's SLURM auto-requeue: its requeue signal held to the iteration end, then its own handler."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = trainer._accelerator_connector.cluster_environment  # Lightning's choice: what its handler uses
    signum = getattr(environment, "requeue_signal", None)
    if not (_main_thread() and isinstance(environment, SLURMEnvironment) and environment.auto_requeue and signum):
        yield
        return
    connector = trainer._signal_connector

    def requeue(received: int) -> None:
        log.warning("%s: writing a checkpoint and requeueing the SLURM job", signal_name(received))
        connector._slurm_sigusr_handler_fn(received, None)  # hpc_ckpt_<n>.ckpt, then `scontrol requeue <job>`

    previous = signal.signal(signum, _requeue_handler)  # Lightning sees a handler and installs none of its own
    _state.requeue = requeue
    try:
        yield
    finally:
        signal.signal(signum, previous)
        _state.requeue, _state.requeue_pending = None, None


def iteration_ended(trainer: Trainer) -> None:
    """At the end of an attack iteration: run a held requeue; stop on a held signal with a checkpoint of this iteration
    (under DDP every process stops at the same iteration: one process's signal stops them all)."""
    if _state.requeue_pending is not None and _state.requeue is not None:
        signum, _state.requeue_pending = _state.requeue_pending, None
        _state.requeue(signum)
    pending = _state.pending
    if trainer.world_size > 1:
        if not trainer.strategy.reduce_boolean_decision(pending is not None, all=False):
            return
        pending = pending or signal.SIGTERM
    elif pending is None:
        return
    _cancel_timer()
    _state.holding = False
    from advwm.run_files.checkpoints import save_last

    save_last(trainer)
    _state.pending = None
    raise RunStopped(pending, _state.phase, at_iteration_end=True)


def last_iteration(trainer: Trainer, batch_idx: int) -> bool:
    """The iteration just done is the run's last (trainer.max_steps reached, or the last batch of the last epoch)."""
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
        return True
    batches, epochs = trainer.num_training_batches, trainer.max_epochs
    return bool(trainer.should_stop) or (isinstance(batches, int) and batch_idx + 1 >= batches
                                         and epochs is not None and trainer.current_epoch + 1 >= epochs)


class IterationEnd(Callback):
    """The last callback at each attack iteration's end (the pipeline adds it after every other one: Lightning calls
    them in order, so a checkpoint written here holds the export's and the evaluation's work of the iteration):
    - crafting holds signals until here (see the module), and a held one stops the run with a checkpoint;
    - the run's last iteration writes `checkpoints/last.ckpt` here: crafting has ended, and the export writes
      watermark.pt before anything is judged. Written here, not when the fit ends, because a checkpoint from the
      fit's end says its epoch is complete: a run cut short by trainer.max_steps could not go on from it."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _state.trainer = trainer
        set_phase("crafting", holding=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        iteration_ended(trainer)
        if last_iteration(trainer, batch_idx):
            from advwm.run_files.checkpoints import save_last

            save_last(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _state.trainer = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Close the progress bars now: the run's last line (what is kept) must not be followed by a bar's."""
        _state.trainer = None
        for callback in trainer.callbacks:
            bar = getattr(callback, "_train_progress_bar", None)
            if bar is not None:
                bar.close()


_at_stop: list[Callable[[], None]] = []  # run once when a signal ends the process (e.g. a search fails its trial)


def at_stop(action: Callable[[], None]) -> None:
    """Run `action` when a signal ends the process (`exit_stopped`), before its line; registered once."""
    if action not in _at_stop:
        _at_stop.append(action)


@contextmanager
def ending_cleanly(doing: str = "starting", kept: str = "every file already written is whole",
                   go_on: str = "run the same command again") -> Iterator[None]:
    """The process's outermost block (`advwm.run`, `advwm.protect`): signals handled, and a `RunStopped` turned into
    its one line (stderr and the log) and the exit status 128 + the signal's number. `doing`, `kept`, `go_on`: the
    line for a stop outside any phase a run names (a run's own line says what it keeps). Nested blocks add nothing
    but their phase."""
    with handled(), phase(doing):
        try:
            yield
        except RunStopped as stopped:
            if stopped.line is None:
                stopped.line = (f"error: stopped by {signal_name(stopped.signum)} while {stopped.phase}: {kept}; "
                                f"{go_on}")
            exit_stopped(stopped)


def exit_stopped(stopped: RunStopped) -> NoReturn:
    """Say what a signal stopped (stderr and the log file) and exit with status 128 + its number."""
    for action in _at_stop:
        try:
            action()
        except Exception as error:  # noqa: BLE001  (the stop is the story: a failed clean-up is only logged)
            log.warning("while stopping: %s", error)
    line = stopped.line or (f"error: stopped by {signal_name(stopped.signum)} while {stopped.phase}: every file "
                            "already written is whole; run the same command again")
    from advwm.run_files.loggers import to_log_file

    to_log_file(line, logging.ERROR)
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(stopped.status) from None


def resume_command(overrides: list[str], folder: Path, checkpoint: Path | None, drop: tuple[str, ...] = ()) -> str:
    """`python -m advwm.run <overrides> ckpt_path=<checkpoint> hydra.run.dir=<folder>`, quoted for a shell; the
    overrides lose their own ckpt_path, hydra.run.dir and every key in `drop`."""
    import shlex

    skipped = ("ckpt_path", "hydra.run.dir", *drop)
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in skipped]
    extra = ([f"ckpt_path={checkpoint}"] if checkpoint is not None else []) + [f"hydra.run.dir={folder}"]
    return " ".join(["python -m advwm.run", *(shlex.quote(o) for o in [*kept, *extra])])
