"""`generator.pt`: what a `scope=amortized` run writes and the one place that reads it back (protect, tests, scripts).

A run saves a dict so that the file says what it is and how far to trust it::

    {"format": "advwm.generator/v1", "architecture": {"width": int, "depth": int}, "state_dict": {name: tensor},
     "eps": float, "image_size": S, "victims": {name: "official" | "random"}, "advwm_version": str,
     "config": <the run's resolved config as YAML>}

Written atomically (`advwm.run_files.io.torch_save`), like watermark.pt. Loading goes through
`torch.load(weights_only=True)`, so a pickle that would run code is refused, and every check failure is a
`GeneratorError` whose message is one line saying what is wrong: a missing, empty or truncated file, another kind of
file, metadata that is not what a run writes, weights that do not fit the architecture the file names, or weights
that are not finite.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import advwm
from advwm.attacks.generator import ARCHITECTURE_KEYS, PerturbationGenerator
from advwm.run_files.torch_file import read_torch_file

FORMAT = "advwm.generator/v1"


class GeneratorError(ValueError):
    """The file is not a generator advwm can use; the message (one line) says why and what to do."""


@dataclass
class GeneratorFile:
    """A checked generator file: the network (eval mode, frozen) and what the run that wrote it knew."""

    path: Path
    generator: PerturbationGenerator
    eps: float
    image_size: int
    victims: dict[str, str] = field(default_factory=dict)
    advwm_version: str | None = None
    config: Any = None

    @property
    def random_victims(self) -> list[str]:
        """Victims it was trained against with random weights: it protects against nothing real."""
        return sorted(name for name, weights in self.victims.items() if weights == "random")

    @torch.no_grad()
    def delta(self, faces: torch.Tensor) -> torch.Tensor:
        """Each face's perturbation [F,3,S,S] within [-eps, eps], one forward pass (faces [F,3,S,S] in [-1, 1])."""
        if faces.shape[0] == 0:
            return torch.empty(0, 3, self.image_size, self.image_size)
        return self.generator(faces.float())


def payload(generator: PerturbationGenerator, *, eps: float, image_size: int, victims: dict[str, str] | None = None,
            config: Any = None) -> dict[str, Any]:
    """The dict a run saves as generator.pt (see the module docstring)."""
    return {"format": FORMAT, "architecture": generator.architecture(),
            "state_dict": {name: value.detach().cpu().clone() for name, value in generator.state_dict().items()},
            "eps": float(eps), "image_size": int(image_size), "victims": dict(victims or {}),
            "advwm_version": advwm.__version__, "config": config}


def holds_generator(path: str | Path) -> bool:
    """Whether `path` is a file whose format says generator (a cheap look, no checks: `load_generator` checks)."""
    path = Path(path).expanduser()
    if not path.is_file() or path.suffix != ".pt":
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable: not ours to judge here; the loader that follows says why
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT


def load_generator(path: str | Path) -> GeneratorFile:
    """Read and check `path`; the generator comes back in eval mode with its weights frozen."""
    path = Path(path).expanduser()
    raw = _read(path)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        what = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise GeneratorError(f"{path} is not an advwm generator (it holds {what!r}, not {FORMAT!r}): pass the "
                             "generator.pt of a scope=amortized run")
    architecture = raw.get("architecture")
    if not isinstance(architecture, dict) or sorted(architecture) != sorted(ARCHITECTURE_KEYS) or not (
            _whole(architecture["width"]) and _whole(architecture["depth"]) and _number(architecture["gain"])
            and architecture["width"] >= 1 and architecture["depth"] >= 1 and 0 < architecture["gain"] < math.inf):
        raise GeneratorError(f"{path}: 'architecture' must give width and depth (whole numbers >= 1) and gain (a "
                             f"number > 0), got {architecture!r}")
    eps, image_size = raw.get("eps"), raw.get("image_size")
    if not (_number(eps) and math.isfinite(eps) and 0 < eps <= 1):
        raise GeneratorError(f"{path}: eps {eps!r} is not a number in (0, 1]")
    if not (_whole(image_size) and image_size >= 1):
        raise GeneratorError(f"{path}: image_size {image_size!r} is not a whole number >= 1")
    victims = raw.get("victims") or {}
    if not isinstance(victims, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in victims.items()):
        raise GeneratorError(f"{path}: 'victims' must map victim names to 'official' or 'random'")
    generator = PerturbationGenerator(float(eps), **architecture)
    _load_weights(path, generator, raw.get("state_dict"))
    generator.eval().requires_grad_(False)
    return GeneratorFile(path, generator, float(eps), int(image_size), dict(victims), raw.get("advwm_version"),
                         raw.get("config"))


def _load_weights(path: Path, generator: PerturbationGenerator, weights: Any) -> None:
    """The saved weights into `generator`, refusing missing or extra names, other shapes and non-finite values."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise GeneratorError(f"{path}: 'state_dict' must map parameter names to tensors")
    expected = generator.state_dict()
    named = ", ".join(f"{k}={v}" for k, v in generator.architecture().items())
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise GeneratorError(f"{path}: its weights do not fit the architecture it names ({named}): "
                             f"{len(missing)} missing (e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]})")
    for name, value in weights.items():
        if value.shape != expected[name].shape:
            raise GeneratorError(f"{path}: its weights do not fit the architecture it names ({named}): {name} is "
                                 f"{list(value.shape)}, that architecture needs {list(expected[name].shape)}")
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise GeneratorError(f"{path}: weight {name} holds non-finite or non-float values; the run that wrote it "
                                 "diverged or the file was altered")
    generator.load_state_dict({k: v.float() for k, v in weights.items()})


def _read(path: Path) -> Any:
    if not path.is_file():
        raise GeneratorError(f"{path} {'is not a file' if path.exists() else 'does not exist'}: pass the generator.pt "
                             "of a finished scope=amortized run")
    return read_torch_file(path, GeneratorError, kind="generator file", holder="a generator file", only="files",
                           file_name="generator.pt")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


