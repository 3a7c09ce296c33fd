"""What a checkpoint must share with the run that resumes it, and what it must hold: checked before any work.

Why: resuming used to compare nine settings. `attack.step_size=0.05` or `eot=sharing` resumed from a checkpoint of
another config ran to the end and wrote a watermark 0.06-0.09 away from the uninterrupted one; a perturbation
multiplied by 100 in a checkpoint was resumed into a `watermark.pt` 2.5 times over eps.

The signature is built BY CONSTRUCTION: every leaf of the run's resolved config, minus `MAY_CHANGE` (the keys that
change where files go, what is logged or shown, how fast, or when the run stops: never what is crafted), plus what
the config only points to: each victim's weights as their content hash (the path may move, the bytes may not
change), and, once the faces are read, the crafting list (names, files, crops, labels, order) as one hash. A key a
later version or a user adds is covered without anyone remembering to list it.

The checkpoint's content is checked too: the perturbation finite, within eps, of this run's shape; the attack's
state finite and of the perturbation's shapes; and a digest over everything the checkpoint holds, written with it,
so random bytes anywhere in it are caught (`torch.load` reads a damaged tensor without complaint).

    signature = resume_signature(cfg)                 # {"eps": 0.05, "attack.step_size": 0.01, ...}
    signature_difference(saved, signature)            # "the checkpoint was written with attack.step_size=0.01, ..."
    checkpoint_problem(cfg.ckpt_path, cfg)            # one phrase naming ckpt_path, or None
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

SIGNATURE_VERSION = 2  # checkpoints without it (older advwm) cannot be checked, so they are refused
# Keys (dotted; `*` matches one level, a key also covers everything below it) that may differ between a checkpoint
# and the run resuming it. Each changes where outputs go, what is logged or shown, how fast it runs or when it stops.
MAY_CHANGE: tuple[str, ...] = (
    "hydra", "task_name", "paths", "ckpt_path", "objective", "logger",
    "checkpoint_every",                    # how often a checkpoint is written
    "callbacks.checkpoint", "callbacks.snapshots", "callbacks.progress", "callbacks.export.output_dir",
    "trainer.max_steps",                   # cuts a run short; resuming with a larger one is the normal use
    # (trainer.max_epochs: PASSES, below)
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",  # where it runs (DDP's
    # processes share each batch so that their union is one process's batch: tests/test_metrics_ddp.py)
    "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.num_sanity_val_steps", "trainer.default_root_dir", "trainer.plugins",
    "execution.channels_last", "execution.compile", "victims.*.channels_last", "victims.*.compile",  # speed only
    "victims.*.micro_batch",               # by design the same gradients, whatever the chunking (tests/test_chunking)
    "victims.*.checkpoint",                # a path: the weights' content hash is compared instead
    "weights",                             # the default of victims.*.weights, compared per victim as resolved
    "data.num_workers", "data.eval_batch_size",
    "study_name", "hparams_search_storage", "trial_heartbeat", "step_search",  # the search around a trial
)
# Judging settings: free to change where faces are judged only after crafting (universal: the held-out faces), not
# where each crafted batch is judged during crafting (per image), whose first batches the checkpoint judged already.
JUDGING: tuple[str, ...] = ("metrics", "callbacks.evaluation.settings")
# How many passes: like trainer.max_steps it only says when crafting stops (a larger one continues it: the resumed run
# equals the longer uninterrupted one), except where an attack's schedule spans the run (APGD on a universal
# watermark: `WatermarkAttack._schedule_length`), which a new length would change.
PASSES: tuple[str, ...] = ("trainer.max_epochs",)
CRAFT_FILES = "data.craft_files"  # the crafting list's hash: known once the faces are read (`craft_files_hash`)
EPS_SLACK = 1e-6  # float32 rounding of eps (0.05 is 0.0500000007 in float32); far below one grey level, 0.0078
UNSET = "unset"

_hashes: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256


def _matches(key: str, pattern: str) -> bool:
    """`pattern` names `key` or one of its ancestors, level by level (`*` stands for one level)."""
    parts, wanted = key.split("."), pattern.split(".")
    return len(wanted) <= len(parts) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=False))


def may_change(key: str, judged_after_crafting: bool = True, scheduled_over_run: bool = False) -> bool:
    """True when `key` (dotted) may differ between a checkpoint and its resume (see MAY_CHANGE, JUDGING, PASSES)."""
    patterns = MAY_CHANGE + (JUDGING if judged_after_crafting else ()) + (() if scheduled_over_run else PASSES)
    return any(_matches(key, pattern) for pattern in patterns)


def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256, cached by (path, size, mtime) so a run and its checks hash each weight file once."""
    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with resolved.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def _judged_after_crafting(cfg: DictConfig) -> bool:
    target = str(OmegaConf.select(cfg, "scope._target_", default="") or "")
    return not target.endswith("PerImage")


