"""Search spaces for Hydra's Optuna sweeper, defined in code because they depend on the chosen victims.

CMUA tunes one step size per victim. The victims are a multi-select config group, so the space cannot
be written as a fixed `hydra.sweeper.params` dict: the sweeper calls `suggest_step_sizes(cfg, trial)`
(its `custom_search_space` hook) for every trial instead, and the suggested values become that trial's
overrides `victims.<name>.step_scale=...`.
"""

from __future__ import annotations

from omegaconf import DictConfig


def step_size_bounds(cfg: DictConfig) -> tuple[float, float]:
    search = cfg.get("step_search") or {}
    return float(search.get("low", 0.0)), float(search.get("high", 10.0))


def suggest_step_sizes(cfg: DictConfig, trial) -> None:
    """One `victims.<name>.step_scale` per chosen victim, uniform in [step_search.low, step_search.high]."""
    victims = cfg.get("victims") or {}
    if not victims:
        raise ValueError("the step-size search needs victims: add e.g. +victims=[stargan,attgan]")
    low, high = step_size_bounds(cfg)
    for name in victims:
        trial.suggest_float(f"victims.{name}.step_scale", low, high)
