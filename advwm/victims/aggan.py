"""AGGAN: AttentionGAN-v1-multi (Ha0Tang/AttentionGAN `AttentionGAN-v1-multi/model.py::Generator`), as in CMUA.

StarGAN's generator with a 4-channel last conv and no Tanh: channel 0 is an attention logit, channels 1-3
the (raw, unbounded) content. The edited image is content * a + x * (1 - a) with a = sigmoid(logit), so it
is NOT bounded to [-1, 1]. Key layout is StarGAN's (`main.<i>...`), so CMUA's `200000-G.ckpt` (a bare
state_dict) loads as is. Like StarGAN, official inference never calls `eval()`: train-mode InstanceNorm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advwm.victims.base import Victim
from advwm.victims.stargan import STARGAN_ATTRS, InstanceNorm2d, ResidualBlock, stargan_conditions

AGGAN_ATTRS: tuple[str, ...] = STARGAN_ATTRS


class Generator(nn.Module):
    """AttentionGAN-v1-multi generator; forward returns (result, attention_mask, content_mask) as officially."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        self.conv_dim = conv_dim
        self.c_dim = c_dim
        self.repeat_num = repeat_num
        layers: list[nn.Module] = [
            nn.Conv2d(3 + c_dim, conv_dim, kernel_size=7, stride=1, padding=3, bias=False),
            InstanceNorm2d(conv_dim),
            nn.ReLU(inplace=True),
        ]
        dim = conv_dim
        for _ in range(2):  # down-sampling
            layers += [
                nn.Conv2d(dim, dim * 2, kernel_size=4, stride=2, padding=1, bias=False),
                InstanceNorm2d(dim * 2),
                nn.ReLU(inplace=True),
            ]
            dim *= 2
        layers += [ResidualBlock(dim) for _ in range(repeat_num)]
        for _ in range(2):  # up-sampling
            layers += [
                nn.ConvTranspose2d(dim, dim // 2, kernel_size=4, stride=2, padding=1, bias=False),
                InstanceNorm2d(dim // 2),
                nn.ReLU(inplace=True),
            ]
            dim //= 2
        # 1 attention logit + 3 content channels, no output activation
        layers.append(nn.Conv2d(dim, 4, kernel_size=7, stride=1, padding=3, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(result, attention mask repeated to 3 channels, raw content) for images x and domain vector c."""
        if c.dim() != 2 or c.shape[1] != self.c_dim or c.shape[0] != x.shape[0]:
            raise ValueError(f"AGGAN: condition must be [{x.shape[0]}, {self.c_dim}], got {tuple(c.shape)}")
        c_map = c.to(x.dtype).view(c.shape[0], c.shape[1], 1, 1).expand(-1, -1, x.shape[2], x.shape[3])
        out = self.main(torch.cat([x, c_map], dim=1))
        attention = torch.sigmoid(out[:, :1]).expand(-1, 3, -1, -1)
        content = out[:, 1:]
        result = content * attention + x * (1 - attention)
        return result, attention, content


class AGGANVictim(Victim):
    """AttentionGAN-v1-multi in train mode; StarGAN's conditions (one per attribute); output = the result."""

    name = "aggan"
    official_mode = "train"
    stackable = True

    def __init__(self, network: Generator, image_size: int = 256, attrs: Sequence[str] = AGGAN_ATTRS) -> None:
        attrs = tuple(attrs)
        c_dim = getattr(network, "c_dim", None)
        if c_dim is not None and c_dim != len(attrs):
            raise ValueError(f"aggan: generator c_dim={c_dim} but {len(attrs)} attrs given: {list(attrs)}")
        super().__init__(network, image_size, attrs)

    @property
    def condition_names(self) -> list[str]:
        return list(self.attrs)

    def conditions(self, labels: Tensor) -> list[Tensor]:
        return stargan_conditions(self.selected_labels(labels), self.attrs)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        return self.network(x, condition)[0]
