"""`watermark.pt`: what a run writes and the one place that reads it back (protect, tests, scripts).

A run saves a dict so that the file says what it is and how far to trust it::

    {"format": "advwm.watermark/v1", "scope": "universal", "watermark": tensor [3,S,S] in [-eps, eps],
     "eps": float, "image_size": S, "victims": {name: "official" | "random"},
     "advwm_version": str, "config": <the run's resolved config as YAML>}

(per image: "perturbations" [N,3,S,S] and "names" [N] instead of "watermark"). Files of older runs, a
bare tensor or a bare {"perturbations", "names"} dict, still load, with a warning that they carry no
metadata. Loading goes through `torch.load(weights_only=True)`, so a pickle that would run code is
refused, and every check failure is a `WatermarkError` whose message is one line saying what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import advwm
from advwm.run_files.torch_file import read_torch_file

FORMAT = "advwm.watermark/v1"
SCOPES = ("universal", "per_image")
EPS_TOLERANCE = 1e-5  # float32 rounding of values clamped to exactly eps
NO_METADATA = ("carries no metadata (written by an older advwm): its eps, image size and victims are unknown, "
               "so it was checked only for shape and finite values")


class WatermarkError(ValueError):
    """The file is not a watermark advwm can use; the message (one line) says why and what to do."""


@dataclass
class WatermarkFile:
    """A checked watermark file: the tensor(s) and what the run that wrote it knew."""

    path: Path
    scope: str
    watermark: torch.Tensor | None = None  # universal: [3,S,S]
    perturbations: torch.Tensor | None = None  # per image: [N,3,S,S]
    names: list[str] = field(default_factory=list)
    eps: float | None = None
    image_size: int | None = None
    victims: dict[str, str] = field(default_factory=dict)
    advwm_version: str | None = None
    config: Any = None
    has_metadata: bool = True
    warnings: list[str] = field(default_factory=list)

    @property
    def random_victims(self) -> list[str]:
        """Victims the watermark was crafted against with random weights: it protects against nothing real."""
        return sorted(name for name, weights in self.victims.items() if weights == "random")

    @property
    def tensor(self) -> torch.Tensor:
        """The perturbation whatever the scope ([3,S,S] or [N,3,S,S])."""
        value = self.watermark if self.scope == "universal" else self.perturbations
        assert value is not None
        return value


def payload(scope: str, tensor: torch.Tensor, names: list[str] | None = None, *, eps: float, image_size: int,
            victims: dict[str, str] | None = None, config: Any = None) -> dict[str, Any]:
    """The dict a run saves as watermark.pt (see the module docstring)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    data: dict[str, Any] = {"format": FORMAT, "scope": scope, "eps": float(eps), "image_size": int(image_size),
                            "victims": dict(victims or {}), "advwm_version": advwm.__version__, "config": config}
    if scope == "universal":
        data["watermark"] = tensor.detach().cpu()
    else:
        data["perturbations"] = tensor.detach().cpu()
        data["names"] = list(names or [])
    return data


def load_watermark(path: str | Path, scope: str | None = None) -> WatermarkFile:
    """Read and check `path`; `scope` ("universal" / "per_image") refuses the other kind."""
    path = Path(path).expanduser()
    raw = _read(path)
    file = _interpret(path, raw)
    _check(file)
    if scope is not None and file.scope != scope:
        if file.scope == "per_image":
            raise WatermarkError(f"{path} holds per-image perturbations (scope=per_image); their protected faces "
                                 "are already in the run's protected/ folder")
        raise WatermarkError(f"{path} holds a universal watermark, not per-image perturbations")
    return file


def _read(path: Path) -> Any:
    if not path.exists():
        raise WatermarkError(f"{path} does not exist: pass the watermark.pt of a finished run")
    if not path.is_file():
        raise WatermarkError(f"{path} is not a file: pass the watermark.pt of a finished run")
    return read_torch_file(path, WatermarkError, kind="watermark file", holder="a watermark",
                           only="watermark files", file_name="watermark.pt")


