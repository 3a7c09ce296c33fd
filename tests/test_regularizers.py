"""Gradient regularisers (CDMAA §3.4) against hand computations, row by row."""

from __future__ import annotations

import pytest
import torch

from advwm.attacks.regularizers import (
    REGULARIZERS,
    L2Regularizer,
    LogRegularizer,
    NoRegularizer,
    PenaltyRegularizer,
    make_regularizer,
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
    # S = 1 / max(L, zeta): row 0 * 2, row 1 * max(0.001, 0.01) = 0.01
    torch.testing.assert_close(PenaltyRegularizer()(GRAD, LOSS), _rows([[6.0, 8.0], [0.01, -0.01]]))
    torch.testing.assert_close(PenaltyRegularizer(zeta=0.1)(GRAD, LOSS), _rows([[6.0, 8.0], [0.1, -0.1]]))
    torch.testing.assert_close(PenaltyRegularizer(zeta=5.0)(GRAD, LOSS), _rows([[15.0, 20.0], [5.0, -5.0]]))


def test_scalar_loss_broadcasts_and_shape_mismatch_fails() -> None:
    torch.testing.assert_close(LogRegularizer()(GRAD, torch.tensor(4.0)), GRAD / 4.0)
    with pytest.raises(ValueError):
        LogRegularizer()(GRAD, torch.ones(3))


def test_registry_and_factory() -> None:
    assert set(REGULARIZERS) == {"none", "l2", "log", "penalty"}
    reg = make_regularizer("penalty", zeta=0.5)
    assert isinstance(reg, PenaltyRegularizer) and reg.zeta == 0.5
    assert isinstance(make_regularizer("L2"), L2Regularizer)
    with pytest.raises(KeyError):
        make_regularizer("sqrt")
