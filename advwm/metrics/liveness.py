"""Liveness of the fakes: a PyTorch port of HyperFAS (the face anti-spoofing model the papers use).

The released model is a Keras 2.2.4 HDF5 file (`fas.h5`, zeusees/HyperFAS, BSD-3-Clause). It is read here with
``h5py`` alone: the layer graph comes from the file's ``model_config`` JSON (a plain chain of Conv2D,
DepthwiseConv2D, BatchNormalization, Activation, Flatten and Dense layers), the weights from ``model_weights/``.
Keras details that a port must honour: kernels are HWIO (depthwise: H, W, C, 1), BatchNorm epsilon comes from the
config (1e-3), ``padding='same'`` is TensorFlow's (for stride 2 on an even size the extra row/column goes at the
bottom/right), and ``Flatten`` runs on NHWC, so the last feature map is permuted before flattening.

Model input (what `HyperFAS.forward` takes): ``[B, 3, 224, 224]`` float, **BGR** channel order, NCHW, values
``(v - 127.5) / 127.5`` for 8-bit pixel values ``v`` (so in [-1, 1]). Output: ``[B]`` scores in (0, 1), the
probability that the face is real.

From our images ([-1, 1] RGB ``[B, 3, H, W]``) `hyperfas_input` builds that input. The pixel scaling is the identity
((x + 1) * 127.5 = v, then (v - 127.5) / 127.5 = x); the work is the face crop, the resize and the channel flip.
Two crop rules:

* ``boxes=None`` (default; for aligned faces such as CelebA): a fixed central square of side
  ``crop_fraction * min(H, W)`` (default 0.75), centred, optionally moved down by ``shift_y * side``.
  Why 0.75: the reference demo crops a square of side 1.2 * max(w, h) of the detector (MTCNN) box. On an aligned
  CelebA face after the reference's centre crop 170 (eyes at y ~ 87, mouth at y ~ 128, centre x ~ 85 in the
  170 x 170 crop, from CelebA's aligned landmark positions), an MTCNN-sized box is about 86 x 108 px, so the
  square is about 130 px = 0.76 of the image, centred horizontally and about 0.08 of the side below the centre.
  These are estimates from landmark geometry, not detector runs; ``shift_y`` defaults to 0 (a plain central
  crop, as agreed for the evaluation) and can be set to ~0.08 to follow the estimate more closely.
* ``boxes`` given (one detector box ``(x1, y1, x2, y2)`` in pixels per image): the reference rule,
  `reference_square_crop` (square of half-side ``int(0.6 * max(w, h))`` around the box centre, clipped).

With ``quantize=True`` (default) the image is rounded to 8 bits before the crop and after the resize, as in the
reference (an 8-bit image, ``cv2.resize`` on uint8); resizing is bilinear with half-pixel centres and no
antialiasing, as ``cv2.INTER_LINEAR``. cv2 works in 11-bit fixed point on uint8, so against ``cv2.resize`` about
one pixel in eight differs by one grey level (never more; measured on a smooth 192 -> 224 upscale).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

__all__ = [
    "HYPERFAS_SHA256",
    "HYPERFAS_SOURCE",
    "HyperFAS",
    "Liveness",
    "LivenessWeightsMissing",
    "central_crop",
    "hyperfas_input",
    "load_hyperfas",
    "reference_square_crop",
]

HYPERFAS_INPUT_SIZE = 224
HYPERFAS_SHA256 = "db3014e5c16ad4535ea106f3f7572fb250d6753b28970140c3feec4ef8b8b6bd"
HYPERFAS_SOURCE = (
    "https://github.com/zeusees/HyperFAS (file model/fas.h5, BSD-3-Clause; "
    f"sha256 {HYPERFAS_SHA256}; raw: https://github.com/zeusees/HyperFAS/raw/master/model/fas.h5)"
)


class LivenessWeightsMissing(FileNotFoundError):
    """The HyperFAS weights file is not where it was looked for."""


# --------------------------------------------------------------------------------------------------- the network


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'same' padding along one axis: (before, after); the odd pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _KerasConv(nn.Module):
    """Conv2D / DepthwiseConv2D with Keras padding semantics ('same' or 'valid'), weights as PyTorch OIHW."""

    def __init__(self, conv: nn.Conv2d, padding: str) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"unsupported Keras padding {padding!r}")
        self.conv = conv
        self.keras_padding = padding

    def forward(self, x: Tensor) -> Tensor:
        if self.keras_padding == "same":
            (kh, kw), (sh, sw), (dh, dw) = self.conv.kernel_size, self.conv.stride, self.conv.dilation
            top, bottom = _same_padding(x.shape[-2], kh, sh, dh)
            left, right = _same_padding(x.shape[-1], kw, sw, dw)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return self.conv(x)


class _FlattenNHWC(nn.Module):
    """Keras ``Flatten`` on a channels_last tensor, given our NCHW layout."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


