"""The composed config, checked before any work: every problem is named in one line with what to choose instead.

Why: values that cannot work used to fail late and far from their cause: `eps=0` or `attack.iterations=0` ran
for nothing, `attack.step_size=nan` ended in a non-finite loss that blamed the victim's checkpoint, `seed=abc` was a
traceback after the victims were built, a `ckpt_path` that is not there or not a checkpoint was a Lightning
traceback, and `image_size=90` with StarGAN crashed in the evaluation after the whole crafting (StarGAN returns
88x88 images for 90x90 inputs).

Three stages, so that each problem is found as early as what it needs allows:
- `value_problems(cfg, reference)` needs no torch: ranges (`eps`, counts, step sizes), choices (`weights`,
  `trainer.precision`, ...), the objective, missing weight files, and the type of every value a person set,
  judged against `reference` (the config of the same group choices without the person's values: a key that is a
  whole number there must be one here). `advwm.preflight` runs it before Hydra makes a run folder or torch loads.
- `check_config(cfg)` adds what needs torch (`ckpt_path` must be an advwm checkpoint) and runs in every run.
- `check_image_size(victims, size)` runs right after the victims are built (before any face is read): it feeds
  each victim one blank image of the configured size, so it knows what every victim accepts without rules written
  down per network, and when a size does not fit it tries nearby multiples of 2, 4, 8, ... 64 to say which
  multiple the victim needs.

    check_config(cfg)            # ConfigValueError: "eps=0: choose a value in (0, 1] ..."
    check_image_size([stargan], 90)  # "image_size=90 does not fit victim stargan (...): choose a multiple of 4, ..."
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from advwm.errors import ConfigError
from advwm.weights.catalog import official_file

if TYPE_CHECKING:
    import torch

# key -> the smallest value it may take (integers); a missing key or null is not checked (the group has no such key).
COUNTS: dict[str, int] = {
    "image_size": 1,
    "data.batch_size": 1,
    "data.eval_batch_size": 1,
    "data.n_craft": 1,
    "data.n_eval": 1,
    "data.num_workers": 0,
    "data.center_crop": 1,
    "attack.iterations": 1,
    "trainer.max_epochs": 1,
    "checkpoint_every": 1,
    "metrics.every_n_steps": 0,
    "seed": 0,
}
LARGEST_SEED = 2**32 - 1  # numpy's seeds (Lightning's seed_everything) are 32-bit
LARGEST_PROBED_MULTIPLE = 64  # image sizes: multiples of 2, 4, ... this are tried to name the one a victim needs

# The values a choice may take, where the code that reads it accepts a fixed set (tests/test_validation.py checks
# each set against the code's own constant, so they cannot drift). `*` stands for a victim's name.
WEIGHT_MODES = ("checkpoint", "random", "auto")
PRECISIONS = ("32-true", "32", "bf16-mixed")  # = advwm.victims.execution.PRECISIONS
CHOICES: dict[str, tuple[str, ...]] = {
    "weights": WEIGHT_MODES,
    "victim_size": ("official", "small"),  # advwm.project.VICTIM_SIZES
    "victims.*.weights": WEIGHT_MODES,
    "scope.batch_reduction": ("sign_mean", "mean"),  # advwm.attacks.scopes.BATCH_REDUCTIONS
    "scope.fused_step": ("mean", "sign"),  # advwm.attacks.scopes.FUSED_STEPS
    "metrics.fid_reference": ("clean_fakes", "clean_images"),
    "data.sample": ("first", "random"),  # advwm.data.celeba.SAMPLES
    "data.partition": ("train", "val", "test"),  # advwm.data.celeba.PARTITIONS
    "victims.hisd.options.mode": ("reference", "latent", "both"),  # advwm.victims.hisd.MODES
    "victims.ugatit.options.direction": ("A2B", "B2A"),  # advwm.victims.ugatit.DIRECTIONS
}
# Keys whose default is null, and the type a value set there must have.
NULLABLE: dict[str, type] = {"ckpt_path": str, "metrics.fid_weights": str, "logger.wandb.entity": str,
                             "attack.diversity": dict, "eot": dict}
# Groups of keys a person may set to null to drop them (README: `callbacks.snapshots=null`).
DROPPABLE = ("callbacks.*",)
# What the evaluation computes per victim (and `mean` over victims), also after sharing (`robust/<transform>/...`):
# = advwm.metrics.success.SUCCESS_KINDS. Other metrics (psnr, ssim, fid, liveness, ...) are accepted as objectives
# by their first part.
SUCCESS_KINDS = ("sr_mask", "l2_mask", "ruiz", "avg_l", "attack_rate")
OTHER_METRICS = ("psnr", "ssim", "fid", "fid_count", "liveness", "empty_mask", "judged", "seconds", "steps")


class ConfigValueError(ConfigError):
    """A config value advwm cannot run with; the message (one line) names each key and what to choose."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def count_problem(key: str, value: Any, smallest: int) -> str | None:
    if _is_whole(value) and value >= smallest and (key != "seed" or value <= LARGEST_SEED):
        return None
    return f"{key}={value}: choose a whole number >= {smallest}" + (f" and <= {LARGEST_SEED}" if key == "seed" else "")


