"""Reading a file advwm wrote with `torch.save` (watermark.pt, generator.pt): safely, and every failure one line.

Why one reader: the watermark and the generator files are read the same way (weights_only, no pickle that runs code,
an empty or truncated file named as such); only the words differ, so each file's loader passes its own.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def read_torch_file(path: Path, error: type[Exception], *, kind: str, holder: str, only: str,
                    file_name: str) -> Any:
    """`torch.load(path, weights_only=True)`, or `error` with one line naming `path` and what is wrong.

    `kind` names the file ("watermark file"), `holder` what never holds code ("a watermark"), `only` what to use
    instead ("watermark files"), `file_name` the file a finished run writes ("watermark.pt")."""
    if path.stat().st_size == 0:
        raise error(f"{path} is empty (0 bytes): the run that wrote it did not finish; use another run's {file_name}")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on pickle protocols: the refusal below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as caught:
        if "weights_only" in str(caught) or "Unsupported global" in str(caught):
            raise error(f"{path} was refused: its pickle would run code or build objects {holder} never holds "
                        f"(torch.load weights_only=True); only use {only} advwm wrote") from None
        raise error(f"{path} is not a readable {kind} (corrupt pickle: {first_line(caught)})") from None
    except Exception as caught:  # noqa: BLE001 - truncated zip, not a torch file, I/O error: all "unreadable"
        raise error(f"{path} is not a readable {kind} (truncated, or not written by torch.save: "
                    f"{type(caught).__name__}: {first_line(caught)})") from None
