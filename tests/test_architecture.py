"""Structure that keeps data flowing one way: config -> craft -> engine -> aggregator -> victims -> metrics."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ADVWM = Path(__file__).resolve().parents[1] / "advwm"


def modules_loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules if m.startswith('advwm'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=1800,
                         cwd=ADVWM.parent)
    return set(out.stdout.split())


def test_the_data_package_needs_nothing_from_the_victims_package() -> None:
    loaded = modules_loaded_by("advwm.data")
    assert not any(m.startswith("advwm.victims") for m in loaded), sorted(loaded)


def test_nothing_compares_scope_names_or_dispatches_on_the_aggregators_type() -> None:
    """The scope and the aggregator are objects that answer; nobody in the engine, the callbacks or the pipeline
    asks which one they are (watermark.pt's readers do compare the scope the *file* records)."""
    offenders = []
    engine = [*(ADVWM / "attacks").rglob("*.py"), *(ADVWM / "callbacks").rglob("*.py"), ADVWM / "pipeline.py"]
    for path in engine:
        text = path.read_text()
        for pattern in (r"scope\s*[!=]=\s*[\"']", r"isinstance\([^)]*aggregator", r"\.variant\b"):
            offenders += [f"{path.relative_to(ADVWM)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not offenders, offenders
