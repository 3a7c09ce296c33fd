"""The weights tool: where each victim's official checkpoint comes from, whether a file fits, and a fetcher.

    python -m advwm.weights list                       # every victim: source, file, container, size, default path
    python -m advwm.weights check                      # check the files present at their default paths
    python -m advwm.weights check stargan /data/G.ckpt # a victim's default file, or any file (victim guessed)
    python -m advwm.weights fetch stargan              # download, verify and move into place (direct URLs only)

Default paths follow `conf/paths/default.yaml`: `<weights_dir>/<victim>/<file>` with `weights_dir` =
`<project root>/weights` (the root: `$ADVWM_ROOT`, else the advwm checkout; see `advwm.project`);
`--weights-dir` overrides it. Checks compare keys and shapes with the full-size official network, built on
the meta device (no memory, no time); `--arch key=value` changes the architecture (values are YAML;
`encoder.channels=[8,16]` sets a nested value). Files are read with the runtime's safe loader
(`torch.load(weights_only=True)`): a pickle that would run code is refused.
Exit status: 0 all good, 1 a problem (printed), 2 a usage error.

One module per job: `paths` (default locations), `layout` (containers, the expected keys and shapes),
`check` (a file against a layout), `fetch` (download, verify, install: pooch does the download, the hash
check and the archive extraction), `cli` (the commands), `errors` (ToolError).
"""

from advwm.weights.check import CheckResult, Comparison, check_file, compare
from advwm.weights.cli import build_parser, main
from advwm.weights.errors import ToolError
from advwm.weights.fetch import fetch
from advwm.weights.layout import CONTAINERS, GENERATOR_KEYS, Layout, container_text, layout, parse_arch
from advwm.weights.paths import default_path, weights_dir

__all__ = [
    "CONTAINERS", "GENERATOR_KEYS", "CheckResult", "Comparison", "Layout", "ToolError", "build_parser", "check_file",
    "compare", "container_text", "default_path", "fetch", "layout", "main", "parse_arch", "weights_dir",
]
