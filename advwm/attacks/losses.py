"""The distortion objective: how far the victim's output on the protected image moves from its clean output."""

from __future__ import annotations

import torch


def distortion(fake_protected: torch.Tensor, fake_clean: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over channels and pixels: [N,C,H,W] x2 -> [N] (maximised).

    Computed in at least fp32: under bf16 autocast the victim's output is bf16, and a bf16 difference, square
    and mean over 196k entries would round the loss (and its gradient) far more than the network itself."""
    dtype = torch.promote_types(torch.promote_types(fake_protected.dtype, fake_clean.dtype), torch.float32)
    return (fake_protected.to(dtype) - fake_clean.to(dtype)).pow(2).flatten(1).mean(dim=1)


class NonFiniteLossError(FloatingPointError):
    """A victim produced NaN/inf: the run stops with one line saying where (the watermark so far is kept)."""
