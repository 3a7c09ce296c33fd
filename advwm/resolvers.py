"""OmegaConf resolvers used by the configs (registered when `advwm.run` is imported).

- `${advwm.sqlite:path}`: an SQLite URL for an Optuna study whose folder is created first (SQLite
  does not create folders).
- `${advwm.keys:${victims}}`: the chosen victims' names joined by "-" (names a study per victim set, so
  searches over different victim sets never share a study).
- `${advwm.study_seed:seed,storage,study}`: `seed` plus the number of trials the study already holds,
  so a resumed search stays reproducible without replaying the trials it already ran.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def sqlite_url(path: str) -> str:
    file = Path(path).expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def joined_keys(node: DictConfig | None) -> str:
    return "-".join(str(k) for k in (node or {}).keys()) or "none"


def study_seed(seed: int, storage: str, study_name: str) -> int:
    import optuna

    try:
        done = len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet
        done = 0
    return int(seed) + done


def register() -> None:
    """Idempotent: safe to call from the entry point and from tests."""
    for name, function in (("advwm.sqlite", sqlite_url), ("advwm.keys", joined_keys), ("advwm.study_seed", study_seed)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register()
