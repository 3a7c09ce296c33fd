"""Tiny victims and data for engine tests, where every gradient can be written down by hand."""

from __future__ import annotations

import functools

import torch

from advwm.attacks import APGD, IFGSM, MIFGSM, PGD, BaseAttack, InputDiversity, PerImage, Scope, Universal
from advwm.data import TensorFaces  # noqa: F401  (the tests import it from here)

OPTIMIZERS = {"pgd": PGD, "ifgsm": IFGSM, "mifgsm": MIFGSM, "apgd": APGD}


def base_attack(name: str = "pgd", step_size: float = 0.01, iterations: int = 1, diversity_prob: float = 0.0,
                **options) -> BaseAttack:
    """A BaseAttack as a config would build it: the optimizer class (partial with `options`), its step size,
    iterations per batch, and DI2 input diversity with probability `diversity_prob`."""
    diversity = InputDiversity(prob=diversity_prob) if diversity_prob else None
    return BaseAttack(functools.partial(OPTIMIZERS[name], **options), step_size=step_size, iterations=iterations,
                      diversity=diversity, name=name)


def scope_of(name: str, **options) -> Scope:
    """Universal(**options) or PerImage() by name."""
    return PerImage() if name == "per_image" else Universal(**options)


class LinearVictim(torch.nn.Module):
    """G(x, c) = gain * (1 + c) * x: the distortion loss is mean((gain (1+c) delta)^2), its gradient
    with respect to the protected image p is 2 gain^2 (1+c)^2 (p - x) / N, N = 3*H*W."""

    stackable = True

    def __init__(self, name: str, gain: float, levels: tuple[float, ...] = (0.0, 1.0)) -> None:
        super().__init__()
        self.name = name
        self.gain = torch.nn.Parameter(torch.tensor(float(gain)), requires_grad=False)
        self.levels = levels
        self.condition_names = [f"c{level:g}" for level in levels]
        self.clean_calls = 0
        self.grad_calls = 0

    def conditions(self, labels: torch.Tensor) -> list[torch.Tensor]:
        return [torch.full((labels.shape[0], 1), level) for level in self.levels]

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.grad_calls += 1
        else:
            self.clean_calls += 1
        return self.gain * (1 + condition.view(-1, 1, 1, 1)) * x


class MixVictim(LinearVictim):
    """G(x, c) = gain * (1 + c) * (x + roll(x))^2, roll = a shift by one pixel along the width.

    A victim that mixes pixels and is not linear, so the sign of its distortion gradient differs from image
    to image (for an elementwise G it would be sign(delta) for every image): a batch's sign votes split.
    """

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return super().forward((x + x.roll(1, dims=-1)) ** 2, condition)


def mix_vote(protected: torch.Tensor, clean: torch.Tensor, gain: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """Per-image sign of MixVictim's distortion gradient (condition 0) against the target G(x) + offset, by hand:
    d/dp of |G(p) - y|^2 = 2 J^T (G(p) - y) with J = 2 gain diag(u) A, u = A p, A p = p + roll(p)."""
    u = protected + protected.roll(1, dims=-1)
    v = clean + clean.roll(1, dims=-1)
    r = u * (gain * u * u - gain * v * v - offset)
    return (r + r.roll(-1, dims=-1)).sign()


