"""Where each victim's official file lives by default: `<weights_dir>/<victim>/<file>`."""

from __future__ import annotations

import os
from pathlib import Path

from advwm.victims.registry import get_spec


def weights_dir(override: str | Path | None = None) -> Path:
    """`--weights-dir`, else `${ADVWM_ROOT:-.}/weights` as `paths.weights_dir` in conf/paths/default.yaml."""
    if override is not None:
        return Path(override).expanduser()
    return Path(os.environ.get("ADVWM_ROOT", ".")).expanduser() / "weights"


def default_path(name: str, root: str | Path | None = None) -> Path:
    """Where advwm looks for a victim's official file by default: `<weights_dir>/<victim>/<file>`."""
    return weights_dir(root) / name / get_spec(name).checkpoint_file


