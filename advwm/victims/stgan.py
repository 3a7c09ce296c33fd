"""STGAN (bluestyle97/STGAN-pytorch `models/stgan.py::Generator`), the CDMAA victim.

The generator takes the attribute DIFFERENCE a = c_trg - c_org (only the changed attributes are non-zero)
and routes encoder features through ConvGRU "selective transfer units" (STU). Key layout is the official
one (`encoder.<i>`, `stu.<i>`, `decoder.<i>`); `G_<iter>.pth.tar` = {'state_dict': ..., 'optimizer': ...}
with `module.` prefixes when trained on several GPUs (both unwrapped by the loader). `STGANAgent.test()`
calls `eval()`: BatchNorm uses its running statistics (per-sample, so conditions can be stacked).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advwm.victims.attgan import ATTGAN_ATTRS
from advwm.victims.base import Victim, check_attribute_count
from advwm.victims.stargan import stargan_conditions

# CDMAA's STGAN: the 13 attributes of the original STGAN / AttGAN CelebA models.
STGAN_ATTRS: tuple[str, ...] = ATTGAN_ATTRS


def _tile(a: Tensor, like: Tensor) -> Tensor:
    """Attribute vector [B, n] -> map [B, n, H, W] with the spatial size of `like`."""
    return a.to(like.dtype).view(a.shape[0], a.shape[1], 1, 1).expand(-1, -1, like.shape[2], like.shape[3])


def _gate(n_in: int, n_out: int, kernel_size: int, activation: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, kernel_size, 1, (kernel_size - 1) // 2, bias=False),
        nn.BatchNorm2d(n_out),
        activation,
    )


class ConvGRUCell(nn.Module):
    """Selective transfer unit: a ConvGRU over encoder features, its state carried from the deeper level."""

    def __init__(self, n_attrs: int, in_dim: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.n_attrs = n_attrs
        self.upsample = nn.ConvTranspose2d(in_dim * 2 + n_attrs, out_dim, 4, 2, 1, bias=False)
        self.reset_gate = _gate(in_dim + out_dim, out_dim, kernel_size, nn.Sigmoid())
        self.update_gate = _gate(in_dim + out_dim, out_dim, kernel_size, nn.Sigmoid())
        self.hidden = _gate(in_dim + out_dim, out_dim, kernel_size, nn.Tanh())

    def forward(self, feature: Tensor, old_state: Tensor, attr: Tensor) -> tuple[Tensor, Tensor]:
        """(output, new state) for the encoder feature of this level, the deeper state and the attributes."""
        state_hat = self.upsample(torch.cat([old_state, _tile(attr, old_state)], dim=1))
        both = torch.cat([feature, state_hat], dim=1)
        r = self.reset_gate(both)
        z = self.update_gate(both)
        new_state = r * state_hat
        hidden = self.hidden(torch.cat([feature, new_state], dim=1))
        return (1 - z) * state_hat + z * hidden, new_state


def _up(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(n_in, n_out, 4, 2, 1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU(inplace=True)
    )


class Generator(nn.Module):
    """STGAN generator: `n_layers` stride-2 convs, STU shortcuts on `shortcut_layers` levels, mirrored decoder."""

    def __init__(
        self,
        attr_dim: int = 13,
        conv_dim: int = 64,
        n_layers: int = 5,
        shortcut_layers: int = 2,
        stu_kernel_size: int = 3,
        use_stu: bool = True,
        one_more_conv: bool = True,
    ) -> None:
        super().__init__()
        self.n_attrs = attr_dim
        self.n_layers = n_layers
        self.shortcut_layers = min(shortcut_layers, n_layers - 1)
        self.use_stu = use_stu

        self.encoder = nn.ModuleList()
        n_in = 3
        for i in range(n_layers):
            n_out = conv_dim * 2**i
            self.encoder.append(
                nn.Sequential(
                    nn.Conv2d(n_in, n_out, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(n_out),
                    nn.LeakyReLU(negative_slope=0.2, inplace=True),
                )
            )
            n_in = n_out

        if use_stu:  # deepest shortcut level first
            self.stu = nn.ModuleList(
                ConvGRUCell(attr_dim, conv_dim * 2**i, conv_dim * 2**i, stu_kernel_size)
                for i in reversed(range(n_layers - 1 - self.shortcut_layers, n_layers - 1))
            )

        self.decoder = nn.ModuleList()
        top = conv_dim * 2 ** (n_layers - 1)
        for i in range(n_layers - 1):
            n_out = conv_dim * 2 ** (n_layers - 1 - i)
            if i == 0:
                n_in = top + attr_dim
            elif i <= self.shortcut_layers:
                n_in = 3 * n_out  # previous decoder output (2 * n_out) + the shortcut (n_out)
            else:
                n_in = 2 * n_out
            self.decoder.append(_up(n_in, n_out))
        n_in = conv_dim * 3 if self.shortcut_layers == n_layers - 1 else conv_dim * 2
        if one_more_conv:
            self.decoder.append(
                nn.Sequential(
                    nn.ConvTranspose2d(n_in, conv_dim // 4, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(conv_dim // 4),
                    nn.ReLU(inplace=True),
                    nn.ConvTranspose2d(conv_dim // 4, 3, 3, 1, 1, bias=False),
                    nn.Tanh(),
                )
            )
        else:
            self.decoder.append(nn.Sequential(nn.ConvTranspose2d(n_in, 3, 4, 2, 1, bias=False), nn.Tanh()))

    def forward(self, x: Tensor, a: Tensor) -> Tensor:
        """Edited image for inputs x [B, 3, H, W] (H, W divisible by 2**n_layers) and differences a [B, n]."""
        if a.dim() != 2 or a.shape[1] != self.n_attrs or a.shape[0] != x.shape[0]:
            raise ValueError(
                f"STGAN: attribute difference must be [{x.shape[0]}, {self.n_attrs}], got {tuple(a.shape)}"
            )
        factor = 2**self.n_layers
        if x.dim() != 4 or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"STGAN: input must be [B, 3, H, W] with H, W divisible by {factor}, got {tuple(x.shape)}")
        features = []
        out = x
        for layer in self.encoder:
            out = layer(out)
            features.append(out)
        out = self.decoder[0](torch.cat([features[-1], _tile(a, features[-1])], dim=1))
        state = features[-1]
        for i in range(1, self.shortcut_layers + 1):
            if self.use_stu:
                shortcut, state = self.stu[i - 1](features[-(i + 1)], state, a)
            else:
                shortcut = features[-(i + 1)]
            out = self.decoder[i](torch.cat([out, shortcut], dim=1))
        for i in range(self.shortcut_layers + 1, self.n_layers):
            out = self.decoder[i](out)
        return out


def stgan_conditions(
    c_org: Tensor,
    attrs: Sequence[str],
    domains: Sequence[str] | None = None,
    scale: float = 1.0,
    reconstruction: bool = False,
) -> list[Tensor]:
    """Attribute-difference conditions: (c_trg - c_org) * scale for each edited attribute in `domains`.

    c_trg is `STGANAgent.create_labels` (= StarGAN's rule: a hair colour is set with the other selected hair
    colours cleared, any other attribute flipped). `STGANAgent.test()` uses scale 1 (entries in {-1, 0, 1});
    the training-time samples use scale thres_int and start with the all-zero reconstruction difference.
    """
    attrs = list(attrs)
    chosen = attrs if domains is None else list(domains)
    targets = stargan_conditions(c_org, attrs)
    differences = [torch.zeros_like(c_org)] if reconstruction else []
    differences += [(targets[attrs.index(name)] - c_org) * scale for name in chosen]
    return differences


class STGANVictim(Victim):
    """STGAN in eval mode; conditions = attribute differences, one per domain, named after the attribute.

    `domains` picks the edited attributes (default: all `attrs`). `scaled=True` multiplies the differences
    by `thres_int` (the training-time sampling semantics) and `reconstruction=True` prepends the all-zero
    difference (condition name 'reconstruction'); the defaults are `STGANAgent.test()`'s.
    """

    name = "stgan"
    official_mode = "eval"
    stackable = True

    def __init__(
        self,
        network: Generator,
        image_size: int = 256,
        attrs: Sequence[str] = STGAN_ATTRS,
        domains: Sequence[str] | None = None,
        thres_int: float = 0.5,
        scaled: bool = False,
        reconstruction: bool = False,
    ) -> None:
        attrs = tuple(attrs)
        check_attribute_count("stgan", network, "n_attrs", attrs, label="attr_dim")
        if domains is not None:
            domains = tuple(str(d) for d in domains)
            missing = [d for d in domains if d not in attrs]
            if missing:
                raise ValueError(f"stgan: domains {missing} are not among the generator's attrs {list(attrs)}")
            if not domains or len(set(domains)) != len(domains):
                raise ValueError(f"stgan: domains must be non-empty and distinct, got {list(domains)}")
        super().__init__(network, image_size, attrs)
        self.domains: tuple[str, ...] = attrs if domains is None else domains
        self.thres_int = float(thres_int)
        self.scaled = bool(scaled)
        self.reconstruction = bool(reconstruction)

    @property
    def condition_names(self) -> list[str]:
        return (["reconstruction"] if self.reconstruction else []) + list(self.domains)

    def conditions(self, labels: Tensor) -> list[Tensor]:
        scale = self.thres_int if self.scaled else 1.0
        return stgan_conditions(self.selected_labels(labels), self.attrs, self.domains, scale, self.reconstruction)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        return self.network(x, condition)
