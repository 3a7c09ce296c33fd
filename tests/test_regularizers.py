"""Gradient regularisers (CDMAA §3.4) against hand computations, row by row."""

from __future__ import annotations

import pytest
import torch

from advwm.attacks.regularizers import (
    L2Regularizer,
    LogRegularizer,
    NoRegularizer,
    PenaltyRegularizer,
)

# two rows: row 0 gradient [3, 4] (norm 5) with loss 2; row 1 gradient [1, -1] with loss 0.001
GRAD = torch.tensor([[3.0, 4.0], [1.0, -1.0]]).reshape(2, 1, 1, 2)
LOSS = torch.tensor([2.0, 0.001])


def _rows(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values).reshape(2, 1, 1, 2)


def test_none_is_identity() -> None:
    torch.testing.assert_close(NoRegularizer()(GRAD, LOSS), GRAD)


def test_l2_normalises_each_row() -> None:
    s = 2**0.5
    torch.testing.assert_close(L2Regularizer()(GRAD, LOSS), _rows([[0.6, 0.8], [1 / s, -1 / s]]))
    zero = torch.zeros(2, 1, 1, 2)
    out = L2Regularizer()(zero, LOSS)
    assert torch.equal(out, zero)  # guarded: no NaN


def test_log_divides_by_the_loss() -> None:
    torch.testing.assert_close(LogRegularizer()(GRAD, LOSS), _rows([[1.5, 2.0], [1000.0, -1000.0]]))
    zero_loss = LogRegularizer()(torch.zeros(2, 1, 1, 2), torch.zeros(2))  # delta = 0: L = 0 and g = 0
    assert torch.equal(zero_loss, torch.zeros(2, 1, 1, 2))


def test_penalty_multiplies_by_clamped_loss() -> None:
    # S = 1 / max(L, zeta): row 0 * 2, row 1 * max(0.001, 1e-8) = 0.001 (the default zeta only guards L = 0)
    torch.testing.assert_close(PenaltyRegularizer()(GRAD, LOSS), _rows([[6.0, 8.0], [0.001, -0.001]]))
    torch.testing.assert_close(PenaltyRegularizer()(GRAD, torch.zeros(2)), GRAD * 1e-8)
    torch.testing.assert_close(PenaltyRegularizer(zeta=0.01)(GRAD, LOSS), _rows([[6.0, 8.0], [0.01, -0.01]]))
    torch.testing.assert_close(PenaltyRegularizer(zeta=0.1)(GRAD, LOSS), _rows([[6.0, 8.0], [0.1, -0.1]]))
    torch.testing.assert_close(PenaltyRegularizer(zeta=5.0)(GRAD, LOSS), _rows([[15.0, 20.0], [5.0, -5.0]]))


def test_scalar_loss_broadcasts_and_shape_mismatch_fails() -> None:
    torch.testing.assert_close(LogRegularizer()(GRAD, torch.tensor(4.0)), GRAD / 4.0)
    with pytest.raises(ValueError):
        LogRegularizer()(GRAD, torch.ones(3))


@pytest.mark.parametrize("zeta, ratio", [(1e-8, 4.0), (0.01, 1.0)])
def test_penalty_with_mgda_raises_losses_in_inverse_proportion_to_them(zeta: float, ratio: float) -> None:
    """CDMAA eq. 28 on a linear toy: L_j(delta) = L_j + g_j . delta with orthogonal unit gradients and losses
    (0.002, 0.008). With S_j = 1 / L_j the min-norm point equalises w . (L_j g_j), so the first-order loss
    changes are in the ratio dL_1 / dL_2 = L_2 / L_1 = 4. A zeta above both losses (0.01) scales both
    gradients alike and the ratio falls back to 1: the penalty would act like `none`."""
    from advwm.attacks.aggregators import MGDA

    grads = torch.zeros(2, 1, 1, 1, 2, dtype=torch.float64)
    grads[0, 0, 0, 0, 0] = grads[1, 0, 0, 0, 1] = 1.0  # g_1 = e_1, g_2 = e_2
    losses = torch.tensor([[0.002], [0.008]], dtype=torch.float64)
    penalty = PenaltyRegularizer(zeta=zeta)
    scaled = torch.stack([penalty(grads[j], losses[j]) for j in range(2)])
    w = MGDA().combine(scaled, losses, step=0)
    changes = [float((grads[j] * w).sum()) for j in range(2)]  # dL_j = g_j . (step * w), the step cancels
    assert changes[0] / changes[1] == pytest.approx(ratio, rel=1e-9)
