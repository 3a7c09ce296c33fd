"""Victim registry: name -> network class, wrapper class, official defaults and weight source.

Adding a victim = one `VictimSpec` entry here plus its module; configs refer to victims by name only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from advwm.victims import aggan, attgan, hisd, stargan, stgan, ugatit
from advwm.victims.base import Mode, Victim, freeze, set_mode
from advwm.victims.checkpoints import checkpoint_path, load_checkpoint_into
from advwm.weights.catalog import spec_fields


@dataclass(frozen=True)
class VictimSpec:
    """Everything needed to build one victim from a config: classes, official arch, checkpoint layout."""

    name: str
    network_cls: Callable[..., nn.Module]
    victim_cls: type[Victim]
    default_arch: Mapping[str, Any]
    container_keys: tuple[str, ...]
    checkpoint_file: str
    source: str
    image_size_arch_key: str | None = None  # arch kwarg that must equal the victim's image size
    default_image_size: int = 256
    # Victim options -> container key, where an option picks the generator inside the file (U-GAT-IT's
    # direction: 'genA2B' or 'genB2A'); None = `container_keys`.
    container_key_for: Callable[[Mapping[str, Any]], str] | None = None
    # A direct download of the official file (`python -m advwm.weights fetch <name>`); None = no direct link,
    # `source` says how to get it. `url_member`: the checkpoint inside a zip/tar archive (by path, or by file
    # name when unique); `sha256`: of the downloaded bytes (the archive, if any), when known.
    url: str | None = None
    url_member: str | None = None
    sha256: str | None = None

    @property
    def official_mode(self) -> Mode:
        """'train' or 'eval', as the official inference code runs the network (owned by the wrapper class)."""
        return self.victim_cls.official_mode

    def arch(self, **overrides: Any) -> dict[str, Any]:
        """Official arch with overrides; an unknown kwarg is a TypeError naming it (typos fail loudly)."""
        accepted = set(inspect.signature(self.network_cls).parameters)
        unknown = sorted(set(overrides) - accepted)
        if unknown:
            raise TypeError(f"{self.name}: unknown arch argument(s) {unknown}; accepted: {sorted(accepted)}")
        return {**self.default_arch, **overrides}

    def containers(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The container keys to look for in a checkpoint of a victim built with these options."""
        if self.container_key_for is None:
            return self.container_keys
        return (self.container_key_for(options),)


SPECS: dict[str, VictimSpec] = {
    "stargan": VictimSpec(
        name="stargan",
        **spec_fields("stargan"),
        network_cls=stargan.Generator,
        victim_cls=stargan.StarGANVictim,
        default_arch={"conv_dim": 64, "c_dim": 5, "repeat_num": 6},
        container_keys=(),
    ),
    "attgan": VictimSpec(
        name="attgan",
        **spec_fields("attgan"),
        network_cls=attgan.Generator,
        victim_cls=attgan.AttGANVictim,
        default_arch={
            "enc_dim": 64,
            "enc_layers": 5,
            "enc_norm_fn": "batchnorm",
            "enc_acti_fn": "lrelu",
            "dec_dim": 64,
            "dec_layers": 5,
            "dec_norm_fn": "batchnorm",
            "dec_acti_fn": "relu",
            "n_attrs": 13,
            "shortcut_layers": 1,
            "inject_layers": 0,
            "img_size": 256,
        },
        container_keys=("G",),
        image_size_arch_key="img_size",
    ),
    "aggan": VictimSpec(
        name="aggan",
        **spec_fields("aggan"),
        network_cls=aggan.Generator,
        victim_cls=aggan.AGGANVictim,
        default_arch={"conv_dim": 64, "c_dim": 5, "repeat_num": 6},
        container_keys=(),
    ),
    "stgan": VictimSpec(
        name="stgan",
        **spec_fields("stgan"),
        network_cls=stgan.Generator,
        victim_cls=stgan.STGANVictim,
        default_arch={
            "attr_dim": 13,
            "conv_dim": 64,
            "n_layers": 5,
            "shortcut_layers": 3,
            "use_stu": True,
            "one_more_conv": True,
        },
        container_keys=("state_dict",),
        default_image_size=128,
    ),
    "ugatit": VictimSpec(
        name="ugatit",
        **spec_fields("ugatit"),
        network_cls=ugatit.ResnetGenerator,
        victim_cls=ugatit.UGATITVictim,
        default_arch={"input_nc": 3, "output_nc": 3, "ngf": 64, "n_blocks": 4, "img_size": 256, "light": False},
        container_keys=("genA2B",),
        image_size_arch_key="img_size",
        container_key_for=lambda options: ugatit.container_key(str(options.get("direction", "A2B"))),
    ),
    "hisd": VictimSpec(
        name="hisd",
        **spec_fields("hisd"),
        network_cls=hisd.Generator,
        victim_cls=hisd.HiSDVictim,
        default_arch={"yaml": hisd.DEFAULT_CONFIG},
        container_keys=("gen_test",),
    ),
}