def _scheduled_over_run(cfg: DictConfig) -> bool:
    """The attack's schedule spans the whole run (APGD's `scheduled` optimizer on a universal watermark)."""
    import hydra

    try:
        optimizer = hydra.utils.get_class(str(OmegaConf.select(cfg, "attack.optimizer._target_")))
    except Exception:  # noqa: BLE001  (an attack we cannot name: assume it has a schedule, keep max_epochs)
        return True
    return bool(getattr(optimizer, "scheduled", False)) and _judged_after_crafting(cfg)


def _leaves(node: DictConfig, prefix: str, keep: Any) -> Iterable[tuple[str, Any]]:
    """(dotted key, resolved value) of every leaf kept by `keep(key)`; a key not kept is never resolved."""
    for name in node:
        key = f"{prefix}{name}"
        if not keep(key):
            continue
        child = node._get_node(name)
        if isinstance(child, DictConfig) and not child._is_none() and len(child):
            yield from _leaves(child, f"{key}.", keep)
        else:
            yield key, _plain(node[name])


def victim_weights(entry: DictConfig) -> tuple[str, str | None]:
    """("official", sha256) or ("random", None) as `advwm.pipeline.resolve_weights` chooses (a missing official file:
    ("missing", None), which that check reports); without raising, for a config not checked yet."""
    mode = str(entry.get("weights", "checkpoint"))
    path = entry.get("checkpoint")
    if mode == "random":
        return "random", None
    if path is not None and Path(str(path)).expanduser().is_file():
        return "official", file_sha256(str(path))
    return ("random", None) if mode == "auto" else ("missing", None)


def resume_signature(cfg: DictConfig) -> dict[str, Any]:
    """Dotted key -> value for every setting a checkpoint must share with the run resuming it (see the module)."""
    after, scheduled = _judged_after_crafting(cfg), _scheduled_over_run(cfg)
    signature = dict(_leaves(cfg, "", lambda key: not may_change(key, after, scheduled)))
    for name, entry in (cfg.get("victims") or {}).items():
        signature[f"victims.{name}.weights"], signature[f"victims.{name}.weights_sha256"] = victim_weights(entry)
    return signature


