"""Lightning checkpoints written atomically: `checkpoints/last.ckpt` is always a whole checkpoint.

Why: Lightning's `TorchCheckpointIO` serialises into memory and then writes through fsspec, whose local
"transaction" stages the file in the system temp folder and moves it over; across file systems that move is a
copy into the open target, so a full disk or a kill mid-copy truncates the previous, good last.ckpt. Here the
checkpoint streams into a temporary file beside its target and is renamed over it (`advwm.run_files.io`), so an
interrupted write leaves the previous checkpoint as it was. Configured for every run in conf/trainer/default.yaml:

    plugins: [{_target_: advwm.run_files.checkpoints.AtomicCheckpointIO}]

`save_last(trainer)` writes `checkpoints/last.ckpt` at the moments ModelCheckpoint does not: at the end of the last
iteration (crafting has ended; before judging) and when a signal stops crafting at an iteration end
(`advwm.run_files.signals.IterationEnd`). ModelCheckpoint's own save when the fit ends (when none was saved before)
is not one to resume from: its loop state says the epoch is complete, so a run cut short by trainer.max_steps could
not go on from it; `save_last` marks the file as saved, which skips that save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from advwm.run_files import io


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are atomic (remote URLs keep Lightning's own write)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        io.torch_save(checkpoint, path)


def last_checkpoint_path(trainer: Any) -> Path | None:
    """Where the run's `last` checkpoint goes (its ModelCheckpoint with save_last), or None when it keeps none."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            return Path(callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST))
    return None


def save_last(trainer: Any) -> Path | None:
    """Write the `last` checkpoint now (the end of crafting, a stop at an iteration end), as ModelCheckpoint would:
    the same file, which it then counts as its own (a later save there replaces it, no `last-v1.ckpt`)."""
    path = last_checkpoint_path(trainer)
    if path is None:
        return None
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last:
            callback.last_model_path = str(path)  # before saving: the checkpoint's own state says the file is its
            callback._last_global_step_saved = trainer.global_step  # its skip rule: not the same step twice
            callback._last_checkpoint_saved = str(path)  # else it writes last.ckpt again when the fit ends (below)
    trainer.save_checkpoint(path, weights_only=False)
    return path
