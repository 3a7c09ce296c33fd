"""Shared test helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# Values a network computes (HiSD's style codes) are compared within NETWORK_RTOL of their scale (at least 1),
# everything derived from labels bit for bit. Why a tolerance: oneDNN picks its convolution kernels by the CPU
# (instruction set, cache sizes), and they sum the same products in another order, so the last bits differ
# between CPU kinds: on a 2-core Intel Xeon (AVX-512) HiSD's reference-guided style codes equal the AMD EPYC
# values the fixtures were written on to 4 decimals only (|difference| < 5e-5), while on the EPYC the difference
# is 0. The bound is twice that, and far below what a wrong condition changes: the reference face one grey level
# (1/255) brighter moves the style code by 0.011, the reference mirrored by 0.079, the wrong tag's extractor by 0.77
# (measured on the cmua_reference case `all_four`, whose style codes have scale 0.88).
NETWORK_RTOL = 1e-4


def assert_network_values_close(ours: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """`ours` equals `expected` within NETWORK_RTOL * max(1, max|expected|) (see NETWORK_RTOL: why)."""
    assert ours.shape == expected.shape and ours.dtype == expected.dtype, what
    bound = NETWORK_RTOL * max(1.0, expected.abs().max().item()) if expected.numel() else 0.0
    error = (ours - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= bound, f"{what}: max |difference| {error:.3g} > {bound:.3g}"


def network_and_label_columns(victim_name: str, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the columns a network computed, the columns taken from labels) of one condition row block.

    HiSD's row is [style code, tag]: the style comes from its extractor (reference-guided) or mapper (latent-guided)
    network, the tag is an index. Every other victim's condition is built from labels alone.
    """
    if victim_name == "hisd":
        return condition[:, :-1], condition[:, -1:]
    return condition[:, :0], condition


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