def craft_files_hash(items: Sequence[Any]) -> str:
    """One hash of the crafting faces in crafting order: name, file, crop, mirror and labels of each
    (`advwm.data.base.FaceItem`): a photo added, renamed, re-cropped or relabelled changes it."""
    rows = [[item.name, item.path, list(item.box) if item.box is not None else None, item.center_crop,
             bool(item.mirror), [float(v) for v in item.labels.flatten().tolist()]] for item in items]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _short(value: Any) -> str:
    """repr(value), cut to 60 characters; a cut one ends with a hash of the whole, so two values never look alike."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... (#{hashlib.sha256(text.encode()).hexdigest()[:8]})"


def _prefixes(keys: Iterable[str]) -> set[str]:
    """Every key and every ancestor of one ("a.b.c" -> "a", "a.b", "a.b.c")."""
    found = set()
    for key in keys:
        parts = key.split(".")
        found.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return found


def _described(key: str, saved: Mapping[str, Any], current: Mapping[str, Any],
               saved_names: set[str], current_names: set[str]) -> tuple[str, str, str]:
    """(name, its value in the checkpoint, in this run) for one differing key: a group chosen differently (its
    `_target_`) is named by the group and its classes; a key only one side has, by its first level that side
    lacks (`victims.attgan`), `unset` on the other side and `set` on its own."""
    if key.endswith("._target_"):
        group = key[: -len("._target_")]

        def side(values: Mapping[str, Any], names: set[str]) -> str:
            if key in values:
                return str(values[key]).rsplit(".", 1)[-1]
            if group in values:
                return _short(values[group])
            return "set" if group in names else UNSET
        return group, side(saved, saved_names), side(current, current_names)
    if key in saved and key in current:
        return key, _short(saved[key]), _short(current[key])
    lacking = current_names if key in saved else saved_names
    parts = key.split(".")
    name = next((p for p in (".".join(parts[:n]) for n in range(1, len(parts) + 1)) if p not in lacking), key)
    other = "set" if name in lacking else UNSET  # the other side has a group where this side has a value

    def own(values: Mapping[str, Any]) -> str:
        return _short(values[name]) if name in values else "set"
    return (name, own(saved), other) if key in saved else (name, other, own(current))


def signature_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                          partial: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """(name, value in the checkpoint, value in this run) of each setting that differs, in config order.
    `partial`: keys this run does not know yet (the crafting list before the faces are read): not compared."""
    keys = [k for k in current if k not in partial] + [k for k in saved if k not in current and k not in partial]
    saved_names, current_names = _prefixes(saved), _prefixes(current)
    differing: list[tuple[str, str, str]] = []
    for key in keys:
        if key in saved and key in current and saved[key] == current[key]:
            continue
        name, before, now = _described(key, saved, current, saved_names, current_names)
        if any(name == n or name.startswith(f"{n}.") for n, _, _ in differing):
            continue
        if before == now:  # e.g. two classes of one name in different modules: the values in full
            before, now = repr(saved.get(key, UNSET)), repr(current.get(key, UNSET))
        differing.append((name, before, now))
    return differing


def signature_difference(saved: Mapping[str, Any], current: Mapping[str, Any],
                         partial: Sequence[str] = ()) -> str | None:
    """The settings a checkpoint was written with that this run changes, as one phrase naming each (None: they
    agree); see `signature_differences`."""
    differing = signature_differences(saved, current, partial)
    if not differing:
        return None
    shown = [f"{name} ({before} there, {now} here)" for name, before, now in differing[:3]]
    rest = [name for name, _, _ in differing[3:]]
    more = f" and {len(rest)} more ({', '.join(rest[:5])}{', ...' if len(rest) > 5 else ''})" if rest else ""
    return (f"the checkpoint was written with other settings than this run's: {'; '.join(shown)}{more}: resume "
            "with the checkpoint's settings, or start a new run")


# ---- what the checkpoint holds ----------------------------------------------------------------------------------

def _feed(digest: Any, value: Any) -> None:
    """Fold one value of a checkpoint into `digest`, the same way after torch.save/torch.load as before."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
    elif isinstance(value, list | tuple):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"V{type(value).__name__}:{value!r}".encode())


DIGEST_KEY = "advwm_digest"


