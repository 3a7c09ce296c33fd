"""Base attacks (optimizers) and input diversity, checked against hand-computed steps."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from advwm.attacks.diversity import InputDiversity
from advwm.attacks.steps import (
    APGD,
    IFGSM,
    MIFGSM,
    PGD,
    BaseAttack,
    apgd_checkpoints,
)


def _param(values: list[float], shape: tuple[int, ...]) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64).reshape(shape))


def _set_grad(p: torch.nn.Parameter, values: list[float]) -> None:
    p.grad = torch.tensor(values, dtype=p.dtype).reshape(p.shape)


# --------------------------------------------------------------------------------------------- I-FGSM / PGD
def test_ifgsm_sign_step_and_projection() -> None:
    p = _param([0.045, -0.045, 0.0, 0.02], (1, 1, 2, 2))
    opt = IFGSM([p], eps=0.05, step_size=0.01)
    _set_grad(p, [1.0, -1.0, 0.0, -3.0])
    opt.step()
    # 0.055 -> clamped 0.05; -0.055 -> -0.05; zero gradient -> no move; 0.02 - 0.01
    expected = torch.tensor([0.05, -0.05, 0.0, 0.01], dtype=torch.float64).reshape(1, 1, 2, 2)
    torch.testing.assert_close(p.detach(), expected)


def test_ifgsm_many_steps_stay_in_ball_and_skip_params_without_grad() -> None:
    p = _param([0.0, 0.0], (1, 1, 1, 2))
    q = _param([0.3, 0.3], (1, 1, 1, 2))
    opt = IFGSM([p, q], eps=0.05, step_size=0.02, start_radius=0.0)
    opt.initialize()
    assert torch.equal(p.detach(), torch.zeros_like(p)) and torch.equal(q.detach(), torch.zeros_like(q))
    q.data.fill_(0.3)
    for _ in range(10):
        _set_grad(p, [2.0, -0.5])
        opt.step()
    torch.testing.assert_close(p.detach().flatten(), torch.tensor([0.05, -0.05], dtype=torch.float64))
    assert torch.equal(q.detach(), torch.full_like(q, 0.3))  # q never had a gradient


def test_propose_does_not_write_and_project_clamps() -> None:
    p = _param([0.01, 0.04], (1, 1, 1, 2))
    opt = IFGSM([p], eps=0.05, step_size=0.02)
    proposal = opt.propose(p, torch.tensor([[[[1.0, 1.0]]]], dtype=torch.float64), 0.03)
    torch.testing.assert_close(proposal.flatten(), torch.tensor([0.04, 0.05], dtype=torch.float64))
    torch.testing.assert_close(p.detach().flatten(), torch.tensor([0.01, 0.04], dtype=torch.float64))
    clamped = opt.project(torch.tensor([-1.0, 0.02, 0.07]))
    torch.testing.assert_close(clamped, torch.tensor([-0.05, 0.02, 0.05]))


def test_pgd_random_start_in_ball_and_seeded() -> None:
    p = torch.nn.Parameter(torch.zeros(2, 3, 8, 8))
    opt = PGD([p], eps=0.05, step_size=0.01)
    opt.initialize(generator=torch.Generator().manual_seed(0))
    first = p.detach().clone()
    assert first.abs().max() <= 0.05
    assert first.abs().max() > 0.04  # 384 uniform draws: one is near the edge
    assert first.std() > 0.02  # roughly U(-eps, eps): std = eps / sqrt(3) ~ 0.029
    opt.initialize(generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.detach(), first)


def test_bim_starts_in_a_tiny_ball_pgd_in_the_whole_eps_ball() -> None:
    """BIM (I-FGSM) and PGD differ only in the start: x + U(-0.001, 0.001) vs x + U(-eps, eps)."""
    p = torch.nn.Parameter(torch.zeros(4, 3, 16, 16))
    bim = IFGSM([p], eps=0.05, step_size=0.01)
    bim.initialize(generator=torch.Generator().manual_seed(0))
    tiny = p.detach().clone()
    assert 0.0009 < tiny.abs().max() <= 0.001 and tiny.abs().min() < 1e-5
    PGD([p], eps=0.05, step_size=0.01).initialize(generator=torch.Generator().manual_seed(0))
    assert torch.allclose(p.detach(), tiny * 50, atol=1e-8)  # same uniform draws, scaled to eps = 50 radii
    MIFGSM([p], eps=0.05, step_size=0.01).initialize(generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.detach(), tiny)  # MI-FGSM is I-FGSM with momentum: the same tiny start
    IFGSM([p], eps=0.05, step_size=0.01, start_radius=0.0).initialize()
    assert torch.equal(p.detach(), torch.zeros_like(p))  # the textbook x0 = x
    IFGSM([p], eps=0.0005, step_size=0.01).initialize(generator=torch.Generator().manual_seed(0))
    assert p.detach().abs().max() <= 0.0005  # never outside a smaller eps-ball
    assert APGD([p], eps=0.05, n_iter=4).param_groups[0]["start_radius"] is None  # APGD: the whole ball
    with pytest.raises(ValueError, match="start_radius"):
        IFGSM([p], start_radius=-1.0)


def test_base_attack_builds_its_optimizer_over_the_perturbation() -> None:
    import functools

    p = torch.nn.Parameter(torch.zeros(1, 3, 2, 2))
    pgd = BaseAttack(PGD, step_size=0.02, iterations=3).build([p], eps=0.04, schedule_length=99)
    assert isinstance(pgd, PGD) and pgd.param_groups[0]["eps"] == 0.04 and pgd.param_groups[0]["lr"] == 0.02
    mifgsm = BaseAttack(functools.partial(MIFGSM, decay=0.5), step_size=0.01).build([p], eps=0.05, schedule_length=9)
    assert isinstance(mifgsm, MIFGSM) and mifgsm.param_groups[0]["decay"] == 0.5
    apgd_recipe = BaseAttack(functools.partial(APGD, rho=0.5), step_size=0.01, iterations=10)
    apgd = apgd_recipe.build([p], eps=0.05, schedule_length=40)
    assert isinstance(apgd, APGD) and apgd.n_iter == 40 and apgd.rho == 0.5  # the schedule spans what it is told
    assert apgd_recipe.scheduled and not apgd_recipe.proposes and BaseAttack(PGD).proposes
    for wrong in ({"step_size": float("nan")}, {"step_size": 0.0}, {"iterations": 0}):
        with pytest.raises(ValueError, match="attack."):
            BaseAttack(PGD, **wrong)


# --------------------------------------------------------------------------------------------- MI-FGSM
def test_mifgsm_two_steps_with_per_row_l1_normalisation() -> None:
    p = _param([0.0, 0.0, 0.0, 0.0], (2, 1, 1, 2))
    opt = MIFGSM([p], eps=0.05, step_size=0.01, decay=1.0, start_radius=0.0)
    opt.initialize()
    # step 1: row 0 grad [1, -3] (L1 4) -> [0.25, -0.75]; row 1 [2, 2] (L1 4) -> [0.5, 0.5]
    _set_grad(p, [1.0, -3.0, 2.0, 2.0])
    opt.step()
    step1 = torch.tensor([0.01, -0.01, 0.01, 0.01], dtype=torch.float64)
    torch.testing.assert_close(p.detach().flatten(), step1)
    # step 2: row 0 grad [-2, 2] -> [-0.5, 0.5]; momentum [-0.25, -0.25] -> sign [-, -]
    #         row 1 grad [-100, 1] -> [-100/101, 1/101]; momentum [0.5 - 100/101, 0.5 + 1/101] -> [-, +]
    _set_grad(p, [-2.0, 2.0, -100.0, 1.0])
    opt.step()
    momentum = opt.state[p]["momentum"].flatten()
    expected_m = torch.tensor([-0.25, -0.25, 0.5 - 100 / 101, 0.5 + 1 / 101], dtype=torch.float64)
    torch.testing.assert_close(momentum, expected_m)
    step2 = torch.tensor([0.0, -0.02, 0.0, 0.02], dtype=torch.float64)
    torch.testing.assert_close(p.detach().flatten(), step2)


def test_mifgsm_decay_and_reset() -> None:
    p = _param([0.0, 0.0], (1, 1, 1, 2))
    opt = MIFGSM([p], eps=0.05, step_size=0.01, decay=0.5, start_radius=0.0)
    _set_grad(p, [3.0, 1.0])  # -> [0.75, 0.25]
    opt.step()
    _set_grad(p, [-1.0, -1.0])  # -> [-0.5, -0.5]; momentum 0.5 * [0.75, 0.25] + that = [-0.125, -0.375]
    opt.step()
    torch.testing.assert_close(
        opt.state[p]["momentum"].flatten(), torch.tensor([-0.125, -0.375], dtype=torch.float64)
    )
    opt.initialize()
    assert "momentum" not in opt.state[p]
    assert torch.equal(p.detach(), torch.zeros_like(p))


def test_mifgsm_state_survives_state_dict_round_trip() -> None:
    p = _param([0.0, 0.0], (1, 1, 1, 2))
    opt = MIFGSM([p], eps=0.05, step_size=0.01)
    _set_grad(p, [3.0, 1.0])
    opt.step()
    saved = opt.state_dict()
    q = _param(p.detach().flatten().tolist(), (1, 1, 1, 2))
    other = MIFGSM([q], eps=0.05, step_size=0.01)
    other.load_state_dict(saved)
    _set_grad(p, [-1.0, -1.0])
    _set_grad(q, [-1.0, -1.0])
    opt.step()
    other.step()
    torch.testing.assert_close(q.detach(), p.detach())


# --------------------------------------------------------------------------------------------- APGD
def _checkpoints_by_hand(n_iter: int) -> list[int]:
    """Independent recurrence in exact rationals: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1}
    - 0.03, 0.06) while p_j <= 1; w_j = ceil(p_j n_iter), without repeats."""
    ps = [Fraction(0), Fraction(22, 100)]
    while True:
        nxt = ps[-1] + max(ps[-1] - ps[-2] - Fraction(3, 100), Fraction(6, 100))
        if nxt > 1:
            break
        ps.append(nxt)
    out: list[int] = []
    for frac in ps:
        w = math.ceil(frac * n_iter)
        if w not in out:
            out.append(w)
    return out


def test_apgd_checkpoints() -> None:
    # p: 0, .22, .41, .57, .70, .80, .87, .93, .99 (the next, 1.05, is past the end)
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    for n_iter in (1, 7, 10, 37, 100, 250, 1000):
        assert apgd_checkpoints(n_iter) == _checkpoints_by_hand(n_iter)
    p = torch.nn.Parameter(torch.zeros(1, 1, 1, 1))
    assert APGD([p], eps=0.05, n_iter=100).checkpoints == [0, 22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_initial_step_size_and_override() -> None:
    p = torch.nn.Parameter(torch.zeros(3, 1, 1, 1))
    torch.testing.assert_close(APGD([p], eps=0.05, step_size=0.01).step_sizes, torch.full((3,), 0.1))
    over = APGD([p], eps=0.05, step_size=0.01, step_size_override=True)
    torch.testing.assert_close(over.step_sizes, torch.full((3,), 0.01))


def test_apgd_halves_and_restarts_when_stalled_but_not_when_rising() -> None:
    # n_iter = 10 -> checkpoints [0, 3, 5, ...]; eps 0.05 -> eta 0.1; momentum 0.75
    p = _param([0.0, 0.0], (2, 1, 1, 1))
    opt = APGD([p], eps=0.05, n_iter=10, start_radius=0.0)
    opt.initialize()
    assert opt.checkpoints[:3] == [0, 3, 5]
    # row 0: loss falls every step (best stays x_0 = 0, whose gradient is +1); row 1: loss rises every step
    row0_grads = [1.0, -1.0, -1.0, -1.0]
    row0_losses = [5.0, 4.0, 3.0, 2.0]
    row1_losses = [1.0, 2.0, 3.0, 4.0]
    trajectory = []
    for t in range(4):
        _set_grad(p, [row0_grads[t], 1.0])
        opt.step(loss=torch.tensor([row0_losses[t], row1_losses[t]]))
        trajectory.append(p.detach().flatten().clone())
    # row 0 by hand: x1 = P(0 + 0.1) = 0.05
    #   x2: z = P(0.05 - 0.1) = -0.05; x2 = 0.05 + 0.75 (-0.1) + 0.25 (0.05 - 0) = -0.0125
    #   x3: z = -0.05; -0.0125 + 0.75 (-0.0375) + 0.25 (-0.0625) = -0.05625 -> P -> -0.05
    #   checkpoint 3: 0 increases < 0.75 * 3 -> eta 0.05, restart at x_0 = 0 with its gradient +1:
    #   z = 0.05, x4 = 0 + 0.75 * 0.05 = 0.0375
    # row 1: pinned at the boundary 0.05, 3 increases >= 2.25 and the best loss moved: no halving
    expected = [[0.05, 0.05], [-0.0125, 0.05], [-0.05, 0.05], [0.0375, 0.05]]
    for got, want in zip(trajectory, expected, strict=True):
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(opt.step_sizes, torch.tensor([0.05, 0.1], dtype=torch.float64))


def test_apgd_condition_two_best_loss_unchanged() -> None:
    # rho = 0.5 so that 2 increases out of 3 transitions pass condition 1; only condition 2 can fire
    p = _param([0.0, 0.0], (2, 1, 1, 1))
    opt = APGD([p], eps=0.05, n_iter=10, rho=0.5, start_radius=0.0)
    opt.initialize()
    losses = [[10.0, 1.0], [1.0, 0.5], [2.0, 2.0], [3.0, 3.0]]  # row 0 never beats 10; row 1 does
    for loss in losses:
        _set_grad(p, [1.0, 1.0])
        opt.step(loss=torch.tensor(loss))
    torch.testing.assert_close(opt.step_sizes, torch.tensor([0.05, 0.1], dtype=torch.float64))
    # next checkpoint (5): row 0 restarted from its best (loss 10), then 3.5 (no rise), 4.0 (a rise):
    # 1 >= 0.5 * 2 passes condition 1; the best is still 10 but the step size was halved at the last
    # checkpoint, so condition 2 does not fire either
    for loss in ([3.5, 4.0], [4.0, 5.0]):
        _set_grad(p, [1.0, 1.0])
        opt.step(loss=torch.tensor(loss))
    torch.testing.assert_close(opt.step_sizes, torch.tensor([0.05, 0.1], dtype=torch.float64))


def test_apgd_state_dict_resume_matches_uninterrupted_run() -> None:
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64) for _ in range(9)]
    losses = [torch.rand(2, generator=gen, dtype=torch.float64) for _ in range(9)]

    def run(p: torch.nn.Parameter, opt: APGD, start: int, stop: int) -> None:
        for t in range(start, stop):
            p.grad = grads[t].clone()
            opt.step(loss=losses[t])

    a = torch.nn.Parameter(torch.zeros(2, 3, 2, 2, dtype=torch.float64))
    opt_a = APGD([a], eps=0.05, n_iter=10, start_radius=0.0)
    run(a, opt_a, 0, 9)
    b = torch.nn.Parameter(torch.zeros(2, 3, 2, 2, dtype=torch.float64))
    opt_b = APGD([b], eps=0.05, n_iter=10, start_radius=0.0)
    run(b, opt_b, 0, 4)
    c = torch.nn.Parameter(b.detach().clone())
    opt_c = APGD([c], eps=0.05, n_iter=10, start_radius=0.0)
    opt_c.load_state_dict(opt_b.state_dict())
    run(c, opt_c, 4, 9)
    torch.testing.assert_close(c.detach(), a.detach())
    assert c.abs().max() <= 0.05 + 1e-12


def test_apgd_refuses_propose_and_needs_loss() -> None:
    p = torch.nn.Parameter(torch.zeros(1, 1, 1, 1))
    opt = APGD([p], eps=0.05, n_iter=10)
    with pytest.raises(NotImplementedError, match="CMUA"):
        opt.propose(p, torch.ones_like(p), 0.01)
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError):
        opt.step()


# --------------------------------------------------------------------------------------------- DI2
def test_input_diversity_shape_identity_and_gradient() -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(InputDiversity(prob=0.0)(x), x)
    di = InputDiversity(prob=1.0, resize_rate=1.1, generator=torch.Generator().manual_seed(0))
    xr = x.clone().requires_grad_(True)
    out = di(xr)
    assert out.shape == x.shape
    assert not torch.equal(out.detach(), x)
    (out * torch.randn_like(out)).sum().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0


def test_input_diversity_seeded_and_probability() -> None:
    x = torch.rand(1, 3, 40, 40)
    a = InputDiversity(prob=1.0, generator=torch.Generator().manual_seed(3))(x)
    b = InputDiversity(prob=1.0, generator=torch.Generator().manual_seed(3))(x)
    assert torch.equal(a, b)
    di = InputDiversity(prob=0.5, generator=torch.Generator().manual_seed(0))
    changed = sum(not torch.equal(di(x), x) for _ in range(200))
    assert 60 < changed < 140


# --------------------------------------------------------------------------------------------- APGD returns x_max
def _run_apgd(losses: list[list[float]], n_iter: int) -> tuple[APGD, torch.nn.Parameter, list[torch.Tensor]]:
    """Drive APGD on 2 rows with given per-row losses at each visited point; returns the visited points."""
    p = _param([0.0, 0.0], (2, 1, 1, 1))
    opt = APGD([p], eps=0.05, n_iter=n_iter, start_radius=0.0)
    opt.initialize()
    visited = []
    for t in range(n_iter):
        visited.append(p.detach().clone())
        _set_grad(p, [1.0 if t % 2 == 0 else -1.0, 1.0])
        opt.step(loss=torch.tensor(losses[t], dtype=torch.float64))
    visited.append(p.detach().clone())
    return opt, p, visited


def test_apgd_returns_the_best_point_it_has_seen_per_row() -> None:
    # row 0: the loss peaks at the second point; row 1: the loss keeps rising, so the last point is best
    opt, p, visited = _run_apgd([[1.0, 0.1], [5.0, 0.2], [2.0, 0.3]], n_iter=3)
    assert opt.wants_final_loss()
    last = p.detach().clone()
    opt.finish(torch.tensor([3.0, 0.4], dtype=torch.float64))  # losses at the last (fourth) point
    assert torch.equal(p.detach()[0], visited[1][0])  # loss 5.0 beats 3.0 at the end
    assert torch.equal(p.detach()[1], last[1])  # 0.4 at the last point is the best of row 1
    assert not opt.wants_final_loss()  # once finished


def test_apgd_last_point_wins_only_when_it_is_strictly_better() -> None:
    opt, p, visited = _run_apgd([[4.0, 4.0], [1.0, 1.0]], n_iter=2)
    opt.finish(torch.tensor([4.0, 4.5], dtype=torch.float64))
    assert torch.equal(p.detach()[0], visited[0][0]) and torch.equal(p.detach()[1], visited[2][1])


def test_input_diversity_draws_cover_the_resize_range_and_apply_resize_pad_resize() -> None:
    """Each draw: nearest-resize to rh in [H, H * rate), pad at (top, left) to int(H * rate), resize back."""
    import torch.nn.functional as F

    from advwm.attacks.diversity import InputDiversity

    di = InputDiversity(prob=1.0, resize_rate=1.25)
    draws = di.draw(400, 16, 16, torch.Generator().manual_seed(1))
    assert {d.height for d in draws} == set(range(16, 20))  # int(16 * 1.25) = 20, exclusive
    assert {d.top for d in draws} == set(range(0, 5)) and all(d.applied for d in draws)
    x = torch.rand(1, 3, 16, 16)
    draw = next(d for d in draws if d.height == 18 and d.top == 1 and d.left == 2)
    by_hand = F.interpolate(x, size=(18, 18), mode="nearest")
    by_hand = F.pad(by_hand, [2, 20 - 18 - 2, 1, 20 - 18 - 1])
    by_hand = F.interpolate(by_hand, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(di.apply(x, [draw]), by_hand)
    half = InputDiversity(prob=0.3).draw(1000, 16, 16, torch.Generator().manual_seed(2))
    assert 0.25 < sum(d.applied for d in half) / 1000 < 0.35
