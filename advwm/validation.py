"""The composed config, checked before any work: every problem is named in one line with what to choose instead.

Why: values that cannot work used to fail late and far from their cause: `eps=0` or `attack.iterations=0` ran
for nothing, `attack.step_size=nan` ended in a non-finite loss that blamed the victim's checkpoint, a
`ckpt_path` that is not there or not a checkpoint was a Lightning traceback, and `image_size=90` with StarGAN
crashed in the evaluation after the whole crafting (StarGAN returns 88x88 images for 90x90 inputs).

`check_config(cfg)` runs before anything is built or read; `check_image_size(victims, size)` runs right after the
victims are built (before any face is read or any gradient computed): it feeds each victim one blank image of
the configured size, so it knows what every victim accepts without rules written down per network, and when a
size does not fit it tries nearby multiples of 2, 4, 8, ... 64 to say which multiple the victim needs.

    check_config(cfg)            # ConfigValueError: "eps=0: choose a value in (0, 1] ..."
    check_image_size([stargan], 90)  # "image_size=90 does not fit victim stargan (...): choose a multiple of 4, ..."
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from advwm.data.attributes import CELEBA_ATTRIBUTES
from advwm.errors import ConfigError
from advwm.run_files.resume import checkpoint_problem  # the resume signature and checkpoint checks
from advwm.victims.execution import check_precision

# key -> the smallest value it may take (integers); a missing key or null is not checked (the group has no such key).
COUNTS: dict[str, int] = {
    "image_size": 1,
    "data.batch_size": 1,
    "data.eval_batch_size": 1,
    "data.n_craft": 1,
    "data.n_eval": 1,
    "attack.iterations": 1,
    "trainer.max_epochs": 1,
    "checkpoint_every": 1,
    "metrics.every_n_steps": 0,
}
LARGEST_PROBED_MULTIPLE = 64  # image sizes: multiples of 2, 4, ... this are tried to name the one a victim needs


class ConfigValueError(ConfigError):
    """A config value advwm cannot run with; the message (one line) names each key and what to choose."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def count_problem(key: str, value: Any, smallest: int) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= smallest:
        return None
    return f"{key}={value}: choose a whole number >= {smallest}"


def eps_problem(value: Any) -> str | None:
    if _is_number(value) and 0 < value <= 1:
        return None
    return f"eps={value}: choose a value in (0, 1] ([-1,1] image units, 0.05 is about 6.4/255)"


def step_problem(key: str, value: Any, allow_zero: bool = False) -> str | None:
    if _is_number(value) and math.isfinite(value) and (value > 0 or (allow_zero and value == 0)):
        return None
    return f"{key}={value}: choose a finite number {'>= 0' if allow_zero else '> 0'}"


def micro_batch_problem(key: str, value: Any) -> str | None:
    if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return f"{key}={value}: choose auto, null (all at once) or a whole number >= 1"


def precision_problem(precision: object) -> str | None:
    """trainer.precision the attack cannot run correctly (`advwm.victims.execution.check_precision`)."""
    try:
        check_precision(precision)
    except ConfigError as error:
        return str(error)
    return None


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of the composed config, each a phrase naming the key and what to choose."""
    problems = [eps_problem(cfg.get("eps"))]
    for key, smallest in COUNTS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            problems.append(count_problem(key, value, smallest))
    problems.append(step_problem("attack.step_size", OmegaConf.select(cfg, "attack.step_size", default=None)))
    for name, entry in (cfg.get("victims") or {}).items():
        problems.append(step_problem(f"victims.{name}.step_scale", entry.get("step_scale", 1.0), allow_zero=True))
        problems.append(micro_batch_problem(f"victims.{name}.micro_batch", entry.get("micro_batch", "auto")))
    problems.append(precision_problem(OmegaConf.select(cfg, "trainer.precision", default="32-true")))
    problems.append(checkpoint_problem(cfg.get("ckpt_path"), cfg))
    return [p for p in problems if p is not None]


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
