"""Shared test helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    """Reference fixtures: $ADVWM_FIXTURES when set, else `<repo>/../shared/fixtures` (may be absent)."""
    env = os.environ.get("ADVWM_FIXTURES")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The fixture root, skipping the test when it is not there (e.g. a user's clone without fixtures)."""
    root = fixtures_root()
    if not root.is_dir():
        pytest.skip(f"reference fixtures not found at {root} (set ADVWM_FIXTURES)")
    return root


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Tiny nets: with 2 OpenMP threads on a busy 2-core box each op waits on barriers (~100x slower).

    Use with `pytestmark = pytest.mark.usefixtures("single_thread")` in a module of tiny-network tests.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
