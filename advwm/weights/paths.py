"""Where each victim's official file lives by default: `<weights_dir>/<victim>/<file>`.

`weights_dir` is `<project root>/weights` as `paths.weights_dir` in conf/paths/default.yaml; the project
root is `$ADVWM_ROOT`, else the advwm checkout (see `advwm.project`), so the answer does not depend on the
working directory. No torch here (`advwm.weights.catalog` holds the file names).
"""

from __future__ import annotations

from pathlib import Path

from advwm.project import project_root
from advwm.weights.catalog import official_file


def weights_dir(override: str | Path | None = None) -> Path:
    """`--weights-dir`, else `<project root>/weights` (`paths.weights_dir` in conf/paths/default.yaml)."""
    if override is not None:
        return Path(override).expanduser()
    return project_root() / "weights"


def default_path(name: str, root: str | Path | None = None) -> Path:
    """Where advwm looks for a victim's official file by default: `<weights_dir>/<victim>/<file>`."""
    return weights_dir(root) / name / official_file(name).checkpoint_file
