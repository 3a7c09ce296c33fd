"""Victim generators: official-compatible networks, their conditions, and safe checkpoint loading."""

from advwm.victims.aggan import AGGAN_ATTRS, AGGANVictim
from advwm.victims.attgan import ATTGAN_ATTRS, AttGANVictim, attgan_conditions, check_attribute_conflict
from advwm.victims.base import CELEBA_ATTRIBUTES, Victim, freeze, set_mode
from advwm.victims.checkpoints import CheckpointError, CheckpointNotFoundError, load_checkpoint_into
from advwm.victims.hisd import HISD_TAGS, HiSDVictim
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
from advwm.victims.stgan import STGAN_ATTRS, STGANVictim, stgan_conditions
from advwm.victims.ugatit import UGATITVictim

__all__ = [
    "AGGAN_ATTRS",
    "ATTGAN_ATTRS",
    "CELEBA_ATTRIBUTES",
    "CHECKPOINT_FILES",
    "HISD_TAGS",
    "OFFICIAL_SOURCES",
    "SPECS",
    "STARGAN_ATTRS",
    "STGAN_ATTRS",
    "VICTIM_NAMES",
    "AGGANVictim",
    "AttGANVictim",
    "CheckpointError",
    "CheckpointNotFoundError",
    "HiSDVictim",
    "STGANVictim",
    "StarGANVictim",
    "UGATITVictim",
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
    "stgan_conditions",
]
