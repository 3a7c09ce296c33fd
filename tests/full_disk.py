"""A disk that fills up: writes through `advwm.run_files.io` to files matching a pattern fail with ENOSPC after a
few bytes.

In a test: `monkeypatch.setattr(advwm.run_files.io, "_open_stream", filling("images/*"))`. As a command (for the CLI's
one-line error): `python tests/full_disk.py 'images/*' <advwm.run arguments>` runs `python -m advwm.run` so.
Also `assert_whole(folder)`: what a full disk or a kill may leave in a run folder, checked file by file.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

ROOM = 100  # bytes a matching file gets before the disk is full


class FillingStream:
    """A file stream that takes ROOM bytes and then raises ENOSPC, as a full disk does mid-write."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.written = 0

    def write(self, data: Any) -> int:
        room = max(0, ROOM - self.written)
        if len(data) > room:
            self.inner.write(bytes(data[:room]))
            self.written += room
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __enter__(self) -> FillingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()


def filling(pattern: str):
    """An `advwm.run_files.io._open_stream` whose streams fill up for targets whose path ends like `pattern`
    (fnmatch)."""
    def open_stream(handle: int, target: Path) -> Any:
        stream = os.fdopen(handle, "wb")
        return FillingStream(stream) if fnmatch.fnmatch(str(target), f"*{pattern}") else stream
    return open_stream


def assert_whole(folder: Path, *, killed: bool = False) -> list[str]:
    """Every file below `folder` is complete (loads as what it is), none is empty or a leftover temporary file;
    returns the files' paths relative to `folder`.

    `killed`: the folder's run was SIGKILLed, which may land inside a write; its hidden temporary file is then
    allowed (the target itself is whole, and the next run that locks the folder removes it)."""
    import torch
    import yaml
    from PIL import Image

    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        if killed and path.name.endswith(".advwm-tmp"):
            continue
        found.append(name)
        assert not path.name.endswith(".advwm-tmp"), f"temporary file left: {name}"
        if path.suffix == ".log":  # the log is appended line by line: whatever it holds is what was said
            continue
        assert path.stat().st_size > 0, f"empty file: {name}"
        if path.suffix in (".pt", ".ckpt"):
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".json" or path.name == ".advwm.lock":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
    return found


if __name__ == "__main__":
    import runpy

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import advwm.run_files.io

    advwm.run_files.io._open_stream = filling(sys.argv[1])
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    runpy.run_module("advwm.run", run_name="__main__")  # as `python -m advwm.run` (Hydra finds conf/ from there)