def _interpret(path: Path, raw: Any) -> WatermarkFile:
    if isinstance(raw, torch.Tensor):
        return WatermarkFile(path, "universal", watermark=raw, has_metadata=False, warnings=[f"{path} {NO_METADATA}"])
    if not isinstance(raw, dict):
        raise WatermarkError(f"{path} is not an advwm watermark (it holds a {type(raw).__name__})")
    if "format" not in raw:
        if isinstance(raw.get("perturbations"), torch.Tensor):
            return WatermarkFile(path, "per_image", perturbations=raw["perturbations"],
                                 names=_names(path, raw.get("names", [])), has_metadata=False,
                                 warnings=[f"{path} {NO_METADATA}"])
        raise WatermarkError(f"{path} is not an advwm watermark (a dict without 'format'; "
                             f"keys: {sorted(map(str, raw))})")
    if raw["format"] != FORMAT:
        raise WatermarkError(f"{path} has format {raw['format']!r}; this advwm reads {FORMAT!r} (update advwm)")
    scope = raw.get("scope")
    if scope not in SCOPES:
        raise WatermarkError(f"{path}: scope {scope!r} is not one of {SCOPES}")
    key = "watermark" if scope == "universal" else "perturbations"
    if not isinstance(raw.get(key), torch.Tensor):
        raise WatermarkError(f"{path}: a {scope} watermark file needs a tensor under {key!r}")
    victims = raw.get("victims") or {}
    if not isinstance(victims, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in victims.items()):
        raise WatermarkError(f"{path}: 'victims' must map victim names to 'official' or 'random'")
    return WatermarkFile(path, scope, watermark=raw.get("watermark"), perturbations=raw.get("perturbations"),
                         names=_names(path, raw.get("names", [])) if scope == "per_image" else [],
                         eps=_number(path, raw, "eps", float), image_size=_number(path, raw, "image_size", int),
                         victims=dict(victims), advwm_version=raw.get("advwm_version"), config=raw.get("config"))


def _check(file: WatermarkFile) -> None:
    """Refuse what would damage a photo or silently do nothing: dtype, shape, non-finite values, |delta| > eps."""
    path, tensor = file.path, file.tensor
    if not tensor.is_floating_point():
        raise WatermarkError(f"{path} holds {tensor.dtype} values; a watermark is a floating-point tensor")
    expected = "[3,S,S]" if file.scope == "universal" else "[N,3,S,S]"
    dims = 3 if file.scope == "universal" else 4
    if tensor.dim() != dims or tensor.shape[-3] != 3 or tensor.shape[-1] != tensor.shape[-2] or tensor.shape[-1] < 1:
        raise WatermarkError(f"{path} holds a tensor of shape {list(tensor.shape)}; a {file.scope} watermark "
                             f"is {expected}")
    if file.image_size is not None and tensor.shape[-1] != file.image_size:
        raise WatermarkError(f"{path}: the watermark is {tensor.shape[-1]} px but its image_size says "
                             f"{file.image_size}")
    if file.scope == "per_image" and len(file.names) != tensor.shape[0]:
        raise WatermarkError(f"{path}: {tensor.shape[0]} perturbations but {len(file.names)} names")
    if not torch.isfinite(tensor).all():
        raise WatermarkError(f"{path} holds NaN or infinite values; the run that wrote it diverged")
    if file.eps is not None:
        if not (math.isfinite(file.eps) and file.eps > 0):
            raise WatermarkError(f"{path}: eps {file.eps} is not a positive number")
        largest = float(tensor.abs().max()) if tensor.numel() else 0.0
        if largest > file.eps + EPS_TOLERANCE:
            raise WatermarkError(f"{path}: |delta| reaches {largest:.6g}, above the watermark's eps {file.eps:g}; "
                                 "the file was altered or is not a crafted watermark")
    file.watermark = None if file.watermark is None else file.watermark.float()
    file.perturbations = None if file.perturbations is None else file.perturbations.float()


def _number(path: Path, raw: dict, key: str, kind: type) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WatermarkError(f"{path}: {key!r} must be a number, got {type(value).__name__}")
    return kind(value)


def _names(path: Path, names: Any) -> list[str]:
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise WatermarkError(f"{path}: 'names' must be a list of strings")
    return list(names)


