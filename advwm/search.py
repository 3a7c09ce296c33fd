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
grace period is over.

What a study optimises. A study resumed with another objective (or other victims, search space, data, attack...)
used to take the new trials beside the old ones, scored two ways, and crown the best of both. Each study now
records the signature of its settings (`study_signature`: the resolved config minus the keys that may change
between invocations, STUDY_FREE_KEYS, and the searched keys) in its user attribute `advwm_signature` when its first
trial starts. `advwm.run` (`study_problem`, before any work) refuses a search whose settings differ from its
study's, in one line naming the first difference and a free study name; it also checks that the storage is a
database (`storage_problem`: not a folder, a text file or a damaged SQLite file). With random victims the search
warns that SR_mask does not move (`search_warnings`), and the closing table warns when all trials tie
(`tie_warning`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from advwm.errors import ConfigError
from advwm.report.sweeps import _mask_password  # the report's: user:***@host, one implementation
from advwm.run_files import io
from advwm.validation import is_interpolation, leaves

log = logging.getLogger(__name__)

DEFAULT_SUBDIR = "${hydra.job.num}"  # conf/hydra/default.yaml: a multirun's run folders are <sweep dir>/<job number>
_storages: dict[tuple[str, int, int], HeartbeatStorage] = {}
_jobs_started: dict[str, int] = {}  # sweep folder -> trials handed to the launcher so far (= the next job number)

SIGNATURE_ATTR = "advwm_signature"
STORAGE_KEY = "hparams_search_storage"
SQLITE_HEADER = b"SQLite format 3\x00"
# Keys a study's trials may differ in: where outputs go and how a run executes, not what its score means. fnmatch
# patterns over dotted keys (`*` also spans dots). The searched keys (victims.*.step_scale, hydra.sweeper.params)
# are left out too. Everything else is in the signature, so a new setting is covered without being listed.
STUDY_FREE_KEYS = (
    "hydra.*", "paths.*", "logger.*", "task_name", "ckpt_path", "checkpoint_every",
    "seed",  # the sampler's seed moves on with every resumed invocation anyway (resolvers.study_seed)
    "study_name", STORAGE_KEY, "trial_heartbeat.*",
    "trainer.accelerator", "trainer.devices", "trainer.strategy", "trainer.enable_progress_bar",
    "trainer.log_every_n_steps", "trainer.enable_model_summary", "trainer.num_sanity_val_steps",
    "trainer.default_root_dir", "trainer.plugins", "trainer.use_distributed_sampler", "trainer.sync_batchnorm",
    "execution.channels_last", "execution.compile", "victims.*.micro_batch", "victims.*.compile",
    "victims.*.channels_last", "callbacks.export.*", "callbacks.checkpoint.*", "callbacks.snapshots.*",
    "callbacks.progress*", "data.num_workers", "metrics.every_n_steps",
)
# Objectives that random victims leave where they are (SR_mask is 0 whatever the step sizes): every trial ties.
FLAT_WITH_RANDOM_VICTIMS = ("sr_mask", "ruiz", "attack_rate", "l2_mask")


def step_size_bounds(cfg: DictConfig) -> tuple[float, float]:
    search = cfg.get("step_search") or {}
    return float(search.get("low", 0.0)), float(search.get("high", 10.0))


# ---- what a study optimises ------------------------------------------------------------------------------------

def searched_keys(cfg: DictConfig) -> list[str]:
    """The keys a trial sets: one step_scale per victim, and whatever hydra.sweeper.params names."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    return [f"victims.{name}.step_scale" for name in (cfg.get("victims") or {})] + [str(k) for k in params]


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON (the study's user attributes) has no nan/inf
    return value


def study_signature(cfg: DictConfig) -> dict[str, Any]:
    """Dotted key -> resolved value of every setting that changes what a trial's score means (see STUDY_FREE_KEYS),
    plus the objective's direction; JSON-ready (stored in the study)."""
    free = (*STUDY_FREE_KEYS, *searched_keys(cfg))
    signature: dict[str, Any] = {}
    for key, raw in leaves(OmegaConf.to_container(cfg, resolve=False)):
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in free):
            continue
        value = raw
        if is_interpolation(raw):
            try:
                value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
            except Exception:  # noqa: BLE001  (a resolver that needs a running job: its text identifies it)
                value = raw
        signature[key] = json.loads(json.dumps(_plain(value), default=str))
    signature["hydra.sweeper.direction"] = str(OmegaConf.select(cfg, "hydra.sweeper.direction", default="maximize"))
    return signature


def study_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """The first setting the study's trials were scored with that this search changes (objective first), with how
    many others differ; None when they agree."""
    absent = "(unset)"
    keys = sorted(set(saved) | set(current), key=lambda k: (k != "objective", k != "hydra.sweeper.direction", k))
    differing = [k for k in keys if saved.get(k, absent) != current.get(k, absent)]
    if not differing:
        return None
    key = differing[0]
    more = f" (and {len(differing) - 1} other setting(s))" if len(differing) > 1 else ""
    return (f"scored with {key}={saved.get(key, absent)!r}, this search has {key}={current.get(key, absent)!r}"
            + more)