_ACTIVATIONS = {"linear": None, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def _activation(name: str) -> nn.Module | None:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported Keras activation {name!r}")
    cls = _ACTIVATIONS[name]
    return cls() if cls is not None else None


class HyperFAS(nn.Module):
    """The HyperFAS network: input ``[B, 3, 224, 224]`` BGR in [-1, 1] (NCHW), output ``[B]`` live scores.

    Always in eval mode (``train()`` is a no-op) and frozen: BatchNorm uses the stored statistics whatever a
    surrounding LightningModule does.
    """

    def __init__(self, layers: nn.Sequential, input_size: int = HYPERFAS_INPUT_SIZE) -> None:
        super().__init__()
        self.layers = layers
        self.input_size = input_size
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> HyperFAS:  # always eval: BatchNorm must keep its stored statistics
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"HyperFAS expects [B, 3, {self.input_size}, {self.input_size}] BGR input, got {tuple(x.shape)}"
            )
        return self.layers(x).reshape(x.shape[0])


def _read_weights(group: Any, layer: str) -> dict[str, Tensor]:
    """{short name: tensor} of one layer's datasets, e.g. {'kernel': ..., 'bias': ...}."""
    out: dict[str, Tensor] = {}
    if layer not in group:
        return out
    layer_group = group[layer]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in layer_group.attrs.get("weight_names", [])]
    for full in names:
        short = full.split("/")[-1].split(":")[0]
        out[short] = torch.from_numpy(layer_group[full][()].copy())
    return out


def _build_layer(
    cls: str, cfg: dict[str, Any], weights: dict[str, Tensor], channels: int
) -> tuple[list[nn.Module], int]:
    """One Keras layer -> PyTorch modules and the channel count after it."""
    if cls == "InputLayer":
        return [], channels
    if cls in ("Conv2D", "DepthwiseConv2D"):
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ValueError("only channels_last Keras models are supported")
        kernel_size = tuple(cfg["kernel_size"])
        stride = tuple(cfg["strides"])
        dilation = tuple(cfg.get("dilation_rate", (1, 1)))
        use_bias = bool(cfg.get("use_bias", True))
        if cls == "Conv2D":
            kernel = weights["kernel"]  # H, W, in, out
            out_channels = int(cfg["filters"])
            conv = nn.Conv2d(channels, out_channels, kernel_size, stride, 0, dilation, bias=use_bias)
            conv.weight.data.copy_(kernel.permute(3, 2, 0, 1))
        else:
            kernel = weights["depthwise_kernel"]  # H, W, C, multiplier
            mult = int(cfg.get("depth_multiplier", 1))
            out_channels = channels * mult
            conv = nn.Conv2d(channels, out_channels, kernel_size, stride, 0, dilation, groups=channels, bias=use_bias)
            # Keras output channel c*mult + m comes from input channel c with kernel[..., c, m].
            conv.weight.data.copy_(kernel.reshape(*kernel.shape[:2], out_channels).permute(2, 0, 1).unsqueeze(1))
        if use_bias:
            conv.bias.data.copy_(weights["bias"])
        modules: list[nn.Module] = [_KerasConv(conv, cfg["padding"])]
        act = _activation(cfg.get("activation", "linear"))
        return modules + ([act] if act is not None else []), out_channels
    if cls == "BatchNormalization":
        if cfg.get("axis", -1) not in (-1, 3, [-1], [3]):
            raise ValueError(f"BatchNormalization over axis {cfg.get('axis')} is not supported")
        bn = nn.BatchNorm2d(channels, eps=float(cfg["epsilon"]))
        bn.weight.data.copy_(weights["gamma"] if cfg.get("scale", True) else torch.ones(channels))
        bn.bias.data.copy_(weights["beta"] if cfg.get("center", True) else torch.zeros(channels))
        bn.running_mean.copy_(weights["moving_mean"])
        bn.running_var.copy_(weights["moving_variance"])
        return [bn], channels
    if cls == "Activation":
        act = _activation(cfg["activation"])
        return ([act] if act is not None else []), channels
    if cls == "Flatten":
        return [_FlattenNHWC()], -1
    if cls == "Dense":
        kernel = weights["kernel"]  # in, out
        use_bias = bool(cfg.get("use_bias", True))
        linear = nn.Linear(kernel.shape[0], kernel.shape[1], bias=use_bias)
        linear.weight.data.copy_(kernel.t())
        if use_bias:
            linear.bias.data.copy_(weights["bias"])
        act = _activation(cfg.get("activation", "linear"))
        return [linear] + ([act] if act is not None else []), kernel.shape[1]
    raise ValueError(f"unsupported Keras layer class {cls!r}")


