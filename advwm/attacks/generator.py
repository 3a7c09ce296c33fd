"""The perturbation generator of `scope=amortized`: a small U-Net that maps a face to its own perturbation.

delta = eps * tanh(gain * z / rms(z)), z = unet(x): |delta| <= eps by construction, for any input and any weights
(tanh is bounded by 1 and eps * 1.0 is eps exactly in floating point), so the optimiser over the weights needs no
projection; the engine then keeps x + delta in [-1, 1] as it does for the other scopes.

Why the network's output z is divided by its root mean square (per face) before tanh: the victims' distortion grows
with |delta| in almost every direction, so without it the fastest ascent is to scale z up, every pixel runs into
tanh's flat ends (in float32 tanh(z) is exactly 1 beyond z = 9: zero gradient) and the pattern freezes where it
started. Measured (tiny random StarGAN + AttGAN, 32 px, 16 crafting faces, Adam 1e-3 or 3e-4): without it |delta|
reached eps within a few dozen steps, width 16 stopped learning entirely, width 8 ended below random +-eps noise on
held-out faces; with it the scale is fixed (gain 3: a pixel at its face's rms sits at 0.995 eps; measured mean
|delta| about 0.8 eps) and training changes the pattern, which is what protects (held-out losses x1.7 (StarGAN) and
x5 (AttGAN) those of noise of the same L2 size: tests/test_amortized.py).

The network has no normalisation over the batch (no BatchNorm): a face's perturbation depends on that face alone,
not on the faces it was batched with, so a photo gets the same protection alone or in a folder, in training and in
use, and train/eval modes are the same network.

Why our own network: torchvision has no U-Net, and the U-Net packages (segmentation_models_pytorch and the like) bring
pretrained encoders of tens of MB; the perturbation needs a few hundred thousand weights, here in 60 lines.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812  (torch's own convention)
from torch import Tensor, nn

__all__ = ["ARCHITECTURE_KEYS", "PerturbationGenerator", "per_face_unit_rms"]

ARCHITECTURE_KEYS = ("width", "depth", "gain")
_TINY = 1e-12  # a face whose z is all zero gets delta = 0, not NaN


def _block(channels_in: int, channels_out: int, stride: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions with LeakyReLU; the first one may halve the resolution (stride 2)."""
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(channels_out, channels_out, 3, padding=1), nn.LeakyReLU(0.2))


def per_face_unit_rms(z: Tensor) -> Tensor:
    """z [B,...] divided by each face's root mean square, safe for any values: scaled by the largest |z| first (no
    overflow of z^2), infinities and NaN mapped to finite numbers; a face whose z is all zero stays zero."""
    z = torch.nan_to_num(z)
    largest = z.abs().flatten(1).amax(dim=1).clamp_min(_TINY).view(-1, *([1] * (z.dim() - 1)))
    scaled = z / largest
    return scaled / scaled.pow(2).flatten(1).mean(dim=1).add(_TINY).sqrt().view_as(largest)


class PerturbationGenerator(nn.Module):
    """x [B,3,S,S] in [-1, 1] -> delta [B,3,S,S] within [-eps, eps].

    `width`: channels at full resolution (doubled at each lower level); `depth`: resolution levels (1 = no
    down-sampling); `gain`: tanh's input scale after the per-face normalisation (how close to +-eps the pixels sit).
    Any image size works: each decoder level is up-sampled to its skip connection's size.
    """

    def __init__(self, eps: float, width: int = 32, depth: int = 3, gain: float = 3.0) -> None:
        super().__init__()
        if not 0 < eps <= 1:
            raise ValueError(f"eps must lie in (0, 1], got {eps}")
        if int(width) < 1 or int(depth) < 1:
            raise ValueError(f"scope.width and scope.depth must be whole numbers >= 1, got {width} and {depth}")
        if not 0 < gain < float("inf"):
            raise ValueError(f"scope.gain must be a finite number > 0, got {gain}")
        self.eps = float(eps)
        self.width, self.depth, self.gain = int(width), int(depth), float(gain)
        channels = [self.width * 2 ** level for level in range(self.depth)]
        self.encoders = nn.ModuleList(
            [_block(3, channels[0])] + [_block(channels[i - 1], channels[i], stride=2) for i in range(1, self.depth)])
        self.decoders = nn.ModuleList(
            [_block(channels[i] + channels[i - 1], channels[i - 1]) for i in range(self.depth - 1, 0, -1)])
        self.head = nn.Conv2d(channels[0], 3, 1)

    def architecture(self) -> dict[str, Any]:
        """What rebuilds this network (generator.pt keeps it beside the weights)."""
        return {"width": self.width, "depth": self.depth, "gain": self.gain}

    def logits(self, x: Tensor) -> Tensor:
        """The U-Net's unbounded output z (before the normalisation and tanh)."""
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        skips.pop()  # the deepest level is x itself
        for decoder in self.decoders:
            skip = skips.pop()
            x = decoder(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.eps * torch.tanh(self.gain * per_face_unit_rms(self.logits(x)))

    def megabytes(self) -> float:
        """The weights' size in MB (float32)."""
        return sum(p.numel() for p in self.parameters()) * 4 / 1e6
