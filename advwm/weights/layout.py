"""The expected layout of each victim's file: its container, and the network's keys and shapes (meta device)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from torch import nn

from advwm.victims.registry import VictimSpec, get_spec
from advwm.weights.catalog import FILES
from advwm.weights.errors import ToolError, one_line

TRACKED = "num_batches_tracked"

# How each official file holds the generator (the runtime loader unwraps these; see victims/checkpoints.py).
CONTAINERS: dict[str, str] = {name: entry.container for name, entry in FILES.items()}
# Container keys that each hold a generator of the victim's architecture, all checked when present.
GENERATOR_KEYS: dict[str, tuple[str, ...]] = {"ugatit": ("genA2B", "genB2A")}


def container_text(spec: VictimSpec) -> str:
    if spec.name in CONTAINERS:
        return CONTAINERS[spec.name]
    if not spec.container_keys:
        return "bare state_dict"
    return "{" + ", ".join(repr(k) for k in spec.container_keys) + ": state_dict}"


# ---- the expected layout ------------------------------------------------------------------------------
def parse_arch(items: Sequence[str] | None) -> dict[str, Any]:
    """`['conv_dim=8', 'encoder.channels=[8,16]']` -> {'conv_dim': 8, 'encoder': {'channels': [8, 16]}}."""
    arch: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--arch expects key=value, got {item!r}")
        value = yaml.safe_load(text) if text.strip() else None
        parts = [p.strip() for p in key.split(".")]
        node = arch
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--arch {item!r}: {part!r} is already set to a value")
            node = child
        node[parts[-1]] = value
    return arch


def accepts(spec: VictimSpec, arch: Mapping[str, Any]) -> bool:
    try:
        spec.arch(**arch)
    except TypeError:
        return False
    return True


@dataclass
class Layout:
    """The key -> shape layout of a victim's network, built on the meta device."""

    victim: str
    network: str
    arch: dict[str, Any]
    shapes: dict[str, torch.Size]
    parameters: frozenset[str]
    overridden: bool = False

    @property
    def n_parameters(self) -> int:
        return sum(self.shapes[k].numel() for k in self.parameters)

    @property
    def fp32_bytes(self) -> int:
        return 4 * sum(s.numel() for k, s in self.shapes.items() if k.rsplit(".", 1)[-1] != TRACKED)

    def describe(self, extra: str = "") -> str:
        what = f"{'the' if self.overridden else 'the full-size'} {self.victim} generator ({self.network}"
        if self.overridden:
            what += ", arch " + ", ".join(f"{k}={v}" for k, v in self.arch.items())
        return what + (f"; {extra})" if extra else ")")


_LAYOUTS: dict[tuple[str, str], Layout] = {}


def layout(name: str, overrides: Mapping[str, Any] | None = None) -> Layout:
    """Keys and shapes of `name`'s network (official arch updated with `overrides`), without allocating it."""
    spec = get_spec(name)
    overrides = dict(overrides or {})
    cache_key = (name, repr(sorted(overrides.items())))
    if cache_key not in _LAYOUTS:
        try:
            arch = spec.arch(**overrides)
            with torch.device("meta"):
                network: nn.Module = spec.network_cls(**arch)
        except (TypeError, ValueError, KeyError) as err:  # unknown arch key, impossible value
            raise ToolError(f"{name}: cannot build the network with arch {overrides}: {one_line(err)}") from err
        _LAYOUTS[cache_key] = Layout(
            victim=name,
            network=type(network).__name__,
            arch=overrides,
            shapes={k: v.shape for k, v in network.state_dict().items()},
            parameters=frozenset(k for k, _ in network.named_parameters()),
            overridden=bool(overrides),
        )
    return _LAYOUTS[cache_key]