def eps_problem(value: Any) -> str | None:
    if _is_number(value) and 0 < value <= 1:
        return None
    return f"eps={value}: choose a value in (0, 1] ([-1,1] image units, 0.05 is about 6.4/255)"


def step_problem(key: str, value: Any, allow_zero: bool = False) -> str | None:
    if _is_number(value) and math.isfinite(value) and (value > 0 or (allow_zero and value == 0)):
        return None
    return f"{key}={value}: choose a finite number {'>= 0' if allow_zero else '> 0'}"


def micro_batch_problem(key: str, value: Any) -> str | None:
    if value is None or value == "auto" or (_is_whole(value) and value >= 1):
        return None
    return f"{key}={value}: choose auto, null (all at once) or a whole number >= 1"


def max_steps_problem(value: Any) -> str | None:
    """trainer.max_steps: -1 (no limit: trainer.max_epochs decides) or a whole number of attack iterations >= 1."""
    if value is None or (_is_whole(value) and (value == -1 or value >= 1)):
        return None
    return f"trainer.max_steps={value}: choose a whole number >= 1, or -1 for no limit"


def precision_problem(precision: object) -> str | None:
    """trainer.precision the attack cannot run correctly (the message of `advwm.victims.execution.check_precision`)."""
    if str(precision) in PRECISIONS:
        return None
    return (f"trainer.precision={precision} is not supported by the attack: use 32-true (default) or "
            "bf16-mixed (bf16 autocast of the victims; the perturbation stays fp32)")


def choice_problem(key: str, value: Any, choices: Sequence[str]) -> str | None:
    if isinstance(value, str) and value in choices:
        return None
    close = difflib.get_close_matches(str(value), choices, n=1)
    return (f"{key}={value}: choose {' | '.join(choices)}" + (f" (did you mean {key}={close[0]}?)" if close else ""))


# ---- every leaf a person set, by type ------------------------------------------------------------------------

def is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, raw value) of every leaf of a plain container (`OmegaConf.to_container(resolve=False)`);
    a dict or a list is a leaf only where it is empty or a list (lists are values, not groups of keys)."""
    if isinstance(node, Mapping) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def groups_of_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """The dotted key of every non-empty mapping inside a plain container (`attack.optimizer`, `victims.stargan`)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(value, Mapping) and value:
                dotted = f"{prefix}.{key}" if prefix else str(key)
                yield dotted
                yield from groups_of_keys(value, dotted)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if _is_whole(value):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "dict"
    return "none" if value is None else "str"


