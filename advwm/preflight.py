"""The command's config, composed and checked before Hydra makes a run folder and before torch loads.

Why: Hydra creates the run folder (and writes `.hydra/` and the log into it) before the task function runs, and
advwm's task function imported torch and Lightning (seconds of CPU, tens of seconds on a busy machine) before its
first check. So every typo took that long to answer and left a folder behind that the report counted as a failed
run, and a misspelt key got Hydra's struct error with a hint (`+attack.iteration=2`) that led to a second error.
Here, in `advwm.run`'s `cli()`, the same overrides are composed with Hydra's compose API (no run, no folder, no
torch: about 0.1 s per composition) and checked:

- composition errors become one line, with "did you mean" for a misspelt key (`attack.iteration` ->
  `attack.iterations`, difflib over the keys of the config composed without that override), for a misspelt group
  choice, and the group choice that has a key another choice lacks (`attack.optimizer.decay` -> `attack=mifgsm`);
- every value, by `advwm.validation.check_values` (ranges, choices, types judged against the same group choices'
  defaults, the objective, missing weight files);
- a multirun: every job of a basic sweep (`a=1,2 b=x,y` and the preset's `hydra.sweeper.params`, as Hydra's
  BasicSweeper splits them; at most MAX_JOBS), the base config of any other sweeper;
- a step-size search: its study storage and the study's signature (`advwm.studies.study_problem`).

What needs torch (a `ckpt_path`'s content, the image size each victim takes) is checked in the run itself.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advwm import resolvers  # noqa: F401  (registers ${advwm.sqlite:...}, ${advwm.keys:...}: the search config uses them)
from advwm.errors import ConfigError
from advwm.validation import check_values

log = logging.getLogger("advwm")

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MULTIRUN_FLAGS = ("-m", "--multirun")
MAX_JOBS = 64  # jobs of one multirun composed and checked here (each job checks itself again when it runs)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
SEARCH_HOOK = "advwm.search.suggest_step_sizes"


class PreflightError(ConfigError):
    """The command cannot run; the message (one line) says what to change."""


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def wants_hydra_itself(args: Sequence[str]) -> bool:
    """Hydra's own flags (--help, --cfg, --info, -cn, ...): Hydra answers them; nothing is run, nothing checked."""
    return any(arg.startswith("-") and arg not in MULTIRUN_FLAGS for arg in args)


def parse(overrides: Sequence[str]) -> list[Override]:
    """Hydra's parse of each override; a syntax error names the override it is in."""
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except OverrideParseException as error:
            reason = str(error).splitlines()[0]
            raise PreflightError(f"cannot read the override {text!r} ({reason}): quote values with special "
                                 "characters (\"key='a b'\"), lists as key=[a,b]; see "
                                 "https://hydra.cc/docs/advanced/override_grammar/basic/") from error
    return parsed


def is_group(override: Override) -> bool:
    """`attack=pgd`, `+victims=[a,b]`, `hydra/launcher=slurm`: a config group choice, not a value."""
    name = override.key_or_group
    return name.startswith("hydra/") or (CONF_DIR / name).is_dir()


def composed(overrides: Sequence[str]) -> DictConfig:
    """The config Hydra would give the task for these overrides, with its `hydra` node (left unresolved)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


# ---- composition errors, in one line ----------------------------------------------------------------------------

def _children(cfg: DictConfig, path: str) -> list[str]:
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in [p for p in path.split(".") if p]:
        if not isinstance(node, Mapping) or part not in node:
            return []
        node = node[part]
    return [str(k) for k in node] if isinstance(node, Mapping) else []


def choices_having(key: str) -> tuple[str, list[str]] | None:
    """(group, [choices]) of the config group whose other choices have `key` (`attack.optimizer.decay` ->
    ('attack', ['mdi2fgsm', 'mifgsm'])), read from their files."""
    group, _, rest = key.partition(".")
    folder = CONF_DIR / group
    if not rest or not folder.is_dir():
        return None
    having = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            node = OmegaConf.load(path)
        except (OSError, OmegaConfBaseException):
            continue
        if OmegaConf.select(node, rest, default="\0absent") != "\0absent":
            having.append(path.stem)
    return (group, having) if having else None


def unknown_key_message(key: str, missing_node: str, override: str, others: Sequence[str]) -> str:
    """`key` is not in the config: the closest key there ("did you mean"), or the group choice that has it."""
    value = override.split("=", 1)[1] if "=" in override else ""
    try:
        reference = composed(others)
    except HydraException:
        reference = None
    parent, _, name = missing_node.rpartition(".")
    siblings = _children(reference, parent) if reference is not None else []
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        fixed = ".".join(p for p in (parent, close[0]) if p) + key[len(missing_node):]
        return f"{key} is not a key of this config: did you mean {fixed}? ({fixed}={value})"
    having = choices_having(key)
    if having is not None:
        group, names = having
        current = OmegaConf.select(reference, f"{group}.name", default=None) if reference is not None else None
        return (f"{key} is a key of {group}={' | '.join(names)}" + (f", not of {group}={current}" if current else "")
                + f": choose {group}={names[0]} to set it")
    if re.match(r"victims\.\w+\.(arch|options)\.", key):  # constructor arguments: new ones are passed on
        return (f"{key} is not in the victim's config: add it with + if the network takes it "
                f"(+{key}={value}; an argument it does not take is refused by name)")
    where = f"{parent} has" if parent else "the top level has"
    listing = ", ".join(siblings[:20]) + (", ..." if len(siblings) > 20 else "")
    return (f"{key} is not a key of this config" + (f": {where} {listing}" if siblings else "")
            + " (`python -m advwm.run <your overrides> --cfg job` shows the whole config)")


def composition_message(error: HydraException, overrides: Sequence[str]) -> str:
    """Hydra's composition error as one line saying what to change."""
    text = str(error)
    if isinstance(error, MissingConfigException):
        found = re.search(r"Could not find '([^']+)'", text)
        wanted = found.group(1) if found else str(error.missing_cfg_file)
        group, _, choice = wanted.rpartition("/")
        options = list(error.options or [])
        if not options:
            return f"no config {wanted}: {_one_line(text.splitlines()[0])}"
        close = difflib.get_close_matches(choice, options, n=1)
        return (f"{group}={choice}: no such choice" + (f"; did you mean {group}={close[0]}?" if close else "")
                + f" ({group}: {', '.join(options)})")
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        cause = error.__cause__
        missing_node = str(getattr(cause, "full_key", None) or key)
        index = next((i for i, o in enumerate(overrides) if o.lstrip("+~").split("=", 1)[0] == key), None)
        if index is not None:
            others = [o for i, o in enumerate(overrides) if i != index]
            return unknown_key_message(key, missing_node, overrides[index], others)
    present = re.match(r"Could not append to config\. An item is already at '([^']+)'", text)
    if present:
        key = present.group(1)
        original = next((o for o in overrides if o.startswith("+") and o.lstrip("+").split("=", 1)[0] == key), key)
        return f"{key} is already a key: set it without +: {original.lstrip('+')}"
    return _one_line(text.split("\nConfig search path")[0])


