"""StarGAN (yunjey/stargan `model.py::Generator`), as attacked by CMUA-Watermark at 256 px.

Key layout is the official one (`main.<i>...`), so `200000-G.ckpt` (a bare state_dict) loads as is.
Official inference never calls `eval()`, so the generator runs in train mode: InstanceNorm normalises
with per-image statistics and the stored running statistics never influence the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advwm.victims.base import Victim, check_attribute_count

STARGAN_ATTRS: tuple[str, ...] = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
HAIR_COLOURS: tuple[str, ...] = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")


class InstanceNorm2d(nn.InstanceNorm2d):
    """`nn.InstanceNorm2d(affine=True, track_running_stats=True)` that never writes its running buffers.

    In train mode the official layer updates running_mean/var as a side effect that cannot change the
    output; skipping it keeps a frozen victim stateless (no buffer drift across attack steps, nothing for
    DDP to re-broadcast, no in-place mutation inside compiled graphs). Eval mode behaves as usual.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=True, track_running_stats=True)

    def forward(self, input: Tensor) -> Tensor:
        if self.training:
            if input.dim() != 4 or input.shape[1] != self.num_features:
                raise ValueError(f"expected [B, {self.num_features}, H, W], got {tuple(input.shape)}")
            return F.instance_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(input)


class ResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN with identity skip (keys `main.0/1/3/4`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=False),
            InstanceNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=False),
            InstanceNorm2d(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.main(x)


def stargan_layers(conv_dim: int, c_dim: int, repeat_num: int, out_channels: int) -> list[nn.Module]:
    """The official `main` layers up to the last 7x7 conv (StarGAN adds Tanh; AttentionGAN uses 4 outputs).

    7x7 stem, 2 stride-2 downs, `repeat_num` residual blocks, 2 stride-2 ups, 7x7 conv; all convs bias-free.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(3 + c_dim, conv_dim, kernel_size=7, stride=1, padding=3, bias=False),
        InstanceNorm2d(conv_dim),
        nn.ReLU(inplace=True),
    ]
    dim = conv_dim
    for _ in range(2):
        layers += [
            nn.Conv2d(dim, dim * 2, kernel_size=4, stride=2, padding=1, bias=False),
            InstanceNorm2d(dim * 2),
            nn.ReLU(inplace=True),
        ]
        dim *= 2
    layers += [ResidualBlock(dim) for _ in range(repeat_num)]
    for _ in range(2):
        layers += [
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=4, stride=2, padding=1, bias=False),
            InstanceNorm2d(dim // 2),
            nn.ReLU(inplace=True),
        ]
        dim //= 2
    layers.append(nn.Conv2d(dim, out_channels, kernel_size=7, stride=1, padding=3, bias=False))
    return layers


def with_tiled_condition(x: Tensor, c: Tensor, c_dim: int, victim: str) -> Tensor:
    """cat([x, c tiled over HxW], 1): the domain vector c [B, c_dim] appended after the image channels."""
    if c.dim() != 2 or c.shape[1] != c_dim or c.shape[0] != x.shape[0]:
        raise ValueError(f"{victim}: condition must be [{x.shape[0]}, {c_dim}], got {tuple(c.shape)}")
    c_map = c.to(x.dtype).view(c.shape[0], c.shape[1], 1, 1).expand(-1, -1, x.shape[2], x.shape[3])
    return torch.cat([x, c_map], dim=1)


class Generator(nn.Module):
    """StarGAN generator: `stargan_layers` with 3 outputs, then Tanh."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        self.conv_dim = conv_dim
        self.c_dim = c_dim
        self.repeat_num = repeat_num
        self.main = nn.Sequential(*stargan_layers(conv_dim, c_dim, repeat_num, out_channels=3), nn.Tanh())

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Tile the domain vector c [B, c_dim] over HxW, append it after the image channels, translate."""
        return self.main(with_tiled_condition(x, c, self.c_dim, "StarGAN"))


def stargan_conditions(c_org: Tensor, attrs: Sequence[str]) -> list[Tensor]:
    """`Solver.create_labels` for CelebA: one target per attribute.

    A hair colour target is set to 1 with the other selected hair colours cleared; any other attribute is
    flipped. `c_org` holds the 0/1 labels of `attrs` [B, len(attrs)].
    """
    hair = [i for i, a in enumerate(attrs) if a in HAIR_COLOURS]
    targets = []
    for i in range(len(attrs)):
        c = c_org.clone()
        if i in hair:
            c[:, hair] = 0
            c[:, i] = 1
        else:
            c[:, i] = (c[:, i] == 0).to(c.dtype)
        targets.append(c)
    return targets


class StarGANVictim(Victim):
    """StarGAN in train mode; conditions = one per selected attribute, named after it."""

    name = "stargan"
    official_mode = "train"
    stackable = True

    def __init__(
        self, network: Generator, image_size: int = 256, attrs: Sequence[str] = STARGAN_ATTRS
    ) -> None:
        attrs = tuple(attrs)
        check_attribute_count(self.name, network, "c_dim", attrs)
        super().__init__(network, image_size, attrs)

    @property
    def condition_names(self) -> list[str]:
        return list(self.attrs)

    def conditions(self, labels: Tensor) -> list[Tensor]:
        return stargan_conditions(self.selected_labels(labels), self.attrs)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        return self.network(x, condition)
