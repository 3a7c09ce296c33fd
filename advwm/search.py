"""Search spaces for Hydra's Optuna sweeper, defined in code because they depend on the chosen victims, and the
bookkeeping that keeps a study truthful when trials are killed.

CMUA tunes one step size per victim. The victims are a multi-select config group, so the space cannot
be written as a fixed `hydra.sweeper.params` dict: the sweeper calls `suggest_step_sizes(cfg, trial)`
(its `custom_search_space` hook) for every trial instead, and the suggested values become that trial's
overrides `victims.<name>.step_scale=...`.

Killed trials. The sweeper (hydra-optuna-sweeper 1.3.0) asks Optuna for a trial, runs it and tells the result;
a process killed in between left its trial RUNNING forever. The same hook therefore, for each trial:
- starts a heartbeat: a daemon thread of the sweeper process writes the trial's heartbeat into the study
  (`trial_heartbeat.interval` seconds apart) until the trial is finished; it dies with the process;
- marks FAIL every RUNNING trial of the study whose heartbeat is older than `trial_heartbeat.grace_period`:
  its process is gone. A trial of a live worker (several sweepers sharing one RDB study on a cluster) keeps
  beating and is never failed; a RUNNING trial without any heartbeat (a study run before this existed) is
  left alone, since nothing proves its owner is gone;
- writes `trial.json` (trial number, study, parameters) into the trial's run folder and records that folder in
  the trial's user attributes (`run_folder`), so trials and folders find each other both ways.
Stale trials are checked whenever a trial starts, so resuming a study fails the killed trial as soon as its
grace period is over. A trial stopped by SIGTERM or SIGINT is marked FAIL at once (`fail_own_trials`).

What a study optimises: the hook also records the signature of the search's settings in the study with its first
trial (`record_signature`) and refuses a trial whose settings differ; `advwm.studies` computes the signature and,
before a search starts, checks the storage and the study without loading optuna.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from advwm.errors import ConfigError
from advwm.report.sweeps import _mask_password  # the report's: user:***@host, one implementation
from advwm.run_files import io, signals
from advwm.studies import SIGNATURE_ATTR, study_difference, study_signature

log = logging.getLogger(__name__)

DEFAULT_SUBDIR = "${hydra.job.num}"  # conf/hydra/default.yaml: a multirun's run folders are <sweep dir>/<job number>
_storages: dict[tuple[str, int, int], HeartbeatStorage] = {}
_jobs_started: dict[str, int] = {}  # sweep folder -> trials handed to the launcher so far (= the next job number)
_beating: dict[int, RDBStorage] = {}  # trial id -> its storage: this process's trials with a heartbeat


def step_size_bounds(cfg: DictConfig) -> tuple[float, float]:
    search = cfg.get("step_search") or {}
    return float(search.get("low", 0.0)), float(search.get("high", 10.0))


def record_signature(cfg: DictConfig, study: optuna.study.Study) -> None:
    """Write the study's signature with its first trial; refuse a trial whose settings differ (a search started
    without advwm.run's check, e.g. from Python)."""
    current = study_signature(cfg)
    saved = study.user_attrs.get(SIGNATURE_ATTR)
    if saved is None:
        study.set_user_attr(SIGNATURE_ATTR, current)
        return
    difference = study_difference(saved, current)
    if difference:
        raise ConfigError(f"study {study.study_name!r} holds trials {difference}: give this search its own study "
                          "(study_name=...)")


def suggest_step_sizes(cfg: DictConfig, trial: optuna.trial.Trial) -> None:
    """One `victims.<name>.step_scale` per chosen victim, uniform in [step_search.low, step_search.high]; then the
    trial's heartbeat, the study's stale trials failed, and its run folder told its trial number."""
    victims = cfg.get("victims") or {}
    if not victims:
        raise ValueError("the step-size search needs victims: add e.g. +victims=[stargan,attgan]")
    low, high = step_size_bounds(cfg)
    for name in victims:
        trial.suggest_float(f"victims.{name}.step_scale", low, high)
    keep_trial(cfg, trial)


class HeartbeatStorage(RDBStorage):
    """An RDB storage with heartbeats whose staleness counts whole days.

    optuna 2.10 compares `timedelta.seconds` with the grace period, a field that wraps every 24 hours: a trial
    killed a day and ten seconds ago looked ten seconds old and stayed RUNNING. Here the age is `total_seconds()`.
    """

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models  # the schema of the pinned optuna 2.10
        from sqlalchemy import func

        assert self.heartbeat_interval is not None
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        session = self.scoped_session()
        try:
            now = session.execute(func.now()).scalar().replace(tzinfo=None)
            stale = []
            for trial in running:
                beat = models.TrialHeartbeatModel.where_trial_id(trial._trial_id, session)
                if beat is not None and (now - beat.heartbeat.replace(tzinfo=None)).total_seconds() > grace:
                    stale.append(trial._trial_id)
            return stale
        finally:
            self.scoped_session.remove()


