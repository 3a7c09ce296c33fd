"""What a step-size search's study optimises, and whether its storage is a database: checked before a search starts.

Why: a study resumed with another objective (or other victims, search space, data, attack, ...) used to take the
new trials beside the old ones, scored two ways, and crown the best of both; a storage that is not a database (a
folder, a text file, a damaged SQLite file) was a 252-line traceback. Each study records the signature of its
settings (`study_signature`: the resolved config minus the keys that may change between invocations,
STUDY_FREE_KEYS, and the searched keys) in its user attribute `advwm_signature` when its first trial starts
(`advwm.search.record_signature`). Before a search, `advwm.preflight` calls `study_problem`: one line naming the
storage key and what is wrong with it, or the first setting the study's trials were scored with that this search
changes, with a free study name. `search_warnings` and `tie_warning` say when the trials would tie or did.

No optuna here (about 3 s of CPU to import): the study is read from optuna's tables with SQLAlchemy.
"""

from __future__ import annotations

import fnmatch
import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from advwm.report.sweeps import _mask_password as mask_password  # the report's: user:***@host, one implementation
from advwm.validation import is_interpolation, leaves

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
    shown = mask_password(url)
    if "://" not in url:
        return (f"{STORAGE_KEY}={shown} is not a database URL: give one, e.g. {STORAGE_KEY}=sqlite:///"
                f"{Path(url).expanduser().absolute()} (a file) or postgresql://user@host/db (a cluster's database)")
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


class StudyRecord(NamedTuple):
    """What the storage says about one study (read with SQL: no optuna)."""

    exists: bool
    signature: dict[str, Any] | None
    trials: int
    names: frozenset[str]  # every study in the storage


def read_study(url: str, name: str) -> StudyRecord:
    """The study `name` in the RDB at `url`, read from optuna's tables (`studies`, `study_user_attributes`,
    `trials`: the same in optuna 2 and 3). Why not optuna: importing it takes about 3 s of CPU (matplotlib,
    scipy), which a refusal must not wait for; SQLAlchemy (which optuna uses) takes 0.2 s. A storage without
    those tables holds no study yet."""
    import sqlalchemy

    absent = StudyRecord(False, None, 0, frozenset())
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return absent
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
            if not {"studies", "study_user_attributes", "trials"} <= tables:
                return absent
            names = frozenset(row[0] for row in connection.execute(sqlalchemy.text("SELECT study_name FROM studies")))
            found = connection.execute(sqlalchemy.text("SELECT study_id FROM studies WHERE study_name = :name"),
                                       {"name": name}).fetchone()
            if found is None:
                return StudyRecord(False, None, 0, names)
            study_id = found[0]
            attribute = connection.execute(sqlalchemy.text(
                "SELECT value_json FROM study_user_attributes WHERE study_id = :id AND key = :key"),
                {"id": study_id, "key": SIGNATURE_ATTR}).fetchone()
            trials = connection.execute(sqlalchemy.text("SELECT count(*) FROM trials WHERE study_id = :id"),
                                        {"id": study_id}).scalar()
            return StudyRecord(True, json.loads(attribute[0]) if attribute else None, int(trials or 0), names)
    finally:
        engine.dispose()


def free_name(name: str, taken: frozenset[str]) -> str:
    number = 2
    while f"{name}-{number}" in taken:
        number += 1
    return f"{name}-{number}"


def study_problem(cfg: DictConfig) -> str | None:
    """One line when the search cannot use its study: the storage is not a database, or the study's trials were
    scored with other settings (`study_difference`)."""
    try:
        url = str(cfg[STORAGE_KEY])
        name = str(cfg.study_name)
    except Exception as error:  # noqa: BLE001  (its resolver: a folder that cannot be made)
        return f"{STORAGE_KEY}: {' '.join(str(error).split())[:200]}"
    problem = storage_problem(url)
    if problem:
        return problem
    try:
        record = read_study(url, name)
    except Exception as error:  # noqa: BLE001  (whatever the database says: no driver, a server away, a bad URL)
        reason = " ".join(str(error).split())[:200]
        return (f"{STORAGE_KEY}={mask_password(url)}: cannot open it as a study storage "
                f"({type(error).__name__}: {reason})")
    difference = study_difference(record.signature, study_signature(cfg)) if record.signature else None
    if difference is None:
        return None
    return (f"study {name!r} ({mask_password(url)}) holds {record.trials} trial(s) {difference}: mixing them would "
            f"rank trials scored two ways; give this search its own study (study_name={free_name(name, record.names)}) "
            "or search with the study's settings")


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
        record = read_study(str(cfg[STORAGE_KEY]), str(cfg.study_name))
    except Exception:  # noqa: BLE001  (study_problem said it)
        return lines
    if record.exists and record.signature is None and record.trials:
        lines.append(f"study {str(cfg.study_name)!r} holds {record.trials} trial(s) from before advwm recorded what a "
                     f"study optimises: they are taken as scored like this search (objective={objective})")
    return lines


def tie_warning(values: Sequence[float], objective: str, random_victims: bool) -> str | None:
    """A warning when every finished trial scored the same (the search learnt nothing), with the likely reason."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if len(finite) < 2 or max(finite) != min(finite):
        return None
    why = (f": random victims leave {objective} where it is; search with objective=avg_l/mean" if random_victims
           else ": the step sizes do not move it on these faces; widen step_search or use more faces")
    return f"all {len(finite)} trials scored {objective} = {finite[0]:.4g}{why}"


