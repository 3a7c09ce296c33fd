"""The min-norm point of a convex hull of vectors: MGDA's weights (Sener & Koltun 2018; CDMAA section 3.3).

Shared by the cross-model aggregator (victims' gradients) and the cross-domain mode (conditions'
gradients). Written here rather than taken from a library because it only needs the J x J Gram matrix
(J = 2..6 victims or conditions), where a tiny exact Frank-Wolfe beats a general QP solver's overhead,
and because its result is checked against an exact QP in tests/test_aggregators.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["min_norm_weights", "min_norm_weights_batched"]


def _two_point(v11: float, v12: float, v22: float) -> float:
    """argmin_{gamma in [0,1]} ||gamma v1 + (1 - gamma) v2||^2 from inner products:
    gamma = clip(((v2 - v1) . v2) / ||v1 - v2||^2, 0, 1); identical vectors give 0.5."""
    denom = v11 - 2.0 * v12 + v22
    if denom <= 0.0:
        return 0.5
    return min(max((v22 - v12) / denom, 0.0), 1.0)


def _min_norm_from_gram(gram: Tensor, max_iter: int = 250, tol: float = 1e-8) -> Tensor:
    """Frank-Wolfe with exact line search on the simplex for min alpha^T G alpha (G float64 [J, J]).

    A Frank-Wolfe step moves towards the vertex e_t with the smallest (G alpha)_t; its exact line search is
    the two-point min-norm problem between w = sum alpha_j g_j and g_t, so only inner products are needed.
    Plain Frank-Wolfe converges sublinearly (weights still off by ~1e-2 after 250 iterations on ordinary
    instances), so we also take away steps (Lacoste-Julien & Jaggi 2015: move weight off the worst vertex
    of the support when that gap is larger), which converge linearly on the simplex.
    """
    j = gram.shape[0]
    if j == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    if j == 2:
        gamma = _two_point(float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1]))
        return torch.tensor([gamma, 1.0 - gamma], dtype=gram.dtype, device=gram.device)
    g = gram.cpu().tolist()  # tiny J x J problem: plain Python floats beat tensor overhead
    alpha = [1.0 / j] * j
    for _ in range(max_iter):
        g_alpha = [sum(g[r][c] * alpha[c] for c in range(j)) for r in range(j)]
        norm2 = sum(a * ga for a, ga in zip(alpha, g_alpha, strict=True))  # ||w||^2
        t = min(range(j), key=g_alpha.__getitem__)
        support = [i for i in range(j) if alpha[i] > 0.0]
        v = max(support, key=g_alpha.__getitem__)
        fw_gap = norm2 - g_alpha[t]
        away_gap = g_alpha[v] - norm2
        if fw_gap >= away_gap:
            # segment between w and g_t: new alpha = gamma * alpha + (1 - gamma) * e_t
            gamma = _two_point(norm2, g_alpha[t], g[t][t])
            new_alpha = [gamma * a for a in alpha]
            new_alpha[t] += 1.0 - gamma
        else:
            # away step: alpha + s (alpha - e_v), s in [0, alpha_v / (1 - alpha_v)], exact minimiser
            if alpha[v] >= 1.0:
                break
            s_max = alpha[v] / (1.0 - alpha[v])
            d_g_alpha = norm2 - g_alpha[v]  # d^T G alpha with d = alpha - e_v
            d_g_d = norm2 - 2.0 * g_alpha[v] + g[v][v]
            s = s_max if d_g_d <= 0.0 else min(max(-d_g_alpha / d_g_d, 0.0), s_max)
            new_alpha = [(1.0 + s) * a for a in alpha]
            new_alpha[v] -= s
            if s == s_max:
                new_alpha[v] = 0.0  # drop the vertex exactly
        new_alpha = [max(a, 0.0) for a in new_alpha]
        total = sum(new_alpha)
        new_alpha = [a / total for a in new_alpha]
        change = sum(abs(a - b) for a, b in zip(new_alpha, alpha, strict=True))
        alpha = new_alpha
        if change < tol:
            break
    return torch.tensor(alpha, dtype=gram.dtype, device=gram.device)


def min_norm_weights(grads: Tensor, max_iter: int = 250, tol: float = 1e-8) -> Tensor:
    """alpha [J] on the simplex minimising ||sum_j alpha_j g_j||^2 for grads [J, D] (MGDA's min-norm point).

    Computed in float64 on the Gram matrix; returned in ``grads``' floating dtype.
    """
    if grads.dim() != 2:
        raise ValueError(f"grads must be [J, D], got shape {tuple(grads.shape)}")
    g = grads.detach().to(torch.float64)
    alpha = _min_norm_from_gram(g @ g.T, max_iter=max_iter, tol=tol)
    out_dtype = grads.dtype if grads.is_floating_point() else torch.float32
    return alpha.to(out_dtype)


def min_norm_weights_batched(grads: Tensor, max_iter: int = 250, tol: float = 1e-8) -> Tensor:
    """Row-wise ``min_norm_weights``: grads [P, J, D] -> weights [P, J] (one min-norm problem per row)."""
    if grads.dim() != 3:
        raise ValueError(f"grads must be [P, J, D], got shape {tuple(grads.shape)}")
    g = grads.detach().to(torch.float64)
    grams = torch.bmm(g, g.transpose(1, 2))
    alphas = torch.stack([_min_norm_from_gram(gram, max_iter=max_iter, tol=tol) for gram in grams])
    out_dtype = grads.dtype if grads.is_floating_point() else torch.float32
    return alphas.to(out_dtype)
