"""HiSD (imlixinyang/HiSD `core/networks.py::Gen`), as attacked by CMUA-Watermark at 256 px.

The generator is five parts with the official key layout (`encoder.*`, `decoder.*`, `extractors.model.*`,
`translators.<tag>.*`, `mappers.<tag>.*`), so the `gen_test` entry of the released checkpoint
(CMUA's `gen_00600000.pt`, the author's `checkpoint_256_celeba-hq.pt`: {'gen', 'gen_test'}) loads
strictly, every translator and mapper included. An edit of tag i with style s is
`decode(translate(encode(x), s, i))`; the style comes from a reference image (`extract(ref, i)`) or from
a latent code (`map(z, i, j)` for attribute j of tag i). The decoder ends with a 1x1 conv and no tanh:
outputs are unbounded.

Normalisation, as in the official code: the encoder/decoder's InstanceNorm and the translators' AdaIN
divide by the *unbiased* standard deviation plus eps (not sqrt(var + eps)); both are per sample, so the
network has no batch-dependent layer and no mode-dependent one (train/eval changes nothing; CMUA never
calls eval()). The official translator stores the AdaIN weight/bias on its layers during forward; here
they are passed through the blocks instead, so a forward never mutates the module.

Architectures are the official config files, by name (`yaml='celeba-hq_256.yaml'`, CMUA's; or
`'celeba-hq.yaml'`, the 128 px release) or a path to such a file; keyword arguments override its values
(one level deep for the `encoder`/`decoder`/... sections).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advwm.data.references import reference_image
from advwm.victims.base import Victim

# The official CelebA-HQ tags: (tag, attributes), in the order of `translators.<i>` / `mappers.<i>`.
HISD_TAGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Bangs", ("with", "without")),
    ("Eyeglasses", ("with", "without")),
    ("HairColor", ("black", "blond", "brown")),
)
DEFAULT_CONFIG = "celeba-hq_256.yaml"
CMUA_TAG = 1  # Eyeglasses: CMUA adds glasses, guided by one reference face
DEFAULT_REFERENCE = "grace_hopper"  # a bundled demo face that wears glasses

_SECTIONS = ("encoder", "decoder", "translators", "extractors", "mappers")
_INIT_TYPES = ("gaussian", "xavier", "kaiming", "orthogonal", "default")


def _official_tags() -> list[dict[str, Any]]:
    return [{"name": tag, "attributes": [{"name": a} for a in attrs]} for tag, attrs in HISD_TAGS]


def _official_config(extractor_channels: list[int]) -> dict[str, Any]:
    return {
        "style_dim": 256,
        "noise_dim": 32,
        "input_dim": 3,
        "init": "kaiming",
        "encoder": {"channels": [64, 128, 256]},
        "decoder": {"channels": [256, 128, 64]},
        "translators": {"channels": [64] * 8},
        "extractors": {"channels": extractor_channels},
        "mappers": {"pre_channels": [256, 256, 256], "post_channels": [256, 256, 256]},
        "tags": _official_tags(),
    }


# The generator part of the official config files (their data/training keys play no role at inference).
OFFICIAL_CONFIGS: dict[str, dict[str, Any]] = {
    "celeba-hq_256.yaml": _official_config([32, 64, 128, 256, 512, 512, 512]),  # 256 px, CMUA's victim
    "celeba-hq.yaml": _official_config([64, 128, 256, 512, 1024, 2048]),  # 128 px
}
OFFICIAL_IMAGE_SIZES: dict[str, int] = {"celeba-hq_256.yaml": 256, "celeba-hq.yaml": 128}


def _base_config(yaml: str | None) -> dict[str, Any]:
    if yaml is None:
        return {}
    name = str(yaml)
    for candidate in (name, f"{name}.yaml"):
        if candidate in OFFICIAL_CONFIGS:
            return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in OFFICIAL_CONFIGS[candidate].items()}
    path = Path(name).expanduser()
    if not path.is_file():
        raise ValueError(
            f"HiSD: unknown config {name!r}: neither an official one {sorted(OFFICIAL_CONFIGS)} nor a file"
        )
    import yaml as pyyaml

    loaded = pyyaml.safe_load(path.read_text())
    if not isinstance(loaded, Mapping):
        raise ValueError(f"HiSD: config file {path} does not hold a mapping")
    return dict(loaded)


def hisd_config(yaml: str | None = DEFAULT_CONFIG, **overrides: Any) -> dict[str, Any]:
    """The generator hyperparameters: an official config (name or file) updated with `overrides`.

    Overrides that are None are ignored; a section given as a mapping (`encoder={'channels': [...]}`)
    updates that section key by key (None values ignored too), so `mappers={'pre_channels': [...]}` keeps
    the post_channels and a Hydra config may hold `channels: null` for "as in the official file".
    """
    config = _base_config(yaml)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            section = {k: v for k, v in value.items() if v is not None}
            base = config.get(key)
            config[key] = {**base, **section} if isinstance(base, Mapping) else section
        else:
            config[key] = value
    missing = [k for k in ("style_dim", "noise_dim", "input_dim", "tags", *_SECTIONS) if k not in config]
    if missing:
        raise ValueError(f"HiSD: config lacks {missing} (give yaml= an official config or pass them)")
    return config


def _tag_spec(tags: Sequence[Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Official `tags` entries ({'name', 'attributes': [{'name', ...}]}) -> ((tag, (attributes...)), ...)."""
    spec = []
    for i, tag in enumerate(tags):
        if isinstance(tag, Mapping):
            name, attrs = str(tag.get("name", f"tag{i}")), tag.get("attributes")
        else:
            raise ValueError(f"HiSD: tag {i} must be a mapping with 'name' and 'attributes', got {tag!r}")
        if not attrs:
            raise ValueError(f"HiSD: tag {name!r} has no attributes")
        names = tuple(str(a["name"]) if isinstance(a, Mapping) else str(a) for a in attrs)
        spec.append((name, names))
    if not spec:
        raise ValueError("HiSD: at least one tag is needed")
    return tuple(spec)


