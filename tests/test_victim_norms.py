"""The fused normalisations of U-GAT-IT and HiSD (one affine pass, for speed) against the reference formulas
written out, values and input gradients, in float64; and HiSD's edit through the network's own forward."""

from __future__ import annotations

import pytest
import torch

from advwm.victims import build_victim
from advwm.victims.hisd import _std_normalise
from advwm.victims.ugatit import ILN, adaILN

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_iln(x: torch.Tensor, rho: torch.Tensor, eps: float) -> torch.Tensor:
    """UGATIT-pytorch networks.py, as written there: rho * IN(x) + (1 - rho) * LN(x), unbiased variances."""
    in_mean, in_var = torch.mean(x, dim=[2, 3], keepdim=True), torch.var(x, dim=[2, 3], keepdim=True)
    out_in = (x - in_mean) / torch.sqrt(in_var + eps)
    ln_mean, ln_var = torch.mean(x, dim=[1, 2, 3], keepdim=True), torch.var(x, dim=[1, 2, 3], keepdim=True)
    out_ln = (x - ln_mean) / torch.sqrt(ln_var + eps)
    return rho.expand(x.shape[0], -1, -1, -1) * out_in + (1 - rho.expand(x.shape[0], -1, -1, -1)) * out_ln


def _check(fused, reference, x: torch.Tensor) -> None:
    x = x.clone().requires_grad_(True)
    y = fused(x)
    weights = torch.randn_like(y)
    (g,) = torch.autograd.grad((y * weights).sum(), x)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = reference(x_ref)
    (g_ref,) = torch.autograd.grad((y_ref * weights).sum(), x_ref)
    assert torch.allclose(y, y_ref, atol=1e-10, rtol=1e-9)
    assert torch.allclose(g, g_ref, atol=1e-10, rtol=1e-9)


def test_ugatit_adailn_and_iln_equal_the_reference_formulas() -> None:
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 7, 6) * 2 + 0.7).double()  # channels with different means: LN differs from IN
    ada = adaILN(5).double()
    ada.rho.data.uniform_(0, 1)
    gamma, beta = torch.randn(3, 5).double(), torch.randn(3, 5).double()
    _check(lambda t: ada(t, gamma, beta),
           lambda t: reference_iln(t, ada.rho, ada.eps) * gamma[:, :, None, None] + beta[:, :, None, None], x)
    iln = ILN(5).double()
    for param in (iln.rho, iln.gamma, iln.beta):
        param.data.uniform_(0, 1)
    _check(iln, lambda t: reference_iln(t, iln.rho, iln.eps) * iln.gamma + iln.beta, x)


def test_hisd_std_normalise_equals_the_reference_formula() -> None:
    """HiSD's InstanceNorm2d / AdaIN: (x - mean) / (std + eps) * weight + bias, std unbiased over H*W."""
    torch.manual_seed(1)
    x = (torch.randn(2, 4, 5, 6) * 3 - 1).double()
    weight, bias = torch.randn(2, 4, 1).double(), torch.randn(2, 4, 1).double()

    def reference(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(2, 4, 30)
        mean, std = flat.mean(-1, keepdim=True), flat.std(-1, keepdim=True)
        return ((flat - mean) / (std + 1e-5) * weight + bias).reshape(t.shape)

    _check(lambda t: _std_normalise(t, weight, bias, 1e-5), reference, x)


def test_hisd_single_tag_edit_runs_the_networks_own_forward() -> None:
    """So that victims.hisd.compile (torch.compile(network)) compiles the edit: a compiled module's other
    methods (encode/translate/decode) would run eagerly."""
    small = {"style_dim": 8, "noise_dim": 4, "encoder": {"channels": [8, 16]}, "decoder": {"channels": [16, 8]},
             "translators": {"channels": [8, 8]}, "extractors": {"channels": [8, 16, 16]},
             "mappers": {"pre_channels": [8, 8], "post_channels": [8, 8]}}
    victim = build_victim("hisd", checkpoint=None, arch=small, image_size=32)
    calls = []
    victim.network.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = victim(x, victim.conditions(torch.zeros(2, 40))[0])
    assert calls == [2] and out.shape == x.shape
