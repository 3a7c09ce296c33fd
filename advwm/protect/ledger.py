"""`protection.csv`: one row per photo, how protected it is, and what lets a rerun skip it.

Columns: `photo` (its path relative to the inputs), `output` (the protected file, relative to the table),
`status` (`protected`, or `no face: unchanged`), `faces` (squares protected), `detection` (`faces` or
`off: central square`), per victim `avg_l/<victim>` and `sr_mask/<victim>` (empty when not measured),
`psnr`, `ssim`, `victims` (`name=official|random` for each), `settings` (a digest of everything that changes
the protected pixels) and `source_sha256` (the original file's content). A rerun skips a photo whose row has
the same `settings` and `source_sha256` and whose output is still there; the table is rewritten atomically
after every photo, so a kill keeps every finished row.
"""

from __future__ import annotations

import csv
import hashlib
import io as text_io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from advwm.run_files import io

TABLE = "protection.csv"
FIRST = ("photo", "output", "status", "faces", "detection")
LAST = ("psnr", "ssim", "victims", "settings", "source_sha256")
PROTECTED = "protected"
NO_FACE = "no face: unchanged"

Row = dict[str, Any]


def digest(settings: Mapping[str, Any]) -> str:
    """A short, stable digest of settings (JSON with sorted keys): equal settings, equal digest."""
    text = json.dumps(settings, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content (a photo edited since it was protected is protected again)."""
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def victim_columns(rows: Iterable[Row]) -> list[str]:
    """`avg_l/<victim>`, `sr_mask/<victim>` for every victim named in any row, victims in order of appearance."""
    names: list[str] = []
    for row in rows:
        for key in row:
            if key.startswith(("avg_l/", "sr_mask/")):
                name = key.split("/", 1)[1]
                if name not in names:
                    names.append(name)
    return [f"{kind}/{name}" for name in names for kind in ("avg_l", "sr_mask")]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else ("" if math.isnan(value) else f"{value:.6g}")
    return str(value)


def render(rows: Iterable[Row]) -> str:
    """The CSV text of `rows`, sorted by photo."""
    ordered = sorted(rows, key=lambda r: str(r["photo"]))
    columns = [*FIRST, *victim_columns(ordered), *LAST]
    buffer = text_io.StringIO()
    # RFC 4180 line ends: the writer then quotes a field holding "\r" too (with "\n" alone it does not, and a photo
    # name holding one split its row)
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in ordered:
        writer.writerow({c: _cell(row.get(c)) for c in columns})
    return buffer.getvalue()


def _typed(row: Mapping[str, str]) -> Row:
    """A row as read back, with its numbers as numbers (faces an int, scores floats; an empty cell dropped)."""
    typed: Row = {}
    for key, value in row.items():
        if value in (None, ""):
            continue
        if key == "faces":
            typed[key] = int(value)
        elif key in ("psnr", "ssim") or key.startswith(("avg_l/", "sr_mask/")):
            typed[key] = float(value)
        else:
            typed[key] = value
    return typed


def read(folder: str | Path) -> dict[str, Row]:
    """The rows of `<folder>/protection.csv` by photo ({} when there is none or it cannot be read)."""
    path = Path(folder) / TABLE
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            return {row["photo"]: _typed(row) for row in csv.DictReader(stream) if row.get("photo")}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, ValueError):
        return {}


def write(folder: str | Path, rows: Iterable[Row]) -> Path:
    """`<folder>/protection.csv`, atomically."""
    path = Path(folder) / TABLE
    io.write_text(path, render(rows))
    return path


def already_done(row: Row | None, folder: str | Path, settings: str, source_sha256: str) -> bool:
    """True when `row` says this very file was protected with these settings and its output is still there."""
    if not row or row.get("settings") != settings or row.get("source_sha256") != source_sha256:
        return False
    output = row.get("output")
    return bool(output) and (Path(folder) / str(output)).is_file()


def victims_cell(victims: Mapping[str, str]) -> str:
    """`stargan=random attgan=official`."""
    return " ".join(f"{name}={weights}" for name, weights in victims.items())
