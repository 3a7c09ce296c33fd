"""Victim registry: name -> network class, wrapper class, official defaults and weight source.

Adding a victim = one `VictimSpec` entry here plus its module; configs refer to victims by name only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from advwm.victims import attgan, stargan
from advwm.victims.base import Mode, Victim, freeze, set_mode
from advwm.victims.checkpoints import checkpoint_path, load_checkpoint_into


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


SPECS: dict[str, VictimSpec] = {
    "stargan": VictimSpec(
        name="stargan",
        network_cls=stargan.Generator,
        victim_cls=stargan.StarGANVictim,
        default_arch={"conv_dim": 64, "c_dim": 5, "repeat_num": 6},
        container_keys=(),
        checkpoint_file="200000-G.ckpt",
        source=(
            "Get the official StarGAN CelebA 256x256 5-attribute generator '200000-G.ckpt' "
            "(a bare state_dict): "
            "yunjey/stargan `bash download.sh pretrained-celeba-256x256` -> stargan_celeba_256/models/"
            "200000-G.ckpt, or the CMUA-Watermark weights release (VDIGPKU/CMUA-Watermark README, "
            "weights/stargan/)."
        ),
    ),
    "attgan": VictimSpec(
        name="attgan",
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
        checkpoint_file="weights.199.pth",
        source=(
            "Get the official AttGAN generator 'weights.199.pth' ({'G': state_dict}) of experiment "
            "256_shortcut1_inject0_none: the CMUA-Watermark weights release (VDIGPKU/CMUA-Watermark README, "
            "weights/AttGAN/ -> AttGAN/output/256_shortcut1_inject0_none/checkpoint/) or the pretrained "
            "models linked from elvisyjlin/AttGAN-PyTorch's README."
        ),
        image_size_arch_key="img_size",
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


def load_generator(name: str, checkpoint: str | Path | None = None, **arch_kwargs: Any) -> nn.Module:
    """The bare official network (official forward signature), frozen, in its official mode.

    Random initialisation when `checkpoint` is None (tests, smoke runs); otherwise a strict, safe load.
    """
    spec = get_spec(name)
    arch = spec.arch(**arch_kwargs)
    if checkpoint is not None:
        checkpoint = checkpoint_path(name, checkpoint, spec.source)  # fail fast, before allocating weights
    network = spec.network_cls(**arch)
    if checkpoint is not None:
        load_checkpoint_into(name, network, checkpoint, spec.container_keys, source_hint=spec.source)
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
    if "attrs" in victim_kwargs and victim_kwargs["attrs"] is not None:
        victim_kwargs["attrs"] = [str(a) for a in victim_kwargs["attrs"]]  # OmegaConf ListConfig -> list
    network = load_generator(name, checkpoint, **arch_kwargs)
    return spec.victim_cls(network, image_size=size, **victim_kwargs)
