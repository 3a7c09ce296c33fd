"""CelebA attribute labels: the 40 names in the official order and label vectors built from names."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from advwm.data.attributes import CELEBA_ATTRIBUTES


def label_vector(positive: Iterable[str]) -> torch.Tensor:
    """A [40] float 0/1 vector with 1 at the named CelebA attributes (for photos without annotations)."""
    positive = list(positive)
    unknown = [name for name in positive if name not in CELEBA_ATTRIBUTES]
    if unknown:
        raise ValueError(f"unknown CelebA attribute(s) {unknown}; known: {', '.join(CELEBA_ATTRIBUTES)}")
    vector = torch.zeros(len(CELEBA_ATTRIBUTES))
    for name in positive:
        vector[CELEBA_ATTRIBUTES.index(name)] = 1.0
    return vector
