"""The distortion objective: how far the victim's output on the protected image moves from its clean output."""

from __future__ import annotations

import torch


def distortion(fake_protected: torch.Tensor, fake_clean: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over channels and pixels: [N,C,H,W] x2 -> [N] (maximised)."""
    return (fake_protected - fake_clean).pow(2).flatten(1).mean(dim=1)


class NonFiniteLossError(FloatingPointError):
    """A victim produced NaN/inf: the run stops with one line saying where (the watermark so far is kept)."""