def checkpoint_digest(checkpoint: Mapping[str, Any]) -> str:
    """sha256 over everything in the checkpoint but the digest itself: tensors' bytes, numbers, names."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in checkpoint.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def _tensors(value: Any, where: str) -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{where}[{index}]")
    else:
        yield where, value


def _not_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not bool(torch.isfinite(value).all())
    return isinstance(value, float) and not math.isfinite(value)


def _perturbation_problem(delta: Any, what: str, eps: float, image_size: int, rows: int | None) -> str | None:
    if not isinstance(delta, torch.Tensor) or not delta.is_floating_point() or delta.dim() != 4:
        return f"its {what} is not a [rows, 3, H, W] tensor"
    if tuple(delta.shape[1:]) != (3, image_size, image_size):
        return (f"its {what} is {tuple(delta.shape)}, not [rows, 3, {image_size}, {image_size}] (image_size="
                f"{image_size})")
    if rows is not None and not 1 <= delta.shape[0] <= rows:
        return f"its {what} has {delta.shape[0]} rows, this run's scope and batch size give {rows}"
    if _not_finite(delta):
        return f"its {what} holds NaN or infinite values"
    largest = float(delta.abs().max()) if delta.numel() else 0.0
    if largest > eps + EPS_SLACK:
        return f"its {what} exceeds the budget (max |delta| {largest:.4g} > eps {eps:g})"
    return None


GENERATOR_PREFIX = "generator."  # scope=amortized: the module's generator (advwm.attacks.amortized)


def generator_weights(state: Mapping[str, Any]) -> dict[str, Any]:
    """The generator's weights in a module's state_dict ({} for a perturbation's checkpoint)."""
    return {k: v for k, v in state.items() if isinstance(k, str) and k.startswith(GENERATOR_PREFIX)}


def _generator_problem(weights: Mapping[str, Any], optimizers: Sequence[Any]) -> str | None:
    """scope=amortized: the weights finite floats, the optimiser's state finite and each tensor a scalar or shaped like
    a weight (their architecture is the config's, compared by the signature; the optimiser's own eps is Adam's
    epsilon, not the budget, which tanh enforces)."""
    for name, value in weights.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            return f"its generator weight {name} is not a floating-point tensor"
        if _not_finite(value):
            return f"its generator weight {name} holds NaN or infinite values"
    shapes = {()} | {tuple(value.shape) for value in weights.values()}
    for index, optimizer in enumerate(optimizers):
        for where, value in _tensors(optimizer, f"optimizer_states[{index}]"):
            if _not_finite(value):
                return f"its optimiser state ({where}) holds NaN or infinite values"
            if isinstance(value, torch.Tensor) and tuple(value.shape) not in shapes:
                return f"its optimiser state ({where}) is {tuple(value.shape)}, not shaped like a generator weight"
    return None


def content_problem(checkpoint: Mapping[str, Any], eps: float, image_size: int, rows: int | None) -> str | None:
    """What is wrong with a checkpoint's content, as a phrase (None: sound): the digest written with it, the
    perturbation (finite, within eps, this run's shape), the attack's state (finite; each tensor a scalar, one value
    per perturbation row, or the perturbation's shape; eps as this run's) and per-image perturbations kept by the
    export (finite, within eps)."""
    if DIGEST_KEY not in checkpoint:
        return "it has no content digest (written by an older advwm, or not by advwm)"
    if checkpoint[DIGEST_KEY] != checkpoint_digest(checkpoint):
        return "its content does not match the digest written with it (the file is damaged)"
    weights = generator_weights(checkpoint.get("state_dict") or {})
    if weights:
        return _generator_problem(weights, checkpoint.get("optimizer_states") or [])
    delta = (checkpoint.get("state_dict") or {}).get("perturbation")
    problem = _perturbation_problem(delta, "perturbation", eps, image_size, rows)
    if problem:
        return problem
    shapes = {(), (delta.shape[0],), tuple(delta.shape)}
    for index, optimizer in enumerate(checkpoint.get("optimizer_states") or []):
        for group in optimizer.get("param_groups", []):
            if not math.isclose(float(group.get("eps", eps)), eps, rel_tol=1e-9):
                return f"its attack state has eps={group.get('eps')}, this run has eps={eps}"
        for where, value in _tensors(optimizer, f"optimizer_states[{index}]"):
            if _not_finite(value):
                return f"its attack state ({where}) holds NaN or infinite values"
            if isinstance(value, torch.Tensor) and tuple(value.shape) not in shapes:
                return f"its attack state ({where}) is {tuple(value.shape)}, not shaped like the perturbation"
    for name, state in (checkpoint.get("callbacks") or {}).items():
        for index, saved in enumerate(state.get("per_image", []) if isinstance(state, Mapping) else []):
            problem = _perturbation_problem(saved, f"per-image perturbation of batch {index} ({name})", eps,
                                            image_size, None)
            if problem:
                return problem
    return None


def expected_rows(cfg: DictConfig) -> int | None:
    """The perturbation rows this run's scope and batch size give (None when the scope cannot be built yet)."""
    import hydra

    try:
        return int(hydra.utils.instantiate(cfg.scope).rows(int(cfg.data.batch_size)))
    except Exception:  # noqa: BLE001  (a bad scope or batch size is named by the config check itself)
        return None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint, mapped rather than read (its tensors are paged in as they are checked)."""
    return torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True, mmap=True)


def checkpoint_iteration(path: str | os.PathLike) -> int | None:
    """The attack iterations a checkpoint holds (None when it cannot be read)."""
    try:
        return int(load_checkpoint(path).get("advwm_iteration", 0))
    except Exception:  # noqa: BLE001  (unreadable: the caller says the checkpoint cannot be used)
        return None


def checkpoint_problem(value: Any, cfg: DictConfig) -> str | None:
    """ckpt_path must be a sound checkpoint of an advwm run written with this run's settings (one phrase naming
    ckpt_path, or None). The crafting list is compared once the faces are read (`advwm.pipeline`)."""
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    hint = "give the checkpoints/last.ckpt of an earlier run, or leave ckpt_path unset"
    if not path.is_file():
        return f"ckpt_path={value}: no such file: {hint}"
    try:
        checkpoint = load_checkpoint(path)
        state = checkpoint["state_dict"]
        if not generator_weights(state):  # scope=amortized holds a generator's weights instead
            state["perturbation"]  # noqa: B018  (a KeyError: not an advwm checkpoint)
    except Exception as error:  # noqa: BLE001  (whatever makes it unreadable: truncated, not torch, not advwm)
        reason = " ".join([type(error).__name__ + ":", *str(error).strip().splitlines()[:1]])
        return f"ckpt_path={value} is not a checkpoint of an advwm run ({reason[:160]}): {hint}"
    return loaded_checkpoint_problem(checkpoint, value, resume_signature(cfg), eps=cfg.get("eps"),
                                     image_size=cfg.get("image_size"), rows=expected_rows(cfg), partial=(CRAFT_FILES,))


def loaded_checkpoint_problem(checkpoint: Mapping[str, Any], value: Any, signature: Mapping[str, Any] | None, *,
                              eps: Any, image_size: Any, rows: int | None, partial: Sequence[str] = (),
                              digest: bool = True) -> str | None:
    """What stops `checkpoint` (read from ckpt_path=`value`) from being resumed by a run with `signature` (None: a
    module built without one, from Python: the settings are not compared), `eps`, `image_size` and `rows`
    perturbation rows, as one phrase naming ckpt_path (None: it may be resumed). `digest=False` where Lightning may
    have migrated the content after reading the file (the module's guard; the file itself was checked before)."""
    if checkpoint.get("advwm_signature_version") != SIGNATURE_VERSION:
        return (f"ckpt_path={value} was written by an older advwm: its settings cannot be checked against this run's, "
                "so it is not resumed: start a new run (or resume it with the advwm version that wrote it)")
    if signature is not None:
        difference = signature_difference(checkpoint.get("advwm_signature") or {}, signature, partial)
        if difference:
            return f"ckpt_path={value}: {difference}"
    if isinstance(eps, bool) or not isinstance(eps, float | int) or isinstance(image_size, bool) \
            or not isinstance(image_size, int):
        return None  # a bad eps or image_size is named by the config check
    if not digest:
        checkpoint = {**checkpoint, DIGEST_KEY: checkpoint_digest(checkpoint)}
    problem = content_problem(checkpoint, float(eps), int(image_size), rows)
    if problem:
        return f"ckpt_path={value} cannot be resumed: {problem}: resume from another checkpoint or start a new run"
    return None
