"""The weights tool: where each victim's official checkpoint comes from, whether a file fits, and a fetcher.

    python -m advwm.weights list                       # every victim: source, file, container, size, default path
    python -m advwm.weights check                      # check the files present at their default paths
    python -m advwm.weights check stargan /data/G.ckpt # a victim's default file, or any file (victim guessed)
    python -m advwm.weights fetch stargan              # download, verify and move into place (direct URLs only)

Default paths follow `conf/paths/default.yaml`: `<weights_dir>/<victim>/<file>` with `weights_dir` =
`<project root>/weights` (the root: `$ADVWM_ROOT`, else the advwm checkout; see `advwm.project`);
`--weights-dir` overrides it. Checks compare keys and shapes with the full-size official network, built on
the meta device (no memory, no time), and the values (every floating-point tensor finite);
`--arch key=value` changes the architecture (values are YAML; `encoder.channels=[8,16]` sets a nested value).
Files are read with the runtime's safe loader (`torch.load(weights_only=True)`): a pickle that would run code is
refused. Exit status: 0 all good, 1 a problem (printed), 2 a usage error.

One module per job: `catalog` (each victim's file as plain facts, no torch), `paths` (default locations), `layout`
(the expected keys and shapes), `check` (a file against a layout), `fetch` (download, verify, install: pooch does
the download, the hash check and the archive extraction), `cli` (the commands), `errors` (ToolError).

The names below are imported when first used (PEP 562): `list` and `--help` answer without loading torch, which
`layout`, `check` and `fetch` need. (`advwm.weights.fetch` and `advwm.weights.layout` are the modules; their
functions of the same name: `from advwm.weights.fetch import fetch`.)
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "CheckResult": "check", "Comparison": "check", "check_file": "check", "compare": "check",
    "build_parser": "cli", "main": "cli", "ToolError": "errors", "CONTAINERS": "layout",
    "GENERATOR_KEYS": "layout", "Layout": "layout", "container_text": "layout", "parse_arch": "layout",
    "default_path": "paths", "weights_dir": "paths", "official_file": "catalog",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'advwm.weights' has no attribute {name!r}")
    return getattr(importlib.import_module(f"advwm.weights.{home}"), name)
