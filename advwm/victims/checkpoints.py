"""Safe loading of official generator checkpoints.

Files are read with `torch.load(weights_only=True)`, so a pickle that would run code is refused rather
than executed. Official containers are unwrapped (bare state_dict, {'G': ...}, {'gen_test': ...},
{'state_dict': ...}), a DataParallel `module.` prefix is stripped, and only an exact key/shape match is
accepted (apart from `num_batches_tracked`, which pre-0.4.1 files lack and which never affects outputs).
Every failure is one line naming the victim and the file, so a wrong path in a sweep is obvious.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

_PREFIX = "module."
_TRACKED = "num_batches_tracked"
_SHOW = 5


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used for this victim (unreadable, unsafe, or mismatched)."""


class CheckpointNotFoundError(FileNotFoundError):
    """No file at the checkpoint path; the message says where the official weights come from."""


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _read(victim_name: str, path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            reason = (
                "refused by torch.load(weights_only=True): the file holds objects other than tensors and "
                "plain containers (it could run code when unpickled)"
            )
        else:
            reason = f"not a readable checkpoint ({_one_line(first, 160)})"
        raise CheckpointError(f"{victim_name}: cannot load checkpoint {path}: {reason}") from err
    except Exception as err:  # truncated zip, wrong format, I/O error: all reported the same way
        reason = _one_line(f"{type(err).__name__}: {err}", 200)
        raise CheckpointError(
            f"{victim_name}: cannot load checkpoint {path}: corrupt, truncated or not a torch file ({reason})"
        ) from err


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def unwrap_state_dict(
    victim_name: str, obj: object, path: Path, container_keys: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """The generator's state_dict in a loaded checkpoint: a container key if present, else the bare dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{victim_name}: checkpoint {path} holds a {type(obj).__name__}, expected a state_dict "
            f"or a dict with one of the keys {list(container_keys)}"
        )
    for key in container_keys:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    else:
        if not _is_state_dict(obj):
            keys = [str(k) for k in obj.keys()]
            raise CheckpointError(
                f"{victim_name}: checkpoint {path} is neither a bare state_dict nor a container with one of "
                f"the keys {list(container_keys)} (top-level keys: {_listing(keys)})"
            )
    bad = [str(k) for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{victim_name}: checkpoint {path} has non-tensor entries: {_listing(bad)}")
    state = OrderedDict((str(k), v) for k, v in obj.items())
    metadata = getattr(obj, "_metadata", None)
    if state and all(k.startswith(_PREFIX) for k in state):
        state = OrderedDict((k[len(_PREFIX) :], v) for k, v in state.items())
        if metadata is not None:
            metadata = OrderedDict(
                (k[len(_PREFIX) :] if k.startswith(_PREFIX) else k, v) for k, v in metadata.items()
            )
    if metadata is not None:
        state._metadata = metadata  # type: ignore[attr-defined]  # module versions for load_state_dict
    return state


def check_state_dict(victim_name: str, model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Exact key/shape check against the model; fills missing num_batches_tracked from the model in place."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    tolerated = [k for k in missing if k.rsplit(".", 1)[-1] == _TRACKED]
    missing = [k for k in missing if k not in tolerated]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_listing(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
        if misshaped:
            parts.append(f"{len(misshaped)} mis-shaped keys ({_listing(misshaped)})")
        raise CheckpointError(
            f"{victim_name}: checkpoint {path} does not match the {victim_name} generator "
            f"({type(model).__name__}, {len(expected)} keys; file has {len(state)}): " + "; ".join(parts)
        )
    for key in tolerated:  # a counter only; absent from pre-0.4.1 files, never affects outputs
        state[key] = expected[key].clone()


def checkpoint_path(victim_name: str, path: str | Path, source_hint: str = "") -> Path:
    """The checkpoint as a Path to an existing file; checked before building a (possibly huge) network."""
    path = Path(path).expanduser()
    if not path.exists():
        hint = f" {source_hint}" if source_hint else ""
        raise CheckpointNotFoundError(f"{victim_name}: checkpoint not found: {path}.{hint}")
    if not path.is_file():
        raise CheckpointError(f"{victim_name}: checkpoint path {path} is not a file")
    return path


def load_checkpoint_into(
    victim_name: str,
    model: nn.Module,
    path: str | Path,
    container_keys: Sequence[str] = (),
    *,
    source_hint: str = "",
) -> None:
    """Load an official checkpoint file into `model` (strict), or raise a one-line, actionable error."""
    path = checkpoint_path(victim_name, path, source_hint)
    state = unwrap_state_dict(victim_name, _read(victim_name, path), path, container_keys)
    check_state_dict(victim_name, model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # e.g. a dtype that cannot be copied; keep the one-line contract
        raise CheckpointError(f"{victim_name}: checkpoint {path}: {_one_line(str(err), 300)}") from err