def load_hyperfas(path: str | Path) -> HyperFAS:
    """Build HyperFAS from the released Keras file (h5py only). Raises `LivenessWeightsMissing` if absent."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LivenessWeightsMissing(
            f"HyperFAS weights not found at {path}. Get fas.h5 from {HYPERFAS_SOURCE} and point the liveness "
            f"metric's weights path at it."
        )
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
        if raw is None:
            raise ValueError(f"{path} has no model_config: not a Keras HDF5 model file")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        layers_cfg = config["config"]["layers"]
        group = f["model_weights"] if "model_weights" in f else f
        modules: list[nn.Module] = []
        channels = -1
        previous: str | None = None
        for layer in layers_cfg:
            name, cls, cfg = layer["name"], layer["class_name"], layer["config"]
            inbound = [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            if cls == "InputLayer":
                shape = cfg["batch_input_shape"]
                if list(shape[1:]) != [HYPERFAS_INPUT_SIZE, HYPERFAS_INPUT_SIZE, 3]:
                    raise ValueError(f"unexpected input shape {shape}")
                channels = 3
            elif inbound != [previous]:
                raise ValueError(f"layer {name} is not a plain chain (inputs {inbound}); not a HyperFAS file?")
            new, channels = _build_layer(cls, cfg, _read_weights(group, name), channels)
            modules.extend(new)
            previous = name
    model = HyperFAS(nn.Sequential(*modules))
    return model


# ------------------------------------------------------------------------------------------------ preprocessing


def reference_square_crop(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """The reference demo's crop for a detector box ``(x1, y1, x2, y2)``: returns ``(x1, y1, x2, y2)``, end-exclusive.

    Arithmetic as in the reference: box corners truncated to integers and clipped (start to >= 0, end to <= size-1),
    half-side ``r = int(0.6 * max(w, h))``, centre ``((x1 + x2) // 2, (y1 + y2) // 2)``, crop
    ``[max(c - r, 0), min(c + r, size - 2))`` on each axis (the reference clips the end at size - 2; kept for
    fidelity). Near the border the crop is not square; it is resized to 224 x 224 all the same.
    One quirk is not reproduced: the reference's detector returns (y1, x1, y2, x2) and its first clip bounds the
    box's row end by width - 1 and column end by height - 1 (swapped axes); here each axis uses its own size.
    """
    bx1, by1, bx2, by2 = (int(v) for v in box)
    bx1, by1 = max(bx1, 0), max(by1, 0)
    bx2, by2 = min(bx2, width - 1), min(by2, height - 1)
    r = int(max(bx2 - bx1, by2 - by1) * 0.6)
    cx, cy = (bx1 + bx2) // 2, (by1 + by2) // 2
    x1, y1 = max(cx - r, 0), max(cy - r, 0)
    x2, y2 = min(cx + r, width - 2), min(cy + r, height - 2)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty crop for box {tuple(box)} in a {height}x{width} image")
    return x1, y1, x2, y2


def central_crop(height: int, width: int, fraction: float = 0.75, shift_y: float = 0.0) -> tuple[int, int, int, int]:
    """A central square of side ``round(fraction * min(H, W))``, moved down by ``shift_y * side``; end-exclusive."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    side = max(1, round(fraction * min(height, width)))
    x1 = (width - side) // 2
    y1 = (height - side) // 2 + round(shift_y * side)
    y1 = min(max(y1, 0), height - side)
    return x1, y1, x1 + side, y1 + side


def hyperfas_input(
    images: Tensor,
    boxes: Sequence[Sequence[float]] | Tensor | None = None,
    crop_fraction: float = 0.75,
    shift_y: float = 0.0,
    quantize: bool = True,
) -> Tensor:
    """Our images ([-1, 1] RGB ``[B, 3, H, W]``) -> HyperFAS input ``[B, 3, 224, 224]`` float32 (BGR, (v-127.5)/127.5).

    ``boxes=None``: `central_crop` with ``crop_fraction``/``shift_y`` (aligned faces). Otherwise one detector box
    per image and `reference_square_crop`. See the module docstring for the rules and ``quantize``.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected [B, 3, H, W] RGB images, got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if boxes is not None and len(boxes) != batch:
        raise ValueError(f"got {len(boxes)} boxes for {batch} images")
    pixels = (images.double().clamp(-1.0, 1.0) + 1.0) * 127.5  # float64: exact 8-bit rounding
    if quantize:
        pixels = pixels.round()
    out = []
    for i in range(batch):
        if boxes is None:
            x1, y1, x2, y2 = central_crop(height, width, crop_fraction, shift_y)
        else:
            box = boxes[i].tolist() if isinstance(boxes, Tensor) else boxes[i]
            x1, y1, x2, y2 = reference_square_crop(box, height, width)
        crop = pixels[i : i + 1, :, y1:y2, x1:x2]
        size = (HYPERFAS_INPUT_SIZE, HYPERFAS_INPUT_SIZE)
        if crop.shape[-2:] != size:
            crop = F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=False)
        out.append(crop)
    v = torch.cat(out)
    if quantize:
        v = v.round().clamp(0.0, 255.0)
    v = v.flip(1)  # RGB -> BGR
    return ((v - 127.5) / 127.5).float()


# ------------------------------------------------------------------------------------------------------ metric


class Liveness(Metric):
    """ACS (mean live score) and TFHC (share of scores > ``threshold``), pooled over updates.

    ``update(x)`` takes either scores ``[B]`` (from `HyperFAS` applied by the caller) or images ``[B, 3, H, W]``
    in [-1, 1] RGB, in which case ``model`` (a `HyperFAS`) must be given and the images go through
    `hyperfas_input` with ``preprocess_kwargs`` (default: the aligned-face central crop). The evaluation runs it on
    fake(clean) ("before") and on fake(protected) ("after").
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        threshold: float = 0.99,
        model: HyperFAS | None = None,
        preprocess_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.model = model
        self.preprocess_kwargs = dict(preprocess_kwargs or {})
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("high", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def scores(self, images: Tensor) -> Tensor:
        """Live scores [B] of [-1, 1] RGB images with the attached model."""
        if self.model is None:
            raise ValueError("Liveness got images but no model: pass model=load_hyperfas(path), or give scores")
        x = hyperfas_input(images, **self.preprocess_kwargs)
        param = next(self.model.parameters())
        return self.model(x.to(device=param.device, dtype=param.dtype))

    def update(self, x: Tensor) -> None:
        """Add scores ``[B]`` (or ``[B, 1]``) or images ``[B, 3, H, W]`` (needs ``model``)."""
        if x.dim() == 4:
            s = self.scores(x)
        elif x.dim() == 1 or (x.dim() == 2 and x.shape[1] == 1):
            s = x.reshape(-1)
        else:
            raise ValueError(f"expected scores [B] or images [B, 3, H, W], got {tuple(x.shape)}")
        s = s.detach().double()
        self.score_sum += s.sum().to(self.score_sum.device)
        self.high += (s > self.threshold).sum().to(self.high.device)
        self.total += torch.tensor(s.numel(), dtype=torch.long, device=self.total.device)

    def compute(self) -> dict[str, Tensor]:
        """{'acs': mean score, 'tfhc': share above the threshold} (NaN before any score)."""
        if int(self.total) == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64)
            return {"acs": nan, "tfhc": nan.clone()}
        n = self.total.double()
        return {"acs": self.score_sum / n, "tfhc": self.high.double() / n}