def _channels(config: Mapping[str, Any], section: str, key: str = "channels", least: int = 1) -> list[int]:
    value = config[section].get(key) if isinstance(config[section], Mapping) else None
    if value is None or len(value) < least:
        raise ValueError(f"HiSD: {section}.{key} must list at least {least} channel counts, got {value!r}")
    return [int(c) for c in value]


def official_init(module: nn.Module, init_type: str) -> None:
    """`weights_init(init_type)` of the official trainer on every Conv2d/Linear (random weights only)."""
    if init_type not in _INIT_TYPES:
        raise ValueError(f"HiSD: unsupported init {init_type!r}; choose from {list(_INIT_TYPES)}")
    for m in module.modules():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        if init_type == "gaussian":
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif init_type == "xavier":
            nn.init.xavier_normal_(m.weight, gain=math.sqrt(2))
        elif init_type == "kaiming":
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif init_type == "orthogonal":
            nn.init.orthogonal_(m.weight, gain=math.sqrt(2))
        if m.bias is not None:
            nn.init.constant_(m.bias, 0.01)


# ---- normalisation ----------------------------------------------------------------------------------
def _std_normalise(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """(x - mean) / (std + eps) * weight + bias over H*W per sample and channel; std is unbiased.

    Computed as x * a + b with a = weight / (std + eps) and b = bias - mean * a per (sample, channel): one pass
    over the feature map after the statistics instead of four (sub, div, mul, add), and as few backward. The
    elementwise passes were a third of HiSD's CPU time (torch.profiler, 256 px); on a GPU they are memory-bound.
    """
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    std, mean = torch.std_mean(flat, dim=-1, keepdim=True)
    scale = weight / (std + eps)
    return torch.addcmul(bias - mean * scale, flat, scale).reshape(n, c, h, w)


class InstanceNorm2d(nn.Module):
    """The official InstanceNorm2d: learned weight/bias of shape [1, C, 1], std-based, per sample."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, num_features, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1))

    def forward(self, x: Tensor) -> Tensor:
        return _std_normalise(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return str(self.num_features)


class AdaptiveInstanceNorm2d(nn.Module):
    """AdaIN with the weight/bias [N or 1, C, 1] given per call (no parameters, nothing stored)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps

    def split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Take this layer's (weight, bias) off the front of `params`; official order: bias, then weight - 1."""
        c = self.num_features
        bias = params[:, :c].reshape(-1, c, 1)
        weight = params[:, c : 2 * c].reshape(-1, c, 1) + 1
        return weight, bias, params[:, 2 * c :]

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return _std_normalise(x, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return str(self.num_features)


# ---- blocks -----------------------------------------------------------------------------------------
def _activ(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


class DownBlock(nn.Module):
    """Residual down block without normalisation (extractors): keys conv1, conv2, sc."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, in_dim, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_dim, out_dim, 3, 1, 1)
        self.sc = nn.Conv2d(in_dim, out_dim, 1, 1, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        residual = F.avg_pool2d(self.sc(x), 2)
        out = self.conv2(_activ(F.avg_pool2d(self.conv1(_activ(x)), 2)))
        return (residual + out) / math.sqrt(2)


class DownBlockIN(nn.Module):
    """Residual down block with InstanceNorm (encoder): keys conv1, conv2, in1, in2, sc."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, in_dim, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_dim, out_dim, 3, 1, 1)
        self.in1 = InstanceNorm2d(in_dim)
        self.in2 = InstanceNorm2d(in_dim)
        self.sc = nn.Conv2d(in_dim, out_dim, 1, 1, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        residual = F.avg_pool2d(self.sc(x), 2)
        out = self.conv2(_activ(self.in2(F.avg_pool2d(self.conv1(_activ(self.in1(x))), 2))))
        return (residual + out) / math.sqrt(2)


class UpBlockIN(nn.Module):
    """Residual nearest-upsampling block with InstanceNorm (decoder): keys conv1, conv2, in1, in2, sc."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, 1, 1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, 1, 1)
        self.in1 = InstanceNorm2d(in_dim)
        self.in2 = InstanceNorm2d(out_dim)
        self.sc = nn.Conv2d(in_dim, out_dim, 1, 1, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        residual = F.interpolate(self.sc(x), scale_factor=2, mode="nearest")
        up = F.interpolate(_activ(self.in1(x)), scale_factor=2, mode="nearest")
        out = self.conv2(_activ(self.in2(self.conv1(up))))
        return (residual + out) / math.sqrt(2)


class MiddleBlock(nn.Module):
    """Residual block with two AdaIN layers (translators): keys conv1, conv2, sc."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, 1, 1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, 1, 1)
        self.adain1 = AdaptiveInstanceNorm2d(in_dim)
        self.adain2 = AdaptiveInstanceNorm2d(out_dim)
        self.sc = nn.Conv2d(in_dim, out_dim, 1, 1, 0, bias=False)

    @property
    def num_adain_params(self) -> int:
        return 2 * (self.adain1.num_features + self.adain2.num_features)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """The block's output and the AdaIN parameters left for the next blocks."""
        w1, b1, params = self.adain1.split(params)
        w2, b2, params = self.adain2.split(params)
        out = self.conv2(_activ(self.adain2(self.conv1(_activ(self.adain1(x, w1, b1))), w2, b2)))
        return (self.sc(x) + out) / math.sqrt(2), params


class LinearBlock(nn.Module):
    """ReLU then Linear (mappers): key `linear`."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(F.relu(x))


# ---- the parts --------------------------------------------------------------------------------------
class Extractors(nn.Module):
    """Image -> one style per tag; `forward(x, i)` returns tag i's style [N, style_dim]."""

    def __init__(self, input_dim: int, channels: Sequence[int], style_dim: int, num_tags: int) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.model = nn.Sequential(
            nn.Conv2d(input_dim, channels[0], 1, 1, 0),
            *[DownBlock(channels[i], channels[i + 1]) for i in range(len(channels) - 1)],
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels[-1], style_dim * num_tags, 1, 1, 0),
        )

    def forward(self, x: Tensor, i: int) -> Tensor:
        return self.model(x).view(x.shape[0], self.num_tags, -1)[:, i]


class Translator(nn.Module):
    """One tag's translator: AdaIN blocks driven by the style, then a mask blends new features into e."""

    def __init__(self, encoder_dim: int, channels: Sequence[int], decoder_dim: int, style_dim: int) -> None:
        super().__init__()
        blocks = [MiddleBlock(channels[i], channels[i + 1]) for i in range(len(channels) - 1)]
        self.model = nn.ModuleList([nn.Conv2d(encoder_dim, channels[0], 1, 1, 0), *blocks])
        self.style_to_params = nn.Linear(style_dim, sum(b.num_adain_params for b in blocks))
        self.features = nn.Sequential(nn.Conv2d(channels[-1], decoder_dim, 1, 1, 0))
        self.masks = nn.Sequential(nn.Conv2d(channels[-1], decoder_dim, 1, 1, 0), nn.Sigmoid())

    def forward(self, e: Tensor, s: Tensor) -> Tensor:
        """e [N, C, h, w] and s [N or 1, style_dim] (one style broadcast over the batch, as officially)."""
        params = self.style_to_params(s)
        mid = self.model[0](e)
        for block in self.model[1:]:
            mid, params = block(mid, params)
        m = self.masks(mid)
        return self.features(mid) * m + e * (1 - m)


class Mapper(nn.Module):
    """One tag's mapper: noise z -> the style of attribute j (shared trunk, one head per attribute)."""

    def __init__(
        self, noise_dim: int, pre_channels: Sequence[int], post_channels: Sequence[int], style_dim: int,
        num_attributes: int,
    ) -> None:
        super().__init__()
        self.pre_model = nn.Sequential(
            nn.Linear(noise_dim, pre_channels[0]),
            *[LinearBlock(pre_channels[i], pre_channels[i + 1]) for i in range(len(pre_channels) - 1)],
        )
        self.post_models = nn.ModuleList([
            nn.Sequential(
                *[LinearBlock(post_channels[i], post_channels[i + 1]) for i in range(len(post_channels) - 1)],
                nn.Linear(post_channels[-1], style_dim),
            )
            for _ in range(num_attributes)
        ])

    def forward(self, z: Tensor, j: int) -> Tensor:
        return self.post_models[j](self.pre_model(z))


class Generator(nn.Module):
    """HiSD's `Gen`: encoder, decoder, extractors, translators (one per tag), mappers (one per tag).

    Built from an official config (`yaml`, a name in OFFICIAL_CONFIGS or a file) with keyword overrides;
    `init` is the official trainer's weight initialisation (matters for random weights only).
    """

    def __init__(
        self,
        yaml: str | None = DEFAULT_CONFIG,
        style_dim: int | None = None,
        noise_dim: int | None = None,
        input_dim: int | None = None,
        encoder: Mapping[str, Any] | None = None,
        decoder: Mapping[str, Any] | None = None,
        translators: Mapping[str, Any] | None = None,
        extractors: Mapping[str, Any] | None = None,
        mappers: Mapping[str, Any] | None = None,
        tags: Sequence[Mapping[str, Any]] | None = None,
        init: str | None = None,
    ) -> None:
        super().__init__()
        config = hisd_config(
            yaml, style_dim=style_dim, noise_dim=noise_dim, input_dim=input_dim, encoder=encoder,
            decoder=decoder, translators=translators, extractors=extractors, mappers=mappers, tags=tags, init=init,
        )
        self.config = config
        self.tags = _tag_spec(config["tags"])
        self.style_dim = int(config["style_dim"])
        self.noise_dim = int(config["noise_dim"])
        self.input_dim = int(config["input_dim"])
        enc = _channels(config, "encoder")
        dec = _channels(config, "decoder")
        trans = _channels(config, "translators")
        ext = _channels(config, "extractors")
        pre = _channels(config, "mappers", "pre_channels")
        post = _channels(config, "mappers", "post_channels")
        if enc[-1] != dec[0]:
            raise ValueError(f"HiSD: encoder.channels[-1]={enc[-1]} must equal decoder.channels[0]={dec[0]} "
                             "(the translator blends its features into the encoding)")
        if pre[-1] != post[0]:
            raise ValueError(f"HiSD: mappers.pre_channels[-1]={pre[-1]} must equal post_channels[0]={post[0]}")
        self.encoder = nn.Sequential(
            nn.Conv2d(self.input_dim, enc[0], 1, 1, 0),
            *[DownBlockIN(enc[i], enc[i + 1]) for i in range(len(enc) - 1)],
        )
        self.decoder = nn.Sequential(
            *[UpBlockIN(dec[i], dec[i + 1]) for i in range(len(dec) - 1)],
            nn.Conv2d(dec[-1], self.input_dim, 1, 1, 0),
        )
        self.extractors = Extractors(self.input_dim, ext, self.style_dim, len(self.tags))
        self.translators = nn.ModuleList([Translator(enc[-1], trans, dec[0], self.style_dim) for _ in self.tags])
        self.mappers = nn.ModuleList([
            Mapper(self.noise_dim, pre, post, self.style_dim, len(attrs)) for _, attrs in self.tags
        ])
        self.downsampling = 2 ** (len(enc) - 1)  # input sides must be multiples of this
        self.extractor_downsampling = 2 ** (len(ext) - 1)  # reference sides must be at least this
        if config.get("init") is not None:
            official_init(self, str(config["init"]))

    @property
    def tag_names(self) -> list[str]:
        return [name for name, _ in self.tags]

    def tag_index(self, tag: int | str) -> int:
        """A tag given by index or name -> its index (translators/mappers/extractor slot)."""
        names = self.tag_names
        if isinstance(tag, str) and not tag.lstrip("-").isdigit():
            if tag not in names:
                raise ValueError(f"HiSD: unknown tag {tag!r}; tags: {names}")
            return names.index(tag)
        index = int(tag)
        if not 0 <= index < len(names):
            raise ValueError(f"HiSD: tag index {index} out of range; tags: {list(enumerate(names))}")
        return index

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, e: Tensor) -> Tensor:
        return self.decoder(e)

    def extract(self, x: Tensor, i: int) -> Tensor:
        return self.extractors(x, i)

    def map(self, z: Tensor, i: int, j: int) -> Tensor:
        return self.mappers[i](z, j)

    def translate(self, e: Tensor, s: Tensor, i: int) -> Tensor:
        return self.translators[i](e, s)

    def forward(self, x: Tensor, s: Tensor, i: int) -> Tensor:
        """Convenience (not in the official class): decode(translate(encode(x), s, i))."""
        return self.decode(self.translate(self.encode(x), s, i))


# ---- conditions -------------------------------------------------------------------------------------
def hisd_condition(style: Tensor, tag: int) -> Tensor:
    """Style rows [N, style_dim] of tag `tag` -> condition rows [N, style_dim + 1] (tag in the last column)."""
    column = torch.full((style.shape[0], 1), float(tag), dtype=style.dtype, device=style.device)
    return torch.cat([style, column], dim=1)


def split_condition(condition: Tensor) -> tuple[Tensor, Tensor]:
    """Condition rows [N, style_dim + 1] -> (styles [N, style_dim], tag indices [N] as int64)."""
    return condition[:, :-1], condition[:, -1].round().long()


def load_reference(reference: str | Path | Tensor | None, image_size: int) -> Tensor:
    """The reference face as [1, 3, S, S] in [-1, 1].

    None -> the bundled demo face 'grace_hopper' (she wears glasses); a demo face name ('astronaut',
    'grace_hopper', optionally '@mirror'); an image file (largest central square, resized to image_size,
    like CMUA's Resize(256) of a square reference); or a tensor [3, H, W] / [1, 3, H, W] used as given.
    """
    if isinstance(reference, Tensor):
        ref = reference.detach()
        if ref.dim() == 3:
            ref = ref.unsqueeze(0)
        if ref.dim() != 4 or ref.shape[:2] != (1, 3):
            raise ValueError(f"hisd: a reference tensor must be [3, H, W] or [1, 3, H, W], got {tuple(ref.shape)}")
        return ref.clone()
    return reference_image(DEFAULT_REFERENCE if reference is None else reference, image_size,
                           hint="(CMUA used HiSD's examples/reference_glasses_2.jpg)")


def latent_codes(
    network: Generator, seed: int, codes: Tensor | Sequence[Sequence[float]] | None = None
) -> dict[tuple[int, int], Tensor]:
    """One z [1, noise_dim] per (tag, attribute) of the network, drawn in that order from `seed` (CPU).

    Every pair gets its code whatever subset of tags a victim uses, so a name always means the same z.
    `codes` ([pairs, noise_dim], same order: tag 0's attributes first) replaces the draw with given codes.
    """
    pairs = [(i, j) for i, (_, attrs) in enumerate(network.tags) for j in range(len(attrs))]
    if codes is None:
        z = torch.randn(len(pairs), network.noise_dim, generator=torch.Generator().manual_seed(int(seed)))
    else:
        z = torch.as_tensor(codes, dtype=torch.float32) if not isinstance(codes, Tensor) else codes.detach()
        if tuple(z.shape) != (len(pairs), network.noise_dim):
            raise ValueError(f"hisd: latents must be [{len(pairs)}, {network.noise_dim}] (one code per "
                             f"(tag, attribute) pair), got {tuple(z.shape)}")
    return {pair: z[k : k + 1] for k, pair in enumerate(pairs)}


HiSDMode = Literal["reference", "latent", "both"]
MODES: tuple[str, ...] = ("reference", "latent", "both")


class HiSDVictim(Victim):
    """HiSD editing one or more tags; conditions are styles, which do not depend on the face's labels.

    Conditions, in this order (`tags` picks the tags, by index or name; default [1] = Eyeglasses, CMUA's):
    - mode 'reference' (CMUA's): for each tag i, s = extract(reference, i); named '<Tag>@ref', e.g.
      'Eyeglasses@ref'. `reference` is an image file, a demo face name or a tensor (default: the demo
      face 'grace_hopper', preprocessed to image_size in [-1, 1]; CMUA used HiSD's
      examples/reference_glasses_2.jpg).
    - mode 'latent': for each tag i and each of its attributes j, s = map(z_ij, i, j) with z_ij drawn from
      `latent_seed` (see `latent_codes`; `latents` gives the codes instead); named '<Tag>@latent-<attribute>',
      e.g. 'Eyeglasses@latent-with', 'HairColor@latent-blond'.
    - mode 'both': the reference conditions, then the latent ones.
    A condition tensor is [B, style_dim + 1]: the style, then the tag index in the last column, so the
    conditions stack with torch.cat and `forward` runs a stacked batch of mixed tags (rows grouped by tag).
    The styles are computed once, when the victim is built (the network is frozen).
    """

    name = "hisd"
    official_mode = "train"  # CMUA never calls eval(); HiSD has no mode-dependent layer anyway
    stackable = True  # InstanceNorm and AdaIN are per sample

    def __init__(
        self,
        network: Generator,
        image_size: int = 256,
        mode: HiSDMode = "reference",
        tags: Sequence[int | str] = (CMUA_TAG,),
        reference: str | Path | Tensor | None = None,
        latent_seed: int = 0,
        latents: Tensor | Sequence[Sequence[float]] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"hisd: mode must be one of {MODES}, got {mode!r}")
        super().__init__(network, image_size, attrs=())
        step = network.downsampling
        if self.image_size % step:
            raise ValueError(f"hisd: image_size={self.image_size} must be a multiple of {step} "
                             f"(the encoder halves it {step.bit_length() - 1} times)")
        tag_ids = [network.tag_index(t) for t in tags]
        if not tag_ids or len(set(tag_ids)) != len(tag_ids):
            raise ValueError(f"hisd: tags must list distinct tags, got {list(tags)}")
        self.mode = mode
        self.tags = tuple(tag_ids)
        self.latent_seed = int(latent_seed)
        param = next(network.parameters())
        ref = load_reference(reference, self.image_size).to(param.device, param.dtype)
        if min(ref.shape[-2:]) < network.extractor_downsampling:
            raise ValueError(
                f"hisd: the reference is {ref.shape[-1]} px but the extractor halves it "
                f"{network.extractor_downsampling.bit_length() - 1} times: use a larger image_size or fewer "
                "extractors.channels"
            )
        self.register_buffer("reference", ref, persistent=False)
        names: list[str] = []
        rows: list[Tensor] = []
        used_codes: list[Tensor] = []
        with torch.no_grad():
            if mode in ("reference", "both"):
                for i in self.tags:
                    names.append(f"{network.tag_names[i]}@ref")
                    rows.append(hisd_condition(network.extract(ref, i), i))
            if mode in ("latent", "both"):
                codes = latent_codes(network, self.latent_seed, latents)
                for i in self.tags:
                    tag, attrs = network.tags[i]
                    for j, attr in enumerate(attrs):
                        z = codes[(i, j)].to(param.device, param.dtype)
                        names.append(f"{tag}@latent-{attr}")
                        rows.append(hisd_condition(network.map(z, i, j), i))
                        used_codes.append(z)
        self._names = names
        # Non-persistent: follows .to(device), stays out of state_dicts and Lightning checkpoints.
        self.register_buffer("condition_rows", torch.cat(rows), persistent=False)  # [K, style_dim + 1]
        empty = torch.zeros(0, network.noise_dim, dtype=param.dtype, device=param.device)
        self.register_buffer("latents", torch.cat(used_codes) if used_codes else empty, persistent=False)

    @property
    def condition_names(self) -> list[str]:
        return list(self._names)

    def conditions(self, labels: Tensor) -> list[Tensor]:
        """One [B, style_dim + 1] tensor per condition (the same style on every row; labels only give B)."""
        batch = self.selected_labels(labels).shape[0]
        return [row.unsqueeze(0).repeat(batch, 1) for row in self.condition_rows]

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        network: Generator = self.network  # type: ignore[assignment]
        width = network.style_dim + 1
        if condition.dim() != 2 or condition.shape[1] != width or condition.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"hisd: condition must be [{x.shape[0]}, {width}] (style, tag), "
                             f"got {tuple(condition.shape)}")
        condition = condition.to(x.dtype)
        styles, tags = split_condition(condition)
        present = torch.unique(tags).tolist()
        bad = [t for t in present if not 0 <= t < len(network.tags)]
        if bad:
            raise ValueError(f"hisd: tag index {bad} out of range; tags: {network.tag_names}")
        if len(present) == 1:  # one tag (the usual case): one translator call, the style broadcasts
            # through the network's forward, so that victims.hisd.compile (torch.compile(network)) compiles it:
            # the methods encode/translate/decode of a compiled module run eagerly
            return network(x, styles, present[0])
        e = network.encode(x)
        parts, rows = [], []
        for tag in present:
            index = (tags == tag).nonzero().squeeze(1)
            parts.append(network.translate(e.index_select(0, index), styles.index_select(0, index), tag))
            rows.append(index)
        order = torch.cat(rows)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return network.decode(torch.cat(parts).index_select(0, inverse))
