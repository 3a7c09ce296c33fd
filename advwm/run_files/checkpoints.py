"""Lightning checkpoints written atomically: `checkpoints/last.ckpt` is always a whole checkpoint.

Why: Lightning's `TorchCheckpointIO` serialises into memory and then writes through fsspec, whose local
"transaction" stages the file in the system temp folder and moves it over; across file systems that move is a
copy into the open target, so a full disk or a kill mid-copy truncates the previous, good last.ckpt. Here the
checkpoint streams into a temporary file beside its target and is renamed over it (`advwm.run_files.io`), so an
interrupted write leaves the previous checkpoint as it was. Configured for every run in conf/trainer/default.yaml:

    plugins: [{_target_: advwm.run_files.checkpoints.AtomicCheckpointIO}]
"""

from __future__ import annotations

from typing import Any

from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from advwm.run_files import io


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are atomic (remote URLs keep Lightning's own write)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        io.torch_save(checkpoint, path)
