"""Checking a file against a victim's layout (or guessing the victim): missing, unexpected, mis-shaped keys, and
values that are not finite (a file of NaN weights has every key and shape right and makes every output NaN)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advwm.victims import checkpoints as ckpt
from advwm.victims.registry import VICTIM_NAMES, get_spec
from advwm.weights.errors import SHOW, ToolError, listing
from advwm.weights.layout import GENERATOR_KEYS, TRACKED, Layout, accepts, container_text, layout


# ---- comparing a file with a layout -------------------------------------------------------------------
@dataclass
class Comparison:
    victim: str
    container: str | None  # the container key the generator came from; None = a bare state_dict
    n_file: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshaped: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)  # keys whose values hold NaN or inf, with how many
    matched_keys: int = 0
    matched_shapes: int = 0
    error: str | None = None  # the file holds nothing usable for this victim
    note: str | None = None  # a generator in the wrong container (the runtime would not find it)

    @property
    def ok(self) -> bool:
        return self.error is None and self.note is None and not (
            self.missing or self.unexpected or self.misshaped or self.nonfinite)

    def score(self, expected: int) -> float:
        """0..1: how much of the union of keys agrees (key present on both sides, then shape equal)."""
        if self.error is not None:
            return 0.0
        union = max(expected, 1) + len(self.unexpected)
        return (self.matched_keys + self.matched_shapes) / (2 * union) * (0.9 if self.note else 1.0)

    def problems(self) -> list[str]:
        if self.error is not None:
            return [self.error]
        where = f"[{self.container!r}] " if self.container else ""
        lines = [self.note] if self.note else []
        if self.missing:
            lines.append(f"{where}{len(self.missing)} missing keys: {listing(self.missing)}")
        if self.unexpected:
            lines.append(f"{where}{len(self.unexpected)} unexpected keys: {listing(self.unexpected)}")
        if self.misshaped:
            lines.append(f"{where}{len(self.misshaped)} mis-shaped keys: {listing(self.misshaped)}")
        if self.nonfinite:
            lines.append(f"{where}{len(self.nonfinite)} keys hold values that are not finite (NaN or inf): "
                         f"{listing(self.nonfinite)}")
        return lines



def nonfinite_count(value: object) -> int:
    """How many entries of a floating-point tensor are NaN or inf (0 for anything else)."""
    if not torch.is_tensor(value) or not (value.is_floating_point() or value.is_complex()):
        return 0
    return int((~torch.isfinite(value)).sum())


def _compare_state(victim: str, lay: Layout, state: Mapping[str, torch.Tensor], container: str | None) -> Comparison:
    cmp = Comparison(victim=victim, container=container, n_file=len(state))
    for key, shape in lay.shapes.items():
        if key not in state:
            if key.rsplit(".", 1)[-1] != TRACKED:  # absent from pre-0.4.1 files; the loader tolerates it
                cmp.missing.append(key)
            continue
        cmp.matched_keys += 1
        got = tuple(state[key].shape)
        if got == tuple(shape):
            cmp.matched_shapes += 1
        else:
            cmp.misshaped.append(f"{key} {list(got)} vs expected {list(shape)}")
        bad = nonfinite_count(state[key])
        if bad:
            cmp.nonfinite.append(f"{key} ({bad} of {state[key].numel()})")
    cmp.unexpected = [k for k in state if k not in lay.shapes]
    return cmp


def compare(victim: str, lay: Layout, obj: object, path: Path) -> list[Comparison]:
    """Compare every generator the file holds for `victim` (as the runtime would unwrap it) with `lay`."""
    spec = get_spec(victim)
    keys = GENERATOR_KEYS.get(victim, spec.container_keys)
    present = [k for k in keys if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
    results = []
    for container in present or [None]:
        try:
            state = ckpt.unwrap_state_dict(victim, obj, path, (container,) if container else spec.container_keys)
        except ckpt.CheckpointError as err:
            results.extend(_misplaced(victim, lay, obj, path) or [Comparison(victim, container, 0, error=str(err))])
            continue
        results.append(_compare_state(victim, lay, state, container))
    return results


def _misplaced(victim: str, lay: Layout, obj: object, path: Path) -> list[Comparison]:
    """State dicts under container keys this victim does not use (another victim's file), compared anyway."""
    if not isinstance(obj, Mapping):
        return []
    results = []
    for key, value in obj.items():
        if isinstance(value, Mapping) and value and all(torch.is_tensor(v) for v in value.values()):
            state = ckpt.unwrap_state_dict(victim, obj, path, (key,))
            cmp = _compare_state(victim, lay, state, str(key))
            cmp.note = f"the file holds a state_dict under {key!r}; {victim} expects {container_text(get_spec(victim))}"
            results.append(cmp)
    return results


@dataclass
class CheckResult:
    path: Path
    victim: str | None
    ok: bool
    lines: list[str]


def _read(path: Path) -> object:
    """The project's safe loader (weights_only=True); a ToolError with a one-line reason otherwise."""
    try:
        return ckpt._read("file", path)
    except ckpt.CheckpointError as err:
        text = str(err)
        prefix = f"file: cannot load checkpoint {path}: "
        raise ToolError(text[len(prefix) :] if text.startswith(prefix) else text) from err


def check_file(
    path: str | Path, victim: str | None = None, arch: Mapping[str, Any] | None = None
) -> CheckResult:
    """Check one file against a victim's layout (or the best-matching victim when `victim` is None)."""
    path = Path(path).expanduser()
    arch = dict(arch or {})
    if not path.exists():
        return CheckResult(path, victim, False, [f"FAIL {victim or '?'}: no file at {path}"])
    if not path.is_file():
        return CheckResult(path, victim, False, [f"FAIL {victim or '?'}: {path} is not a file"])
    try:
        obj = _read(path)
    except ToolError as err:
        return CheckResult(path, victim, False, [f"FAIL {victim or '?'}: {path}: {err}"])
    lines: list[str] = []
    if victim is None:
        candidates = []
        for name in VICTIM_NAMES:
            try:
                lay = layout(name, arch if arch and accepts(get_spec(name), arch) else None)
            except ToolError:  # the overrides fit this victim's arguments but not its network: not this one
                continue
            results = compare(name, lay, obj, path)
            candidates.append((min(r.score(len(lay.shapes)) for r in results), name, lay, results))
        score, victim, lay, results = max(candidates, key=lambda c: c[0], default=(0.0, None, None, []))
        if score == 0.0 or victim is None or lay is None:
            top = list(obj.keys())[:SHOW] if isinstance(obj, Mapping) else type(obj).__name__
            return CheckResult(path, None, False, [f"FAIL ?: {path} matches no victim (top level: {top})"])
        lines.append(f"{path}: best match {victim} ({score:.0%} of keys and shapes agree)")
    else:
        lay = layout(victim, arch)
        results = compare(victim, lay, obj, path)
    if all(r.ok for r in results):
        where = ", ".join(f"[{r.container!r}]" for r in results if r.container)
        n_params = lay.n_parameters
        lines.append(
            f"OK {victim}: {path}{' ' + where if where else ''} matches {lay.describe()}: "
            f"{len(lay.shapes)} keys, {n_params:,} parameters"
        )
        return CheckResult(path, victim, True, lines)
    n_file = max(r.n_file for r in results)
    lines.append(
        f"FAIL {victim}: {path} does not match {lay.describe(f'{len(lay.shapes)} keys, file has {n_file}')}:"
    )
    lines.extend("  " + line for r in results for line in r.problems())
    return CheckResult(path, victim, False, lines)