def storage_problem(url: str) -> str | None:
    """A study storage that is not a database (a folder, a text file, a damaged SQLite file), in one line."""
    shown = _mask_password(url)
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url[len("sqlite:///"):])
    if path.is_dir():
        return (f"{STORAGE_KEY}={shown}: {path} is a folder, not an SQLite file: give a file, e.g. "
                f"{STORAGE_KEY}=sqlite:///{path}/study.db")
    if not path.exists():
        if not path.parent.is_dir():
            return f"{STORAGE_KEY}={shown}: the folder {path.parent} does not exist: create it or choose another"
        return None
    try:
        with path.open("rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError as error:
        return f"{STORAGE_KEY}={shown}: cannot read {path} ({error.strerror or error}): choose another file"
    if head and head != SQLITE_HEADER:
        return (f"{STORAGE_KEY}={shown}: {path} is not an SQLite database (it starts with {head[:8]!r}): point "
                f"{STORAGE_KEY} at a study database or a new file")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            verdict = [row[0] for row in connection.execute("PRAGMA quick_check")]
        finally:
            connection.close()
    except sqlite3.Error as error:
        verdict = [str(error)]
    if verdict != ["ok"]:
        return (f"{STORAGE_KEY}={shown}: {path} is a damaged SQLite database ({'; '.join(verdict)[:120]}): restore "
                f"it from a copy, or point {STORAGE_KEY} at a new file")
    return None


def _free_name(storage: RDBStorage, name: str) -> str:
    taken = {summary.study_name for summary in storage.get_all_study_summaries()}
    number = 2
    while f"{name}-{number}" in taken:
        number += 1
    return f"{name}-{number}"


def _open_study(cfg: DictConfig) -> tuple[str, str, RDBStorage | None, int | None]:
    """(storage URL, study name, the storage or None when the study cannot exist yet, the study id or None)."""
    url, name = str(cfg[STORAGE_KEY]), str(cfg.study_name)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return url, name, None, None
    storage = RDBStorage(url)
    try:
        return url, name, storage, storage.get_study_id_from_name(name)
    except KeyError:
        return url, name, storage, None


def study_problem(cfg: DictConfig) -> str | None:
    """One line when the search cannot use its study: the storage is not a database, or the study's trials were
    scored with other settings (`study_difference`)."""
    try:
        url = str(cfg[STORAGE_KEY])
    except Exception as error:  # noqa: BLE001  (its resolver: a folder that cannot be made)
        return f"{STORAGE_KEY}: {' '.join(str(error).split())[:200]}"
    problem = storage_problem(url)
    if problem:
        return problem
    try:
        url, name, storage, study_id = _open_study(cfg)
    except Exception as error:  # noqa: BLE001  (whatever the database says: a server away, a newer schema)
        reason = " ".join(str(error).split())[:200]
        return (f"{STORAGE_KEY}={_mask_password(url)}: optuna cannot use it as a study storage "
                f"({type(error).__name__}: {reason})")
    if storage is None or study_id is None:
        return None
    try:
        saved = storage.get_study_user_attrs(study_id).get(SIGNATURE_ATTR)
        difference = study_difference(saved, study_signature(cfg)) if saved else None
        if difference is None:
            return None
        trials = len(storage.get_all_trials(study_id, deepcopy=False))
        return (f"study {name!r} ({_mask_password(url)}) holds {trials} trial(s) {difference}: mixing them would rank "
                f"trials scored two ways; give this search its own study (study_name={_free_name(storage, name)}) or "
                "search with the study's settings")
    finally:
        storage.engine.dispose()


def search_warnings(cfg: DictConfig) -> list[str]:
    """What a person should know before a search starts: an objective random victims leave flat, a study from
    before advwm recorded what it optimises."""
    lines = []
    objective = str(cfg.get("objective", "sr_mask/mean"))
    victims = cfg.get("victims") or {}
    random = [str(n) for n, e in victims.items() if str(e.get("weights")) == "random"]
    if victims and len(random) == len(victims) and objective.split("/")[0] in FLAT_WITH_RANDOM_VICTIMS:
        lines.append(f"every victim is random: objective={objective} stays where it is whatever the step sizes "
                     "(SR_mask is 0), so all trials would tie; search with objective=avg_l/mean (it moves with random "
                     "victims) or get the official weights (python -m advwm.weights list)")
    try:
        url, name, storage, study_id = _open_study(cfg)
    except Exception:  # noqa: BLE001  (study_problem said it)
        return lines
    if storage is not None:
        try:
            if study_id is not None and SIGNATURE_ATTR not in storage.get_study_user_attrs(study_id):
                trials = len(storage.get_all_trials(study_id, deepcopy=False))
                if trials:
                    lines.append(f"study {name!r} holds {trials} trial(s) from before advwm recorded what a study "
                                 f"optimises: they are taken as scored like this search (objective={objective})")
        finally:
            storage.engine.dispose()
    return lines


def tie_warning(values: Sequence[float], objective: str, random_victims: bool) -> str | None:
    """A warning when every finished trial scored the same (the search learnt nothing), with the likely reason."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if len(finite) < 2 or max(finite) != min(finite):
        return None
    why = (f": random victims leave {objective} where it is; search with objective=avg_l/mean" if random_victims
           else ": the step sizes do not move it on these faces; widen step_search or use more faces")
    return f"all {len(finite)} trials scored {objective} = {finite[0]:.4g}{why}"


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
    thread = threading.Thread(target=beat, args=(storage, trial_id, interval), daemon=True,
                              name=f"advwm-heartbeat-{trial_id}")
    thread.start()
    return thread


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