def compose_checked(overrides: Sequence[str]) -> DictConfig:
    try:
        return composed(overrides)
    except HydraException as error:
        raise PreflightError(composition_message(error, overrides)) from error


# ---- the jobs of a command ---------------------------------------------------------------------------------------

def jobs(overrides: Sequence[str], multirun: bool) -> tuple[DictConfig, list[list[str]]]:
    """(the base config, each job's overrides): one job for a run; a basic sweep's jobs as BasicSweeper splits
    them (the preset's `hydra.sweeper.params` first, then the command line); another sweeper's base only."""
    parsed = parse(overrides)
    sweeps = [o for o in parsed if o.is_sweep_override()]
    plain = [text for text, o in zip(overrides, parsed, strict=True) if not o.is_sweep_override()]
    base = compose_checked(plain if sweeps else overrides)
    multirun = multirun or str(OmegaConf.select(base, "hydra.mode", default="")).endswith("MULTIRUN")
    if sweeps and not multirun:
        compose_checked(overrides)  # Hydra's own one-line error ("Ambiguous value ... add --multirun")
    if not multirun:
        return base, [list(overrides)]
    sweeper = OmegaConf.select(base, "hydra.sweeper._target_", default=None)
    if sweeper != BASIC_SWEEPER:
        return base, [plain]
    params = OmegaConf.select(base, "hydra.sweeper.params", default=None) or {}
    every = [f"{key}={value}" for key, value in params.items()] + list(overrides)
    try:
        batches = BasicSweeper.split_arguments(parse(every), None)
    except HydraException as error:
        raise PreflightError(_one_line(str(error))) from error
    return base, [list(job) for job in batches[0][:MAX_JOBS]]


def job_problem(job: Sequence[str], swept: bool, references: dict[tuple[str, ...], DictConfig]) -> None:
    """Check one job's config; `references` caches the defaults of each set of group choices (jobs share them)."""
    cfg = compose_checked(job)
    groups = tuple(text for text, o in zip(job, parse(job), strict=True) if is_group(o))
    if groups not in references:
        references[groups] = compose_checked(groups)
    reference = references[groups]
    try:
        check_values(cfg, reference)
    except ConfigError as error:
        if not swept:
            raise
        raise PreflightError(f"in the multirun's job {' '.join(job)}: {error}") from error
    except OmegaConfBaseException as error:  # an interpolation that cannot be resolved (${nope}, a resolver's error)
        where = getattr(error, "full_key", None)
        reason = str(error).splitlines()[0]
        raise PreflightError(f"{where}: {reason}" if where else reason) from error


def preflight(args: Sequence[str]) -> None:
    """Compose and check the command `python -m advwm.run <args>`; raise PreflightError (one line) to stop it."""
    if wants_hydra_itself(args):
        return
    multirun = any(arg in MULTIRUN_FLAGS for arg in args)
    overrides = [arg for arg in args if arg not in MULTIRUN_FLAGS]
    base, job_list = jobs(overrides, multirun)
    references: dict[tuple[str, ...], DictConfig] = {}
    for job in job_list:
        job_problem(job, swept=len(job_list) > 1, references=references)
    if OmegaConf.select(base, "hydra.sweeper.custom_search_space", default=None) == SEARCH_HOOK:
        from advwm.studies import search_warnings, study_problem

        problem = study_problem(base)
        if problem:
            raise PreflightError(problem)
        for line in search_warnings(base):
            print(f"warning: {line}", flush=True)
