"""U-GAT-IT (znxlwm/UGATIT-pytorch `networks.py::ResnetGenerator`), light and full variants.

An unconditional two-domain translator: `genA2B` maps domain A to B (e.g. selfie -> anime), `genB2A` back.
Key layout is the official one (`DownBlock.<i>`, `UpBlock1_<k>`, `UpBlock2.<i>`, `FC`, `gamma`, `beta`,
...), so a generator of `<dataset>_params_<step:07d>.pt` (a dict holding 'genA2B', 'genB2A' and the four
discriminators) loads as is. The full variant's FC layer reads the flattened bottleneck, so the input
must be exactly img_size; the light variant average-pools first and accepts any size. No layer depends
on train/eval mode (InstanceNorm without running stats, ILN/AdaILN); `UGATIT.test()` calls `eval()`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advwm.victims.base import Victim

Direction = Literal["A2B", "B2A"]
DIRECTIONS: tuple[str, ...] = ("A2B", "B2A")


def container_key(direction: str) -> str:
    """The key of the official `_params_*.pt` dict holding the generator for `direction` ('genA2B'/'genB2A')."""
    if direction not in DIRECTIONS:
        raise ValueError(f"ugatit: direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    return f"gen{direction}"


def _instance_layer_affine(x: Tensor, rho: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """rho * IN(x) + (1 - rho) * LN(x) written as x * a + b, with a and b of shape [N, C, 1, 1].

    The reference computes IN(x) = (x - m_i) / sqrt(v_i + eps) and LN(x) = (x - m_l) / sqrt(v_l + eps) (unbiased
    variances over H*W, and over C*H*W) as separate full-size tensors and blends them: about ten passes over the
    feature map forward and more backward, 55% of U-GAT-IT's CPU time (torch.profiler, 256 px). The same
    function is x * (rho s_i + (1 - rho) s_l) - (rho m_i s_i + (1 - rho) m_l s_l) with s = 1/sqrt(v + eps): one
    pass for the per-channel statistics (var_mean), one for the affine map. The layer statistics come from the
    channels' by the parallel-variance formula (exact, no cancellation): m_l = mean_c m_i and
    (CHW - 1) v_l = sum_c [(HW - 1) v_i + HW (m_i - m_l)^2].
    """
    n, c, h, w = x.shape
    hw = h * w
    v_i, m_i = torch.var_mean(x, dim=(2, 3), keepdim=True)  # unbiased, as the reference
    m_l = m_i.mean(dim=1, keepdim=True)
    v_l = ((hw - 1) * v_i + hw * (m_i - m_l).square()).sum(dim=1, keepdim=True) / (c * hw - 1)
    s_i, s_l = torch.rsqrt(v_i + eps), torch.rsqrt(v_l + eps)
    scale = rho * s_i + (1 - rho) * s_l
    offset = -(rho * m_i * s_i + (1 - rho) * m_l * s_l)
    return scale, offset


class adaILN(nn.Module):  # noqa: N801  (official class name)
    """Adaptive instance-layer norm: rho * IN(x) + (1 - rho) * LN(x), scaled/shifted by per-image gamma/beta."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.rho = nn.Parameter(torch.full((1, num_features, 1, 1), 0.9))

    def forward(self, x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        scale, offset = _instance_layer_affine(x, self.rho, self.eps)
        gamma, beta = gamma[:, :, None, None], beta[:, :, None, None]
        return torch.addcmul(offset * gamma + beta, x, scale * gamma)


class ILN(nn.Module):
    """Instance-layer norm with learned rho, gamma and beta (all [1, C, 1, 1])."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.rho = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.gamma = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_features, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        scale, offset = _instance_layer_affine(x, self.rho, self.eps)
        return torch.addcmul(offset * self.gamma + self.beta, x, scale * self.gamma)


class ResnetBlock(nn.Module):
    """pad-conv3-IN-ReLU-pad-conv3-IN with identity skip (keys `conv_block.1/5`)."""

    def __init__(self, dim: int, use_bias: bool) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=0, bias=use_bias),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=0, bias=use_bias),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetAdaILNBlock(nn.Module):
    """Residual block whose two norms are AdaILN driven by the CAM branch's gamma/beta."""

    def __init__(self, dim: int, use_bias: bool) -> None:
        super().__init__()
        self.pad1 = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=0, bias=use_bias)
        self.norm1 = adaILN(dim)
        self.relu1 = nn.ReLU(True)
        self.pad2 = nn.ReflectionPad2d(1)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=0, bias=use_bias)
        self.norm2 = adaILN(dim)

    def forward(self, x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        out = self.relu1(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
        out = self.norm2(self.conv2(self.pad2(out)), gamma, beta)
        return out + x


class ResnetGenerator(nn.Module):
    """U-GAT-IT generator; forward returns (out, cam_logit, heatmap) as officially."""

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_blocks: int = 6,
        img_size: int = 256,
        light: bool = False,
    ) -> None:
        if n_blocks < 0:
            raise ValueError(f"U-GAT-IT: n_blocks must be >= 0, got {n_blocks}")
        super().__init__()
        self.input_nc = input_nc
        self.output_nc = output_nc
        self.ngf = ngf
        self.n_blocks = n_blocks
        self.img_size = img_size
        self.light = light
        n_down = 2
        mult = 2**n_down
        dim = ngf * mult
        if not light and img_size % mult:
            raise ValueError(f"U-GAT-IT (full): img_size={img_size} must be divisible by {mult}")

        # Registration order follows the reference (it fixes the state_dict key order).
        down: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, stride=1, padding=0, bias=False),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        for i in range(n_down):
            m = 2**i
            down += [
                nn.ReflectionPad2d(1),
                nn.Conv2d(ngf * m, ngf * m * 2, kernel_size=3, stride=2, padding=0, bias=False),
                nn.InstanceNorm2d(ngf * m * 2),
                nn.ReLU(True),
            ]
        down += [ResnetBlock(dim, use_bias=False) for _ in range(n_blocks)]

        # Class activation map
        self.gap_fc = nn.Linear(dim, 1, bias=False)
        self.gmp_fc = nn.Linear(dim, 1, bias=False)
        self.conv1x1 = nn.Conv2d(dim * 2, dim, kernel_size=1, stride=1, bias=True)
        self.relu = nn.ReLU(True)

        # Gamma, beta
        fc_in = dim if light else (img_size // mult) * (img_size // mult) * dim
        fc: list[nn.Module] = [
            nn.Linear(fc_in, dim, bias=False),
            nn.ReLU(True),
            nn.Linear(dim, dim, bias=False),
            nn.ReLU(True),
        ]
        self.gamma = nn.Linear(dim, dim, bias=False)
        self.beta = nn.Linear(dim, dim, bias=False)

        for i in range(n_blocks):
            setattr(self, f"UpBlock1_{i + 1}", ResnetAdaILNBlock(dim, use_bias=False))

        up: list[nn.Module] = []
        for i in range(n_down):
            m = 2 ** (n_down - i)
            up += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.ReflectionPad2d(1),
                nn.Conv2d(ngf * m, ngf * m // 2, kernel_size=3, stride=1, padding=0, bias=False),
                ILN(ngf * m // 2),
                nn.ReLU(True),
            ]
        up += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, output_nc, kernel_size=7, stride=1, padding=0, bias=False),
            nn.Tanh(),
        ]

        self.DownBlock = nn.Sequential(*down)
        self.FC = nn.Sequential(*fc)
        self.UpBlock2 = nn.Sequential(*up)

    def forward(self, input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(translated image, CAM logits [B, 2], heatmap [B, 1, H/4, W/4]) for images [B, input_nc, H, W]."""
        if input.dim() != 4 or input.shape[1] != self.input_nc:
            raise ValueError(f"U-GAT-IT: input must be [B, {self.input_nc}, H, W], got {tuple(input.shape)}")
        if not self.light and tuple(input.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"U-GAT-IT (full): input must be [B, {self.input_nc}, {self.img_size}, {self.img_size}] (this "
                f"generator's img_size; its FC layer reads the whole bottleneck), got {tuple(input.shape)}"
            )
        x = self.DownBlock(input)

        gap_logit = self.gap_fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        gap = x * self.gap_fc.weight[:, :, None, None]
        gmp_logit = self.gmp_fc(F.adaptive_max_pool2d(x, 1).flatten(1))
        gmp = x * self.gmp_fc.weight[:, :, None, None]
        cam_logit = torch.cat([gap_logit, gmp_logit], dim=1)
        x = self.relu(self.conv1x1(torch.cat([gap, gmp], dim=1)))
        heatmap = torch.sum(x, dim=1, keepdim=True)

        pooled = F.adaptive_avg_pool2d(x, 1) if self.light else x
        x_ = self.FC(pooled.flatten(1))
        gamma, beta = self.gamma(x_), self.beta(x_)
        for i in range(self.n_blocks):
            x = getattr(self, f"UpBlock1_{i + 1}")(x, gamma, beta)
        return self.UpBlock2(x), cam_logit, heatmap


class UGATITVictim(Victim):
    """U-GAT-IT generator of one direction; one condition (named after the direction), an empty [B, 0] tensor.

    The empty condition keeps the engine's interface (conditions stack with torch.cat) for a network that
    takes none; the output is the translated image, the CAM logits and heatmap are dropped.
    """

    name = "ugatit"
    official_mode = "eval"
    stackable = True

    def __init__(self, network: ResnetGenerator, image_size: int = 256, direction: Direction = "A2B") -> None:
        container_key(direction)  # validates
        light = getattr(network, "light", True)
        img_size = getattr(network, "img_size", None)
        if not light and img_size is not None and img_size != image_size:
            raise ValueError(f"ugatit: full generator img_size={img_size} differs from image_size={image_size}")
        super().__init__(network, image_size, ())
        self.direction: str = direction

    @property
    def condition_names(self) -> list[str]:
        return [self.direction]

    def conditions(self, labels: Tensor) -> list[Tensor]:
        return [self.selected_labels(labels)]  # validated labels, no columns: [B, 0]

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        if condition is not None and (condition.dim() != 2 or condition.shape != (x.shape[0], 0)):
            raise ValueError(
                f"ugatit: takes no condition; expected an empty [{x.shape[0]}, 0] tensor or None, "
                f"got {tuple(condition.shape)}"
            )
        return self.network(x)[0]
