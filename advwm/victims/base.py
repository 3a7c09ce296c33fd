"""The one interface the attack engine sees: a frozen generator plus its conditions.

Each victim wraps a bare generator (state-dict compatible with the official checkpoint), pins it to
the mode the official inference code runs it in, freezes its parameters (so a backward pass computes
input gradients only) and turns a face's CelebA labels into the list of conditions the attack targets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from advwm.data.attributes import CELEBA_ATTRIBUTES

Mode = Literal["train", "eval"]


def attribute_indices(attrs: Sequence[str]) -> list[int]:
    """Column of each named attribute in a CelebA label tensor; a typo fails here, not silently later."""
    unknown = [a for a in attrs if a not in CELEBA_ATTRIBUTES]
    if unknown:
        raise ValueError(f"unknown CelebA attribute(s) {unknown}; known: {list(CELEBA_ATTRIBUTES)}")
    if len(set(attrs)) != len(attrs):
        raise ValueError(f"duplicate attributes in {list(attrs)}")
    return [CELEBA_ATTRIBUTES.index(a) for a in attrs]


def check_attribute_count(victim: str, network: nn.Module, field: str, attrs: Sequence[str],
                          label: str | None = None) -> None:
    """The generator's attribute width (`network.<field>`, if it has one) must match the attrs given."""
    width = getattr(network, field, None)
    if width is not None and width != len(attrs):
        raise ValueError(f"{victim}: generator {label or field}={width} but {len(attrs)} attrs given: {list(attrs)}")


def freeze(network: nn.Module) -> nn.Module:
    """Stop weight gradients: the attack only needs d(output)/d(input), and skipping the rest is ~1.5x."""
    network.requires_grad_(False)
    return network


def set_mode(network: nn.Module, mode: Mode) -> nn.Module:
    """Put a network in the mode its official inference code uses ('train' or 'eval')."""
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    return network.train(mode == "train")


class Victim(nn.Module, ABC):
    """A frozen face-editing generator with its domains, as the attack engine uses it.

    `conditions(labels)` turns CelebA 0/1 labels [B, 40] into K condition tensors [B, c];
    `forward(x, condition)` returns the edited image [B, 3, H, W] for any batch size, so conditions of one
    victim may be stacked into one batch ([K*B, ...]) when `stackable` is true (per-sample normalisation).
    """

    name: ClassVar[str]
    official_mode: ClassVar[Mode]
    stackable: ClassVar[bool] = True

    def __init__(self, network: nn.Module, image_size: int, attrs: Sequence[str]) -> None:
        super().__init__()
        self.attrs: tuple[str, ...] = tuple(attrs)
        self.image_size = int(image_size)
        self.network = freeze(network)
        set_mode(self.network, self.official_mode)
        # Non-persistent buffer: follows .to(device) but stays out of state_dict / Lightning checkpoints.
        self.register_buffer(
            "_label_columns", torch.tensor(attribute_indices(self.attrs), dtype=torch.long), persistent=False
        )

    @property
    @abstractmethod
    def condition_names(self) -> list[str]:
        """One name per condition, in the order `conditions()` returns them (used in metric/log keys)."""

    @property
    def num_conditions(self) -> int:
        return len(self.condition_names)

    @abstractmethod
    def conditions(self, labels: Tensor) -> list[Tensor]:
        """CelebA labels [B, 40] (0/1) -> the victim's K condition tensors, each [B, c]."""

    @abstractmethod
    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        """Edited images [B, 3, H, W] for inputs x [B, 3, H, W] in [-1, 1] and one condition [B, c]."""

    def selected_labels(self, labels: Tensor) -> Tensor:
        """The victim's attribute columns of CelebA labels [B, 40], as floats in the network's dtype."""
        if labels.dim() != 2 or labels.shape[1] != len(CELEBA_ATTRIBUTES):
            raise ValueError(
                f"{self.name}: labels must be [B, {len(CELEBA_ATTRIBUTES)}] CelebA 0/1 labels, "
                f"got shape {tuple(labels.shape)}"
            )
        if bool((labels < 0).any()):
            raise ValueError(f"{self.name}: labels must be 0/1 (CelebA files use -1/1: map them first)")
        columns = self._label_columns.to(labels.device)
        return labels.index_select(1, columns).to(self._dtype())

    def _dtype(self) -> torch.dtype:
        param = next(self.network.parameters(), None)
        return param.dtype if param is not None else torch.get_default_dtype()

    def train(self, mode: bool = True) -> Victim:
        """Follow Lightning's train/eval switches for the wrapper, but keep the network in its official mode.

        StarGAN must stay in train mode (per-image InstanceNorm statistics) and AttGAN in eval mode (BN
        running statistics), whatever `trainer.fit` / `validate` do to the module tree.
        """
        super().train(mode)
        set_mode(self.network, self.official_mode)
        return self

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, image_size={self.image_size}, mode={self.official_mode!r}, "
            f"conditions={self.condition_names}"
        )
