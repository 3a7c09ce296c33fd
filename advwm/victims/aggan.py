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

from advwm.victims.stargan import STARGAN_ATTRS, StarGANVictim, stargan_layers, with_tiled_condition

AGGAN_ATTRS: tuple[str, ...] = STARGAN_ATTRS


class Generator(nn.Module):
    """AttentionGAN-v1-multi generator; forward returns (result, attention_mask, content_mask) as officially."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        self.conv_dim = conv_dim
        self.c_dim = c_dim
        self.repeat_num = repeat_num
        # StarGAN's layout; the last conv gives 1 attention logit + 3 content channels, no output activation
        self.main = nn.Sequential(*stargan_layers(conv_dim, c_dim, repeat_num, out_channels=4))

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(result, attention mask repeated to 3 channels, raw content) for images x and domain vector c."""
        out = self.main(with_tiled_condition(x, c, self.c_dim, "AGGAN"))
        attention = torch.sigmoid(out[:, :1]).expand(-1, 3, -1, -1)
        content = out[:, 1:]
        result = content * attention + x * (1 - attention)
        return result, attention, content


class AGGANVictim(StarGANVictim):
    """AttentionGAN-v1-multi in train mode; StarGAN's conditions (one per attribute); output = the result."""

    name = "aggan"

    def __init__(self, network: Generator, image_size: int = 256, attrs: Sequence[str] = AGGAN_ATTRS) -> None:
        super().__init__(network, image_size, attrs)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        return self.network(x, condition)[0]
