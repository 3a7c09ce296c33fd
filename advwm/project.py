"""Where advwm keeps its files, independent of the working directory, and the config resolvers for it.

`outputs/` and `weights/` live under the *project root*, found in this order:

1. `$ADVWM_ROOT` when set (`~` expanded);
2. the advwm checkout this package was imported from (a folder holding `conf/config.yaml` and
   `advwm/__init__.py`: `make install` installs advwm editable, so that is the repository);
3. the nearest parent of the current directory that is such a checkout;
4. else `~/advwm`.

So `python -m advwm.run ...` from any folder writes to `<root>/outputs/` and reads `<root>/weights/`.
Resolvers: `${advwm.root:}` (that root, used by conf/paths/default.yaml), `${advwm.run_group:<task>}`
(the W&B group: `<task>`, or `<task>/<multirun folder>` inside a multirun) and `${advwm.size:<official>,<small>}`
(a victim's architecture value for the top-level `victim_size`: conf/victims/*.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

ROOT_ENV = "ADVWM_ROOT"
FALLBACK_ROOT = Path("~/advwm")


def is_checkout(folder: Path) -> bool:
    """True for an advwm source tree: `conf/config.yaml` next to the `advwm` package."""
    return (folder / "conf" / "config.yaml").is_file() and (folder / "advwm" / "__init__.py").is_file()


def project_root(cwd: Path | None = None) -> Path:
    """The folder holding `outputs/` and `weights/` (rules in the module docstring)."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    package_checkout = Path(__file__).resolve().parents[1]
    if is_checkout(package_checkout):
        return package_checkout
    here = (cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if is_checkout(folder):
            return folder
    return FALLBACK_ROOT.expanduser()


def _run_group(task_name: str) -> str:
    from advwm.run_files.loggers import run_group  # lazy: Lightning is heavy, and only W&B needs this

    return run_group(task_name)


VICTIM_SIZES = ("official", "small")


def victim_size_value(official: Any, small: Any, *, _root_: DictConfig) -> Any:
    """`${advwm.size:<official>,<small>}`: the value for the config's `victim_size`.

    Why a resolver: `experiment=smoke` must shrink whichever victims are chosen (`+victims=[hisd]` too), and a
    preset cannot set keys of victims it does not know; each victim's file states both sizes next to each other
    (small = advwm/victims/small.py's, tests/test_configs.py keeps them equal), and a value set on the command line
    replaces the interpolation, so it still wins. An unknown size falls back to official here; validation names it.
    """
    return small if _root_.get("victim_size", "official") == "small" else official


def register_resolvers() -> None:
    """Idempotent; done on `import advwm`, so every composed config (CLI, tests, scripts) can use them."""
    for name, function in (("advwm.root", lambda: str(project_root())), ("advwm.run_group", _run_group),
                           ("advwm.size", victim_size_value)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
