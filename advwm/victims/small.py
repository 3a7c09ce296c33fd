"""The smallest architecture of each victim that still runs every code path (32 px, random weights).

The tests, `experiments/bench.py --tiny` and `experiments/gpu_check.sh --dry-run` use them to exercise the real
networks in seconds; they say nothing about protection. One table, so the tests and the dry runs cannot drift.
"""

from __future__ import annotations

from typing import Any

SMALL_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "stargan": {"conv_dim": 8, "repeat_num": 2},
    "aggan": {"conv_dim": 8, "repeat_num": 2},
    "attgan": {"enc_dim": 8, "dec_dim": 8, "enc_layers": 3, "dec_layers": 3},
    "stgan": {"conv_dim": 8, "n_layers": 3, "shortcut_layers": 2},
    "ugatit": {"ngf": 8, "n_blocks": 1, "light": True},
    "hisd": {"style_dim": 8, "noise_dim": 4, "encoder": {"channels": [8, 16]}, "decoder": {"channels": [16, 8]},
             "translators": {"channels": [8, 8]}, "extractors": {"channels": [8, 16, 16]},
             "mappers": {"pre_channels": [8, 8], "post_channels": [8, 8]}},
}


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def _flatten(prefix: str, arch: dict[str, Any]) -> list[str]:
    overrides: list[str] = []
    for key, value in arch.items():
        if isinstance(value, dict):
            overrides += _flatten(f"{prefix}.{key}", value)
        else:
            overrides.append(f"{prefix}.{key}={_override_value(value)}")
    return overrides


def small_overrides(name: str) -> list[str]:
    """Hydra overrides giving victim `name` its small architecture, e.g. victims.stargan.arch.conv_dim=8."""
    return _flatten(f"victims.{name}.arch", SMALL_ARCHITECTURES[name])
