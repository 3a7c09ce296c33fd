"""Victim generators: official-compatible networks, their conditions, and safe checkpoint loading."""

from advwm.victims.attgan import ATTGAN_ATTRS, AttGANVictim, attgan_conditions, check_attribute_conflict
from advwm.victims.base import CELEBA_ATTRIBUTES, Victim, freeze, set_mode
from advwm.victims.checkpoints import CheckpointError, CheckpointNotFoundError, load_checkpoint_into
from advwm.victims.registry import (
    CHECKPOINT_FILES,
    OFFICIAL_SOURCES,
    SPECS,
    VICTIM_NAMES,
    VictimSpec,
    build_victim,
    get_spec,
    load_generator,
)
from advwm.victims.stargan import STARGAN_ATTRS, StarGANVictim, stargan_conditions

__all__ = [
    "ATTGAN_ATTRS",
    "CELEBA_ATTRIBUTES",
    "CHECKPOINT_FILES",
    "OFFICIAL_SOURCES",
    "SPECS",
    "STARGAN_ATTRS",
    "VICTIM_NAMES",
    "AttGANVictim",
    "CheckpointError",
    "CheckpointNotFoundError",
    "StarGANVictim",
    "Victim",
    "VictimSpec",
    "attgan_conditions",
    "build_victim",
    "check_attribute_conflict",
    "freeze",
    "get_spec",
    "load_checkpoint_into",
    "load_generator",
    "set_mode",
    "stargan_conditions",
]