VICTIM_NAMES: tuple[str, ...] = tuple(SPECS)
OFFICIAL_SOURCES: dict[str, str] = {name: spec.source for name, spec in SPECS.items()}
CHECKPOINT_FILES: dict[str, str] = {name: spec.checkpoint_file for name, spec in SPECS.items()}


def get_spec(name: str) -> VictimSpec:
    """The registry entry for `name`; unknown names list the known victims."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown victim {name!r}; known victims: {list(VICTIM_NAMES)}") from None


def load_generator(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    container_keys: Sequence[str] | None = None,
    **arch_kwargs: Any,
) -> nn.Module:
    """The bare official network (official forward signature), frozen, in its official mode.

    Random initialisation when `checkpoint` is None (tests, smoke runs); otherwise a strict, safe load.
    `container_keys` overrides the spec's (e.g. ('genB2A',) for U-GAT-IT's B->A generator).
    """
    spec = get_spec(name)
    arch = spec.arch(**arch_kwargs)
    keys = tuple(container_keys) if container_keys is not None else spec.container_keys
    if checkpoint is not None:
        checkpoint = checkpoint_path(name, checkpoint, spec.source)  # fail fast, before allocating weights
    network = spec.network_cls(**arch)
    if checkpoint is not None:
        load_checkpoint_into(name, network, checkpoint, keys, source_hint=spec.source)
    freeze(network)
    set_mode(network, spec.official_mode)
    return network


def build_victim(
    name: str,
    *,
    checkpoint: str | Path | None,
    arch: Mapping[str, Any] | None = None,
    image_size: int | None = None,
    **victim_kwargs: Any,
) -> Victim:
    """A `Victim` wrapper around `load_generator(name, checkpoint, **arch)`.

    `victim_kwargs` go to the wrapper (e.g. attrs, thres_int, test_int). For victims whose architecture
    is tied to the resolution (AttGAN's img_size), a missing arch value is taken from `image_size`.
    """
    spec = get_spec(name)
    arch_kwargs = dict(arch or {})
    size = int(image_size) if image_size is not None else None
    if spec.image_size_arch_key is not None:
        key = spec.image_size_arch_key
        if key not in arch_kwargs and size is not None:
            arch_kwargs[key] = size
        if size is None:
            size = int(arch_kwargs.get(key, spec.default_arch[key]))
    if size is None:
        size = spec.default_image_size
    for key in ("attrs", "domains"):  # OmegaConf ListConfig -> list of str
        if victim_kwargs.get(key) is not None:
            victim_kwargs[key] = [str(a) for a in victim_kwargs[key]]
    network = load_generator(name, checkpoint, container_keys=spec.containers(victim_kwargs), **arch_kwargs)
    return spec.victim_cls(network, image_size=size, **victim_kwargs)
