"""Atomic writes: a file advwm writes holds either its previous content or its complete new content, never a part.

Why: a run killed mid-write, or a disk that fills up, used to leave truncated outputs (a 0-byte watermark, a
half PNG) that later looked finished. Every writer here writes to a hidden temporary file in the target's own
folder (same file system, so the rename is atomic), flushes and fsyncs it, renames it over the target with
`os.replace`, and fsyncs the folder so the rename survives a power cut. On any failure the temporary file is
removed. A full disk (ENOSPC, or EDQUOT for a quota) becomes a `DiskFullError` whose message is one line
naming the file and the free space left.

    from advwm.run_files import io
    io.save_json(run / "metrics.json", metrics)
    io.torch_save(payload, run / "watermark.pt")
    io.save_picture(pil_image, run / "images" / "stargan.png")
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

TEMPORARY_SUFFIX = ".advwm-tmp"  # `.<name>.<random>.advwm-tmp` beside the target while it is written
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """No space left to write a file; the message (one line) names the file and the free space."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        super().__init__(errno.ENOSPC, disk_full_message(self.path), str(self.path))

    def __str__(self) -> str:
        return self.strerror or ""


def is_disk_full(error: BaseException | None) -> bool:
    """True for an OSError saying the disk (or the user's quota) is full, also when a serializer re-raised it as
    another error (torch.save's writer turns it into a RuntimeError whose context is the OSError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def free_space(path: str | os.PathLike) -> str:
    """Free space on the file system holding `path` (or its nearest existing parent), e.g. '12.0 KiB'."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown"
    if free < 1024:
        return f"{free:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        free /= 1024
        if free < 1024 or unit == "TiB":
            return f"{free:.1f} {unit}"
    return "unknown"  # not reached: the loop returns at TiB


def disk_full_message(path: str | os.PathLike) -> str:
    return f"disk full: no space left to write {path} ({free_space(Path(path).parent)} free on that disk)"


def _open_stream(handle: int, target: Path) -> BinaryIO:
    """The temporary file's stream for `target` (a seam: tests replace it to simulate a disk filling up mid-write)."""
    return os.fdopen(handle, "wb")


def _file_mode() -> int:
    """0666 minus the umask: what `open()` would give (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; file systems that cannot fsync a folder are left as they are."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces `path` only when the block finishes without an exception.

    A full disk raises `DiskFullError` (the temporary file is gone, the old `path` untouched).
    """
    target = Path(path)
    temporary: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX, dir=target.parent)
        with _open_stream(handle, target) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, _file_mode())
        os.replace(temporary, target)
        temporary = None
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(target) from error
        raise
    _fsync_folder(target.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as stream:
        stream.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def save_json(path: str | os.PathLike, value: Any) -> None:
    """`value` as indented JSON (what metrics.json and trial.json are)."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def torch_save(value: Any, path: str | os.PathLike) -> None:
    """`torch.save(value, path)`, atomically: serialised straight into the temporary file (no copy in memory)."""
    import torch

    with atomic_writer(path) as stream:
        torch.save(value, stream)


def save_picture(image: Any, path: str | os.PathLike, format: str = "PNG") -> None:  # noqa: A002  (PIL's name)
    """A PIL image, atomically (PNG unless `format` says otherwise)."""
    with atomic_writer(path) as stream:
        image.save(stream, format=format)


def save_tensor_image(tensor: Any, path: str | os.PathLike) -> None:
    """`torchvision.utils.save_image(tensor, path)` as PNG, atomically (values in [0, 1])."""
    from torchvision.utils import save_image

    with atomic_writer(path) as stream:
        save_image(tensor, stream, format="png")


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer left below `folder` (call it only while no one writes there)."""
    removed = []
    for leftover in Path(folder).rglob(f".*{TEMPORARY_SUFFIX}"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


class RunLogHandler(logging.FileHandler):
    """The run's log file (Hydra's `job_logging.handlers.file`): a full disk drops log lines silently.

    Why: Python's logging prints a traceback to stderr for every line it cannot write, which on a full disk
    buried the run's own one-line `disk full` error under pages of `--- Logging error ---`. The run still
    stops at its next write of an output, with that one line.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802  (logging's name)
        if is_disk_full(sys.exc_info()[1]):
            return
        super().handleError(record)
