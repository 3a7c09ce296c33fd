"""AttGAN (elvisyjlin/AttGAN-PyTorch `attgan.py::Generator` + `nn.py` blocks), as attacked by CMUA.

Key layout is the official one (`enc_layers.<i>.layers.<j>...`, `dec_layers...`), so `weights.199.pth`
({'G': state_dict}) of experiment `256_shortcut1_inject0_none` loads as is. CMUA calls `eval()`, so
BatchNorm uses its running statistics (per-sample, hence conditions can be stacked into one batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advwm.victims.base import Victim, check_attribute_count

ATTGAN_ATTRS: tuple[str, ...] = (
    "Bald",
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Eyeglasses",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "No_Beard",
    "Pale_Skin",
    "Young",
)
MAX_DIM = 64 * 16  # channel cap of the reference architecture


def _norm(fn: str, n_out: int) -> list[nn.Module]:
    if fn == "none":
        return []
    if fn == "batchnorm":
        return [nn.BatchNorm2d(n_out)]
    if fn == "instancenorm":
        return [nn.InstanceNorm2d(n_out, affine=True)]
    raise ValueError(f"AttGAN: unsupported normalization {fn!r} (use 'none', 'batchnorm' or 'instancenorm')")


def _acti(fn: str) -> list[nn.Module]:
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "lrelu": nn.LeakyReLU,  # default slope 0.01, as in the reference
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
    }
    if fn == "none":
        return []
    if fn not in table:
        raise ValueError(f"AttGAN: unsupported activation {fn!r} (use 'none' or one of {sorted(table)})")
    return [table[fn]()]


class Conv2dBlock(nn.Module):
    """conv (bias only without norm) -> norm -> activation, in a `layers` Sequential like the reference."""

    def __init__(self, n_in: int, n_out: int, norm_fn: str, acti_fn: str, transpose: bool = False) -> None:
        super().__init__()
        conv_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
        conv = conv_cls(n_in, n_out, kernel_size=4, stride=2, padding=1, bias=(norm_fn == "none"))
        self.layers = nn.Sequential(conv, *_norm(norm_fn, n_out), *_acti(acti_fn))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Generator(nn.Module):
    """AttGAN encoder-decoder: `shortcut_layers` U-Net skips, `inject_layers` attribute re-injections."""

    def __init__(
        self,
        enc_dim: int = 64,
        enc_layers: int = 5,
        enc_norm_fn: str = "batchnorm",
        enc_acti_fn: str = "lrelu",
        dec_dim: int = 64,
        dec_layers: int = 5,
        dec_norm_fn: str = "batchnorm",
        dec_acti_fn: str = "relu",
        n_attrs: int = 13,
        shortcut_layers: int = 1,
        inject_layers: int = 0,
        img_size: int = 256,
    ) -> None:
        super().__init__()
        if img_size % 2**enc_layers:
            raise ValueError(
                f"AttGAN: img_size={img_size} must be divisible by 2**enc_layers={2**enc_layers}"
            )
        self.n_attrs = n_attrs
        self.img_size = img_size
        self.shortcut_layers = min(shortcut_layers, dec_layers - 1)
        self.inject_layers = min(inject_layers, dec_layers - 1)
        self.f_size = img_size // 2**enc_layers

        enc: list[nn.Module] = []
        n_in = 3
        for i in range(enc_layers):
            n_out = min(enc_dim * 2**i, MAX_DIM)
            enc.append(Conv2dBlock(n_in, n_out, enc_norm_fn, enc_acti_fn))
            n_in = n_out
        self.enc_layers = nn.ModuleList(enc)

        dec: list[nn.Module] = []
        n_in = n_in + n_attrs
        for i in range(dec_layers - 1):
            n_out = min(dec_dim * 2 ** (dec_layers - i - 1), MAX_DIM)
            dec.append(Conv2dBlock(n_in, n_out, dec_norm_fn, dec_acti_fn, transpose=True))
            n_in = n_out
            if i < self.shortcut_layers:
                n_in += n_out // 2  # the matching encoder feature has half the channels
            if i < self.inject_layers:
                n_in += n_attrs
        dec.append(Conv2dBlock(n_in, 3, "none", "tanh", transpose=True))
        self.dec_layers = nn.ModuleList(dec)

    def _tile(self, a: Tensor, size: int) -> Tensor:
        return a.view(a.shape[0], -1, 1, 1).expand(-1, -1, size, size)

    def encode(self, x: Tensor) -> list[Tensor]:
        """All encoder features, shallow to deep (the decoder's skips read from this list)."""
        if x.dim() != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"AttGAN: input must be [B, 3, {self.img_size}, {self.img_size}] (this generator's img_size; "
                f"the attribute map is tiled to a fixed {self.f_size}x{self.f_size}), "
                f"got {tuple(x.shape)}"
            )
        zs = []
        z = x
        for layer in self.enc_layers:
            z = layer(z)
            zs.append(z)
        return zs

    def decode(self, zs: list[Tensor], a: Tensor) -> Tensor:
        """Decode the deepest feature concatenated with the tiled attribute vector a [B, n_attrs]."""
        if a.dim() != 2 or a.shape[1] != self.n_attrs or a.shape[0] != zs[-1].shape[0]:
            raise ValueError(
                f"AttGAN: attributes must be [{zs[-1].shape[0]}, {self.n_attrs}], got {tuple(a.shape)}"
            )
        a = a.to(zs[-1].dtype)
        z = torch.cat([zs[-1], self._tile(a, self.f_size)], dim=1)
        for i, layer in enumerate(self.dec_layers):
            z = layer(z)
            if i < self.shortcut_layers:
                z = torch.cat([z, zs[len(self.dec_layers) - 2 - i]], dim=1)
            if i < self.inject_layers:
                z = torch.cat([z, self._tile(a, self.f_size * 2 ** (i + 1))], dim=1)
        return z

    def forward(self, x: Tensor, a: Tensor | None = None, mode: str = "enc-dec") -> Tensor | list[Tensor]:
        """Official signature: 'enc-dec' (image, attrs) -> image; 'enc' -> features; 'dec' decodes."""
        if mode == "enc-dec":
            if a is None:
                raise ValueError("AttGAN: mode 'enc-dec' needs the attribute vector a")
            return self.decode(self.encode(x), a)
        if mode == "enc":
            return self.encode(x)
        if mode == "dec":
            if a is None:
                raise ValueError("AttGAN: mode 'dec' needs the attribute vector a")
            return self.decode(x, a)  # type: ignore[arg-type]
        raise ValueError(f"AttGAN: unknown mode {mode!r} (use 'enc-dec', 'enc' or 'dec')")


