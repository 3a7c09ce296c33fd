"""The amortized protector: each face crop's perturbation from one forward pass of a trained generator.

`python -m advwm.protect <run>/generator.pt photos/ --out protected/` goes through the same crop -> protect -> paste
path as a universal watermark (`advwm.protect.paste`, `advwm.protect.photos`): only what gives a crop its
perturbation differs. The generator (`advwm.run_files.generator_file`, checked on load) maps each crop at the
victims' size to eps * tanh(...), so |delta| <= eps by construction and the paste keeps every pixel within eps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from advwm.run_files.generator_file import GeneratorError, GeneratorFile


class TrainedGenerator:
    """Protector: crops [F,3,S,S] in [-1, 1] -> strength * g(crops), one forward pass for all the photo's faces."""

    def __init__(self, file: GeneratorFile, strength: float = 1.0) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must lie in [0, 1] (1 = as trained; more would exceed eps), got {strength}")
        self.file = file
        self.eps = float(file.eps)
        self.image_size = int(file.image_size)
        self.strength = float(strength)

    def __call__(self, crops: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        if crops.shape[0] and tuple(crops.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(f"crops are {list(crops.shape[1:])}; {self.file.path} protects [3, {self.image_size}, "
                             f"{self.image_size}] faces")
        return self.strength * self.file.delta(crops)


def generator_eps(file: GeneratorFile, given: float | None) -> float:
    """The eps a generator's change is bounded by: its own; `--eps` may only repeat it."""
    if given is not None and not math.isclose(given, file.eps):
        raise GeneratorError(f"--eps {given:g} differs from the eps {file.eps:g} {file.path} was trained with; its "
                             "perturbations are bounded by that eps (retrain with another eps)")
    return file.eps