# expected kind -> (kinds accepted, what to choose)
ACCEPTED: dict[str, tuple[tuple[str, ...], str]] = {
    "bool": (("bool",), "true or false"),
    "int": (("int",), "a whole number"),
    "float": (("int", "float"), "a number"),
    "list": (("list",), "a list, e.g. [a,b]"),
    "dict": (("dict",), "its keys (key.subkey=value), not one value"),
    "str": (("str", "int", "float", "bool"), "a text"),
}


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


SIZED_VALUE = "${advwm.size:"  # conf/victims: ${advwm.size:<official>,<small>} (advwm.project.victim_size_value)


def type_problems(cfg: DictConfig, reference: DictConfig, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Each value of `cfg` whose type differs from the same key's default in `reference` (the config composed from
    the same group choices without the person's values): `seed=abc`, `metrics.fid=yes`, `attack.iterations=2.5`."""
    plain = OmegaConf.to_container(reference, resolve=False)
    default = dict(leaves(plain))
    default.update({key: {"": None} for key in groups_of_keys(plain)})  # a group of keys there: not one value here
    for key, value in list(default.items()):
        if isinstance(value, str) and value.startswith(SIZED_VALUE):  # a victim's architecture: the size's value
            chosen = OmegaConf.select(reference, key)
            default[key] = OmegaConf.to_container(chosen) if isinstance(chosen, ListConfig) else chosen
    problems = []
    for key, value in leaves(OmegaConf.to_container(cfg, resolve=False)):
        if key in skip or is_interpolation(value) or key.startswith("hydra.") or key.endswith("._target_"):
            continue
        expected = _kind(default[key]) if key in default else None
        if expected == "none":
            nullable = NULLABLE.get(key)
            expected = None if nullable is None else {str: "str", dict: "dict"}[nullable]
        if expected is None or value is None and (
                key in NULLABLE or default.get(key) is None or any(fnmatch.fnmatchcase(key, p) for p in DROPPABLE)):
            continue
        accepted, what = ACCEPTED[expected]
        if _kind(value) not in accepted:
            problems.append(f"{key}={_shown(value)}: choose {what}")
    return problems


def choice_problems(cfg: DictConfig) -> list[str]:
    """Each value a person set (not an interpolation) outside the choices its key accepts."""
    problems = []
    for key, value in leaves(OmegaConf.to_container(cfg, resolve=False)):
        if is_interpolation(value):
            continue
        if key in ("trainer.precision", "execution.precision"):
            problem = precision_problem(value)
            problems.append(problem.replace("trainer.precision", key, 1) if problem else None)
            continue
        for pattern, choices in CHOICES.items():
            if fnmatch.fnmatchcase(key, pattern):
                problems.append(choice_problem(key, value, choices))
    return [p for p in problems if p is not None]


# ---- what the run returns, and the victims' files -------------------------------------------------------------

def objective_problem(cfg: DictConfig) -> str | None:
    """`objective` must name a metric the run computes: `<kind>/mean`, `<kind>/<victim>[/<condition>]`,
    `robust/<transform>/<kind>/...` for the five success kinds, or another metric by its first part.
    A typo found after a whole run (or a whole search) wastes it, hence before any work."""
    value = cfg.get("objective")
    if value is None:
        return None
    victims = [str(name) for name in (cfg.get("victims") or {})]
    parts = str(value).split("/")
    kind_at = 2 if parts[0] == "robust" and len(parts) > 3 else 0
    kind, rest = parts[kind_at], parts[kind_at + 1:]
    if kind in SUCCESS_KINDS and rest and (rest[0] == "mean" and len(rest) == 1 or rest[0] in victims):
        return None
    if kind_at == 0 and kind in OTHER_METRICS:
        return None
    known = [f"{k}/{who}" for k in SUCCESS_KINDS for who in ("mean", *victims)]
    close = difflib.get_close_matches(str(value), known, n=1, cutoff=0.5)
    return (f"objective={value}: not a metric this run computes: choose <metric>/mean or <metric>/<victim> with "
            f"<metric> one of {', '.join(SUCCESS_KINDS)}" + (f" (did you mean objective={close[0]}?)" if close else ""))


def resolve_weights(name: str, entry: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(checkpoint path or None, "official" | "random"), or (the path looked at, None) when the file is missing."""
    mode = str(entry.get("weights", "checkpoint"))
    if mode not in WEIGHT_MODES:
        raise ConfigValueError(f"victims.{name}.weights must be one of {WEIGHT_MODES}, got {mode!r}")
    path = entry.get("checkpoint")
    if mode == "random":
        return None, "random"
    if path is not None and Path(str(path)).expanduser().is_file():
        return str(Path(str(path)).expanduser()), "official"
    if mode == "auto":  # the demo: said once for all victims by the random-weights note
        return None, "random"
    return (None if path is None else str(path)), None


# Advice in run overrides that protect --craft says with its own options (advwm.protect.craft.in_protect_words)
RANDOM_WEIGHTS_HINT = "add weights=random for a smoke run with random victims"
CHECKPOINT_HINT = "pass victims.<name>.checkpoint"


def missing_weights_message(missing: Mapping[str, Any]) -> str:
    """One line for every victim whose official file is missing: where it was looked for, how to get it."""
    parts = []
    for name, path in missing.items():
        entry = official_file(name)
        how = f"`python -m advwm.weights fetch {name}`" if entry.url else entry.source.rstrip(".")
        parts.append(f"{name} ({path}; {how})")
    return (f"no official weights for {len(missing)} victim(s): " + "; ".join(parts) + ". Place each file there or "
            f"{CHECKPOINT_HINT}=/path/to/file (`python -m advwm.weights list` shows every file and "
            f"source), or {RANDOM_WEIGHTS_HINT}")


def weight_sources(cfg: DictConfig) -> tuple[dict[str, tuple[str | None, str]], dict[str, Any]]:
    """({victim: (checkpoint, "official" | "random")}, {victim: missing path}) for every chosen victim."""
    resolved: dict[str, tuple[str | None, str]] = {}
    missing: dict[str, Any] = {}
    for name, entry in (cfg.get("victims") or {}).items():
        path, kind = resolve_weights(str(name), entry)
        if kind is None:
            missing[str(name)] = path
        else:
            resolved[str(name)] = (path, kind)
    return resolved, missing


def victims_problem(cfg: DictConfig) -> str | None:
    if cfg.get("victims"):
        return None
    return "no victim chosen: add e.g. +victims=[stargan,attgan] (see README, 'Victims')"


# ---- all together --------------------------------------------------------------------------------------------

def value_problems(cfg: DictConfig, reference: DictConfig | None = None) -> list[str]:
    """Every problem found without torch, each a phrase naming the key and what to choose (see the module doc)."""
    problems = [victims_problem(cfg), eps_problem(cfg.get("eps"))]
    checked = {"eps", "attack.step_size"}
    for key, smallest in COUNTS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            problems.append(count_problem(key, value, smallest))
        checked.add(key)
    problems.append(step_problem("attack.step_size", OmegaConf.select(cfg, "attack.step_size", default=None)))
    problems.append(max_steps_problem(OmegaConf.select(cfg, "trainer.max_steps", default=None)))
    checked.add("trainer.max_steps")
    for name, entry in (cfg.get("victims") or {}).items():
        problems.append(step_problem(f"victims.{name}.step_scale", entry.get("step_scale", 1.0), allow_zero=True))
        problems.append(micro_batch_problem(f"victims.{name}.micro_batch", entry.get("micro_batch", "auto")))
        checked |= {f"victims.{name}.step_scale", f"victims.{name}.micro_batch"}
    problems += choice_problems(cfg)
    if reference is not None:
        problems += type_problems(cfg, reference, skip=checked)
    problems.append(objective_problem(cfg))
    return [p for p in problems if p is not None]


def config_problems(cfg: DictConfig, reference: DictConfig | None = None) -> list[str]:
    """`value_problems` and what needs torch: `ckpt_path` must be a checkpoint of an advwm run like this one."""
    from advwm.run_files.resume import checkpoint_problem  # the resume checks (torch: they read the checkpoint)

    problems = value_problems(cfg, reference)
    problems.append(checkpoint_problem(cfg.get("ckpt_path"), cfg))
    return [p for p in problems if p is not None]


def check_values(cfg: DictConfig, reference: DictConfig | None = None) -> None:
    """Raise `ConfigValueError` naming every problem found without torch (one line); then the missing weight
    files, all named at once."""
    problems = value_problems(cfg, reference)
    if problems:
        raise ConfigValueError("; ".join(problems))
    _, missing = weight_sources(cfg)
    if missing:
        raise ConfigValueError(missing_weights_message(missing))


def check_config(cfg: DictConfig) -> None:
    """Raise `ConfigValueError` naming every bad value (one line), before any work."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigValueError("; ".join(problems))


# ---- image size per victim ---------------------------------------------------------------------------------

def output_shape(victim: torch.nn.Module, size: int) -> tuple[int, ...] | str:
    """What `victim` returns for one blank [1,3,size,size] image with its first condition: a shape, or the error.

    Runs without gradients, on a copy of the random state and with the victim's buffers restored afterwards
    (StarGAN's InstanceNorm updates running statistics in train mode), so probing changes nothing a run sees.
    """
    import torch

    from advwm.data.attributes import CELEBA_ATTRIBUTES  # lazy: the data package loads torch

    device = next((p.device for p in victim.parameters()), torch.device("cpu"))
    buffers = [b.detach().clone() for b in victim.buffers()]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            labels = torch.zeros(1, len(CELEBA_ATTRIBUTES), device=device)
            condition = victim.conditions(labels)[0]
            return tuple(victim(torch.zeros(1, 3, size, size, device=device), condition).shape)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    finally:
        for buffer, saved in zip(victim.buffers(), buffers, strict=True):
            buffer.copy_(saved)


def fits(victim: torch.nn.Module, size: int) -> bool:
    return output_shape(victim, size) == (1, 3, size, size)


def needed_multiple(victim: torch.nn.Module, size: int) -> tuple[int, list[int]] | None:
    """(m, sizes): the smallest power of two m whose multiples next to `size` fit the victim, and those sizes."""
    multiple = 2
    while multiple <= LARGEST_PROBED_MULTIPLE:
        if size % multiple:  # `size` itself is not a multiple of this: try its two neighbours
            below = size - size % multiple
            near = [s for s in (below, below + multiple) if s > 0]
            if all(fits(victim, s) for s in near):
                return multiple, near
        multiple *= 2
    return None


def image_size_problem(victim: torch.nn.Module, size: int) -> str | None:
    name = getattr(victim, "name", type(victim).__name__)
    shape = output_shape(victim, size)
    if shape == (1, 3, size, size):
        return None
    what = (f"it returns {shape[-2]}x{shape[-1]} images for {size}x{size}" if isinstance(shape, tuple)
            else f"a {size}x{size} image fails: {shape[:160]}")
    found = needed_multiple(victim, size)
    advice = (f"choose a multiple of {found[0]}, e.g. {' or '.join(str(s) for s in found[1])}" if found
              else "choose another image_size (256 is what the official weights were trained at)")
    return f"image_size={size} does not fit victim {name} ({what}): {advice}"


def check_image_size(victims: Sequence[torch.nn.Module], size: int) -> None:
    """Raise `ConfigValueError` (one line) unless every victim turns a size x size image into one of that size."""
    problems = [p for p in (image_size_problem(v, int(size)) for v in victims) if p is not None]
    if problems:
        raise ConfigValueError("; ".join(problems))