def check_attribute_conflict(att: Tensor, edited: str, attrs: Sequence[str]) -> Tensor:
    """Vectorised reference `check_attribute_conflict` (AttGAN data.py), applied in place and returned.

    For faces where the edited attribute is now non-zero, related attributes that are non-zero are set to
    `1 - att[edited]` (0 for 0/1 labels); related names absent from `attrs` are ignored.
    """
    if edited in ("Bald", "Receding_Hairline"):
        related = ["Bangs"]
    elif edited == "Bangs":
        related = ["Bald", "Receding_Hairline"]
    elif edited in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"):
        related = [n for n in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair") if n != edited]
    elif edited in ("Straight_Hair", "Wavy_Hair"):
        related = [n for n in ("Straight_Hair", "Wavy_Hair") if n != edited]
    elif edited in ("Mustache", "No_Beard"):
        related = [n for n in ("Mustache", "No_Beard") if n != edited]
    else:
        return att
    k = list(attrs).index(edited)
    value = att[:, k]
    on = value != 0
    for name in related:
        if name in attrs:
            j = list(attrs).index(name)
            att[:, j] = torch.where(on & (att[:, j] != 0), 1 - value, att[:, j])
    return att


def attgan_conditions(
    att_a: Tensor, attrs: Sequence[str], thres_int: float = 0.5, test_int: float = 1.0
) -> list[Tensor]:
    """CMUA / AttGAN test-time conditions: reconstruction, then each attribute flipped (conflicts resolved).

    Encoded (a*2-1)*thres_int; the edited entry is rescaled by test_int/thres_int (to +-1 by default).
    """
    att_b_list = [att_a.clone()]
    for i, name in enumerate(attrs):
        tmp = att_a.clone()
        tmp[:, i] = 1 - tmp[:, i]
        att_b_list.append(check_attribute_conflict(tmp, name, attrs))
    conditions = []
    for i, att_b in enumerate(att_b_list):
        c = (att_b * 2 - 1) * thres_int
        if i > 0:
            c[:, i - 1] = c[:, i - 1] * test_int / thres_int
        conditions.append(c)
    return conditions


class AttGANVictim(Victim):
    """AttGAN in eval mode; 1 + n_attrs conditions named 'reconstruction' then the attribute names."""

    name = "attgan"
    official_mode = "eval"
    stackable = True

    def __init__(
        self,
        network: Generator,
        image_size: int = 256,
        attrs: Sequence[str] = ATTGAN_ATTRS,
        thres_int: float = 0.5,
        test_int: float = 1.0,
    ) -> None:
        attrs = tuple(attrs)
        check_attribute_count("attgan", network, "n_attrs", attrs)
        img_size = getattr(network, "img_size", None)
        if img_size is not None and img_size != image_size:
            raise ValueError(f"attgan: generator img_size={img_size} differs from image_size={image_size}")
        if thres_int == 0:
            raise ValueError("attgan: thres_int must be non-zero")
        super().__init__(network, image_size, attrs)
        self.thres_int = float(thres_int)
        self.test_int = float(test_int)

    @property
    def condition_names(self) -> list[str]:
        return ["reconstruction", *self.attrs]

    def conditions(self, labels: Tensor) -> list[Tensor]:
        return attgan_conditions(self.selected_labels(labels), self.attrs, self.thres_int, self.test_int)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        return self.network(x, condition)
