"""Model-level aggregators: the min-norm solver against an exact QP, and each combiner by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from toys import base_attack

from advwm.attacks import (
    MGDA,
    CMUAFusion,
    CMUAReference,
    Iterative,
    PerImage,
    Single,
    Uniform,
    Universal,
    image_level_fusion,
    min_norm_weights,
    min_norm_weights_batched,
)


def exact_min_norm(gram: np.ndarray) -> tuple[float, np.ndarray]:
    """Exact min of a^T G a on the simplex by KKT enumeration: for every support S solve the
    equality-constrained QP [2 G_SS 1; 1^T 0][a; mu] = [0; 1] and keep the best feasible (a >= 0)."""
    j = gram.shape[0]
    best: tuple[float, np.ndarray] | None = None
    for k in range(1, j + 1):
        for support in itertools.combinations(range(j), k):
            s = list(support)
            kkt = np.zeros((k + 1, k + 1))
            kkt[:k, :k] = 2.0 * gram[np.ix_(s, s)]
            kkt[:k, k] = 1.0
            kkt[k, :k] = 1.0
            rhs = np.zeros(k + 1)
            rhs[k] = 1.0
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
            if (sol[:k] < -1e-12).any() or abs(sol[:k].sum() - 1.0) > 1e-9:
                continue
            alpha = np.zeros(j)
            alpha[s] = sol[:k]
            value = float(alpha @ gram @ alpha)
            if best is None or value < best[0]:
                best = (value, alpha)
    assert best is not None
    return best


def grid_min_norm(gram: np.ndarray, n: int = 200) -> float:
    """Brute force over the simplex grid with spacing 1/n (J <= 3)."""
    j = gram.shape[0]
    grid = itertools.product(range(n + 1), repeat=j - 1)
    points = np.array([ks for ks in grid if sum(ks) <= n], dtype=float)
    alphas = np.concatenate([points, n - points.sum(axis=1, keepdims=True)], axis=1) / n
    return float(np.einsum("ki,ij,kj->k", alphas, gram, alphas).min())


@pytest.mark.parametrize("j", [2, 3, 4, 5, 6])
def test_min_norm_weights_matches_exact_qp(j: int) -> None:
    rng = np.random.default_rng(100 + j)
    for _ in range(25):
        d = int(rng.integers(j, 40))
        # a shared component makes the optimum sit on faces of varying dimension
        g = rng.normal(size=(j, d)) + rng.uniform(0.0, 3.0) * rng.normal(size=d)
        gram = g @ g.T
        value, alpha_star = exact_min_norm(gram)
        alpha = min_norm_weights(torch.tensor(g)).numpy()
        assert alpha.shape == (j,)
        assert (alpha >= 0).all() and abs(alpha.sum() - 1.0) < 1e-9
        got = float(alpha @ gram @ alpha)
        assert got <= value * (1 + 1e-8) + 1e-12
        np.testing.assert_allclose(alpha, alpha_star, atol=1e-4)
        if j <= 3:
            # the exact solver itself against brute force: the grid can only be worse, and not by much
            grid = grid_min_norm(gram, n=400 if j == 2 else 200)
            assert value <= grid + 1e-12 and grid - value <= 1e-2 * max(value, 1.0)


def test_min_norm_point_satisfies_cdmaa_theorem_1() -> None:
    gen = torch.Generator().manual_seed(0)
    for j in range(2, 7):
        for _ in range(10):
            shared = torch.randn(50, generator=gen, dtype=torch.float64)
            g = torch.randn(j, 50, generator=gen, dtype=torch.float64) + shared
            g = g / g.norm(dim=1, keepdim=True)
            w = min_norm_weights(g) @ g
            assert (g @ w >= w @ w - 1e-6).all()
            assert w @ w > 0


def test_min_norm_two_vectors_closed_form() -> None:
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # gamma = ((g2 - g1) . g2) / ||g1 - g2||^2 = 1 / 5
    torch.testing.assert_close(min_norm_weights(g), torch.tensor([0.2, 0.8], dtype=torch.float64))
    orth = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(min_norm_weights(orth), torch.tensor([0.5, 0.5]))
    assert min_norm_weights(orth).dtype == torch.float32


def test_min_norm_collinear_identical_and_single() -> None:
    same_dir = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)  # gamma = 2 -> clipped to 1
    torch.testing.assert_close(min_norm_weights(same_dir), torch.tensor([1.0, 0.0], dtype=torch.float64))
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(min_norm_weights(opposite), torch.tensor([0.5, 0.5], dtype=torch.float64))
    three = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(min_norm_weights(three), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    identical = torch.tensor([[0.3, -0.4, 1.0]] * 3, dtype=torch.float64)
    alpha = min_norm_weights(identical)
    assert abs(float(alpha.sum()) - 1.0) < 1e-12 and (alpha >= 0).all()
    torch.testing.assert_close(alpha @ identical, identical[0])
    torch.testing.assert_close(min_norm_weights(torch.randn(1, 7)), torch.tensor([1.0]))


def test_min_norm_batched_matches_rows() -> None:
    g = torch.randn(4, 3, 20, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    batched = min_norm_weights_batched(g)
    assert batched.shape == (4, 3)
    for p in range(4):
        torch.testing.assert_close(batched[p], min_norm_weights(g[p]))


def test_mgda_combine_per_row() -> None:
    # J = 2 victims, P = 2 rows, each gradient [1, 1, 2]
    grads = torch.tensor(
        [
            [[[2.0, 0.0]], [[1.0, 0.0]]],  # victim 0: row 0, row 1
            [[[0.0, 1.0]], [[2.0, 0.0]]],  # victim 1
        ],
        dtype=torch.float64,
    ).reshape(2, 2, 1, 1, 2)
    agg = MGDA()
    out = agg.combine(grads, torch.ones(2, 2), step=0)
    # row 0: weights [0.2, 0.8] -> [0.4, 0.8]; row 1: same direction, shorter one alone -> [1, 0]
    expected = torch.tensor([[0.4, 0.8], [1.0, 0.0]], dtype=torch.float64).reshape(2, 1, 1, 2)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(agg.last_weights, torch.tensor([[0.2, 0.8], [1.0, 0.0]], dtype=torch.float64))
    assert agg.needed(3, 2) == [0, 1]


def test_uniform_iterative_single() -> None:
    grads = torch.tensor([[[1.0, 2.0]], [[3.0, -2.0]], [[5.0, 6.0]]])  # [J=3, P=1, D=2]
    losses = torch.ones(3, 1)
    torch.testing.assert_close(Uniform().combine(grads, losses, 0), torch.tensor([[3.0, 2.0]]))
    it = Iterative()
    assert [it.needed(s, 3) for s in range(5)] == [[0], [1], [2], [0], [1]]
    torch.testing.assert_close(it.combine(grads[[1]], losses[[1]], 4), grads[1])
    single = Single(index=2)
    assert single.needed(0, 3) == [2] and single.needed(7, 3) == [2]
    torch.testing.assert_close(single.combine(grads[[2]], losses[[2]], 0), grads[2])
    assert Single().needed(1, 4) == [0]
    with pytest.raises(ValueError, match="index=3"):
        Single(index=3).validate(attack=base_attack(), scope=Universal(), victims=3)
    with pytest.raises(ValueError):
        it.combine(grads, losses, 0)


def test_cmua_blend_and_image_level_fusion() -> None:
    w = torch.tensor([1.0, -2.0])
    p = torch.tensor([3.0, 2.0])
    torch.testing.assert_close(CMUAFusion().blend(w, p), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(CMUAFusion(alpha=0.25).blend(w, p), torch.tensor([2.5, 1.0]))
    with pytest.raises(ValueError, match="alpha"):
        CMUAFusion(alpha=1.5)
    grads = torch.tensor([[[[1.0, -2.0]]], [[[3.0, 0.0]]], [[[-1.0, -5.0]]]])  # [B=3, 1, 1, 2]
    fused = image_level_fusion(grads)
    assert fused.shape == (1, 1, 1, 2)
    # signs [1, -1], [1, 0], [-1, -1] -> mean [1/3, -2/3]
    torch.testing.assert_close(fused, torch.tensor([[[[1 / 3, -2 / 3]]]]))


def test_each_aggregator_says_what_it_can_drive_and_how_often_a_batch_repeats() -> None:
    """One place refuses each impossible pairing, with one line naming what to change."""
    for aggregator in (MGDA(), Uniform(), Iterative(), Single(), CMUAFusion()):
        assert aggregator.repeats(7) == 7 and aggregator.uses_random_start
    assert CMUAReference().repeats(7) == 1 and not CMUAReference().uses_random_start
    with pytest.raises(ValueError, match="cannot drive CMUA fusion"):
        CMUAFusion().validate(attack=base_attack("apgd"), scope=Universal(), victims=2)
    CMUAFusion().validate(attack=base_attack("mifgsm"), scope=PerImage(), victims=2)
    with pytest.raises(ValueError, match="scope=universal"):
        CMUAReference().validate(attack=base_attack("pgd"), scope=PerImage(), victims=2)
    for attack in (base_attack("ifgsm"), base_attack("pgd", diversity_prob=0.5)):
        with pytest.raises(ValueError, match="attack=pgd"):
            CMUAReference().validate(attack=attack, scope=Universal(), victims=2)
    CMUAReference().validate(attack=base_attack("pgd"), scope=Universal(), victims=2)
    MGDA().validate(attack=base_attack("apgd"), scope=PerImage(), victims=2)
