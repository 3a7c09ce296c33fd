"""Model-level aggregators: how the gradients of J victims become one ascent direction.

Combiners (``sequential = False``) share ``combine(grads[J, P, ...], losses[J, P], step) -> [P, ...]``
and ``needed(step, num)``, the indices of the victims whose gradient this step uses, so the engine runs
only those backwards; ``combine`` then receives exactly those rows, in that order. CMUA fusion
(``sequential = True``) is a different loop (victims in turn, blending perturbations), driven by the
engine with ``CMUAFusion.blend`` and ``image_level_fusion``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "AGGREGATORS",
    "MGDA",
    "Aggregator",
    "CMUAFusion",
    "Iterative",
    "Single",
    "Uniform",
    "image_level_fusion",
    "make_aggregator",
    "min_norm_weights",
    "min_norm_weights_batched",
]


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


def image_level_fusion(per_image_grads: Tensor) -> Tensor:
    """CMUA image-level fusion: the batch mean of the signed per-image gradients, [B, ...] -> [1, ...].

    Signing first gives every image one vote per pixel, so a few images with large gradients cannot
    dominate the universal watermark.
    """
    return per_image_grads.sign().mean(dim=0, keepdim=True)


class Aggregator:
    """Interface of a model-level aggregator."""

    name: str = "aggregator"
    sequential: bool = False

    def needed(self, step: int, num: int) -> list[int]:
        """Indices of the victims whose gradient ``combine`` will use at this step (default: all)."""
        return list(range(num))

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        """grads [J, P, ...] (only the ``needed`` rows, in order), losses [J, P] -> direction [P, ...]."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MGDA(Aggregator):
    """Per row p, the min-norm point of the convex hull of the victims' gradients (CDMAA / Sener-Koltun).

    At the optimum w . g_j >= ||w||^2 for every j, so a small step along w does not decrease any victim's
    loss (CDMAA Theorem 1). ``last_weights`` [P, J] keeps the weights for logging.
    """

    name = "mgda"

    def __init__(self, max_iter: int = 250, tol: float = 1e-8) -> None:
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.last_weights: Tensor | None = None

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        """Min-norm combination of the J gradients, row by row."""
        num, rows = grads.shape[0], grads.shape[1]
        flat = grads.reshape(num, rows, -1).transpose(0, 1)  # [P, J, D]
        weights = min_norm_weights_batched(flat, max_iter=self.max_iter, tol=self.tol)  # [P, J]
        self.last_weights = weights.detach()
        w = weights.T.to(grads.dtype).reshape(num, rows, *([1] * (grads.dim() - 2)))
        return (w * grads).sum(dim=0)


class Uniform(Aggregator):
    """Plain mean of the victims' gradients (ablation baseline)."""

    name = "uniform"

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        return grads.mean(dim=0)


class Iterative(Aggregator):
    """One victim per step, in turn: g_{step mod J} (ablation baseline; one backward per step)."""

    name = "iterative"

    def needed(self, step: int, num: int) -> list[int]:
        return [step % num]

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        if grads.shape[0] != 1:
            raise ValueError(f"Iterative.combine expects only the needed gradient, got {grads.shape[0]}")
        return grads[0]


class Single(Aggregator):
    """Always the same victim's gradient (default the first): the single-model baseline."""

    name = "single"

    def __init__(self, index: int = 0) -> None:
        self.index = int(index)

    def needed(self, step: int, num: int) -> list[int]:
        if not 0 <= self.index < num:
            raise IndexError(f"Single(index={self.index}) with only {num} victims")
        return [self.index]

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        if grads.shape[0] != 1:
            raise ValueError(f"Single.combine expects only the needed gradient, got {grads.shape[0]}")
        return grads[0]

    def __repr__(self) -> str:
        return f"Single(index={self.index})"


class CMUAFusion(Aggregator):
    """CMUA-Watermark's two-level fusion (Huang et al., AAAI 2022); sequential, not a combiner.

    ``variant="paper"`` (default): per training step, for victim j in turn, G_j = image-level fusion
    (``image_level_fusion``) of the signed per-image gradients at the current watermark W; P_j = the base
    attack's proposal from W with victim j's step size a_j; then W <- alpha W + (1 - alpha) P_j.

    ``variant="reference"``: the behaviour of the public CMUA-Watermark code, offered to reproduce its
    published numbers: the blend happens at every inner attack iteration, each call restarts the inner
    attack from noise, and the per-victim "step size" scales the whole displacement (P_j - W) rather than
    the inner step.

    The engine runs either loop; this class only supplies ``blend`` and the configuration.
    """

    name = "cmua"
    sequential = True
    VARIANTS = ("paper", "reference")

    def __init__(self, alpha: float = 0.5, variant: str = "paper") -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {self.VARIANTS}, got {variant!r}")
        self.alpha = float(alpha)
        self.variant = variant

    def blend(self, W: Tensor, P: Tensor) -> Tensor:
        """Model-level fusion: alpha * W + (1 - alpha) * P."""
        return self.alpha * W + (1.0 - self.alpha) * P

    def combine(self, grads: Tensor, losses: Tensor, step: int) -> Tensor:
        raise TypeError("CMUAFusion is sequential: use blend() and image_level_fusion(), not combine()")

    def __repr__(self) -> str:
        return f"CMUAFusion(alpha={self.alpha}, variant={self.variant!r})"


AGGREGATORS: dict[str, type[Aggregator]] = {
    "mgda": MGDA,
    "uniform": Uniform,
    "iterative": Iterative,
    "single": Single,
    "cmua": CMUAFusion,
}


def make_aggregator(name: str, **kwargs: Any) -> Aggregator:
    """Build an aggregator by registry name (case-insensitive)."""
    key = name.lower()
    if key not in AGGREGATORS:
        raise KeyError(f"unknown aggregator {name!r}; choose from {sorted(AGGREGATORS)}")
    return AGGREGATORS[key](**kwargs)