def heartbeat_storage(url: str, interval: int, grace_period: int) -> HeartbeatStorage:
    """One storage per (url, interval, grace) in this process (each RDBStorage holds its own engine)."""
    key = (url, interval, grace_period)
    if key not in _storages:
        _storages[key] = HeartbeatStorage(url, heartbeat_interval=interval, grace_period=grace_period)
    return _storages[key]


def heartbeat_settings(cfg: DictConfig) -> tuple[int, int]:
    """(interval, grace period) in whole seconds from `trial_heartbeat` (defaults 10 and 60)."""
    node = cfg.get("trial_heartbeat") or {}
    interval, grace = int(node.get("interval", 10)), int(node.get("grace_period", 60))
    if interval < 1 or grace <= interval:
        raise ValueError(f"trial_heartbeat: interval={interval} must be >= 1 and grace_period={grace} larger")
    return interval, grace


def beat(storage: RDBStorage, trial_id: int, interval: float) -> None:
    """Record the trial's heartbeat every `interval` seconds until the trial is finished (a daemon thread's body)."""
    while True:
        try:
            if storage.get_trial(trial_id).state.is_finished():
                return
            storage.record_heartbeat(trial_id)
        except Exception as error:  # noqa: BLE001  (a locked database, a dropped connection: try again next beat)
            log.debug("heartbeat of trial id %s not recorded: %s", trial_id, error)
        time.sleep(interval)


def start_heartbeat(storage: RDBStorage, trial_id: int, interval: float) -> threading.Thread:
    storage.record_heartbeat(trial_id)  # at once: from now on the trial's owner is provably alive or gone
    _beating[trial_id] = storage
    signals.at_stop(fail_own_trials)
    thread = threading.Thread(target=beat, args=(storage, trial_id, interval), daemon=True,
                              name=f"advwm-heartbeat-{trial_id}")
    thread.start()
    return thread


def fail_own_trials() -> list[int]:
    """Mark FAIL this process's trials still RUNNING, their numbers: a signal stopped the search
    (`advwm.run_files.signals`), so the resumed study need not wait for their heartbeat to go stale."""
    failed = []
    for trial_id, storage in list(_beating.items()):
        trial = storage.get_trial(trial_id)
        if trial.state == TrialState.RUNNING and storage.set_trial_state(trial_id, TrialState.FAIL):
            failed.append(trial.number)
        _beating.pop(trial_id, None)
    return failed


def fail_stale_trials(storage: HeartbeatStorage, study_name: str) -> list[int]:
    """Mark FAIL the study's RUNNING trials whose heartbeat is older than the grace period; their numbers."""
    study_id = storage.get_study_id_from_name(study_name)
    failed = [storage.get_trial(trial_id).number for trial_id in storage.fail_stale_trials(study_id)]
    for number in failed:
        log.warning("trial %d of study %s stopped sending heartbeats (its process was killed): marked FAIL",
                    number, study_name)
    return failed


def trial_folder(cfg: DictConfig) -> Path | None:
    """The run folder of the trial about to be launched: <sweep dir>/<job number> (None for another layout)."""
    sweep = OmegaConf.select(cfg, "hydra.sweep", default=None)
    if sweep is None or OmegaConf.to_container(sweep, resolve=False).get("subdir") != DEFAULT_SUBDIR:
        return None
    sweep_dir = str(sweep.dir)
    number = _jobs_started.get(sweep_dir, 0)
    _jobs_started[sweep_dir] = number + 1
    return Path(sweep_dir) / str(number)


def keep_trial(cfg: DictConfig, trial: optuna.trial.Trial) -> None:
    """Heartbeat, stale trials, run folder: see the module docstring."""
    folder = trial_folder(cfg)
    url = OmegaConf.select(cfg, "hydra.sweeper.storage", default=None)
    study_name = trial.study.study_name
    record_signature(cfg, trial.study)
    if folder is not None:
        trial.set_user_attr("run_folder", str(folder.resolve()))
        io.save_json(folder / "trial.json", {"trial": trial.number, "study": study_name,
                                             "storage": _mask_password(str(url)) if url else None,
                                             "params": dict(trial.params)})
    if not isinstance(url, str) or url.startswith("redis"):  # in memory or Redis: nothing to resume, no heartbeat
        return
    interval, grace = heartbeat_settings(cfg)
    storage = heartbeat_storage(url, interval, grace)
    fail_stale_trials(storage, study_name)
    start_heartbeat(storage, trial._trial_id, interval)

