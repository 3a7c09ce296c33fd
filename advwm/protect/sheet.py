"""`index.html`: a contact sheet of the protected photos, so a person sees the broken fakes.

For every row of `protection.csv`: the original and the protected photo side by side, and for each face and
victim the victim's edit of the original face next to its edit of the protected face (the victim's first
condition, named), with avg_L and SR_mask. The pictures live in `sheet/<photo>/` beside the page (photos as
480 px JPEG thumbnails for display only, edits as PNG at the victims' size) with `sheet.json` naming them, so
the page can be rebuilt from the folder alone after every photo; every name on the page is HTML-escaped, its
control and bidi characters shown as escapes (`advwm.report.text.html_text`, the report's).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image

from advwm.data.decode import DecodedPhoto
from advwm.protect import ledger
from advwm.protect.measure import VictimScore
from advwm.report.text import html_text
from advwm.run_files import io

PAGE = "index.html"
FOLDER = "sheet"
THUMBNAIL = 480  # px, the longer side of the photos shown
MANIFEST = "sheet.json"


def sheet_folder(out: Path, photo: str) -> Path:
    return out / FOLDER / photo


def _thumbnail(photo: DecodedPhoto) -> Image.Image:
    pixels = np.clip(np.rint(photo.on_white() * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
    return image


def _face_image(tensor: torch.Tensor) -> Image.Image:
    pixels = ((tensor.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


def save_pictures(out: Path, photo_name: str, original: DecodedPhoto, protected: DecodedPhoto,
                  scores: Mapping[str, VictimScore]) -> None:
    """The photo's pictures and `sheet.json` under `sheet/<photo>/` (atomic writes)."""
    folder = sheet_folder(out, photo_name)
    io.save_picture(_thumbnail(original), folder / "original.jpg", format="JPEG")
    io.save_picture(_thumbnail(protected), folder / "protected.jpg", format="JPEG")
    edits = []
    for victim, score in scores.items():
        for face, (fake, fake_protected) in enumerate(zip(score.fake, score.fake_protected, strict=True), start=1):
            files = {}
            for which, tensor in (("original", fake), ("protected", fake_protected)):
                files[which] = f"face{face}.{victim}.{which}.png"
                io.save_picture(_face_image(tensor), folder / files[which])
            edits.append({"victim": victim, "face": face, "condition": score.condition, **files})
    io.write_text(folder / MANIFEST, json.dumps({"edits": edits}, indent=1) + "\n")


def _src(out: Path, path: Path) -> str:
    return html.escape(quote(path.relative_to(out).as_posix()), quote=True)


def _number(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if value in (None, ""):
        return "&ndash;"
    return html.escape(f"{value:.4g}" if isinstance(value, float) else str(value))


STYLE = """body{font-family:sans-serif;margin:16px;max-width:1400px}
.photo{border-top:1px solid #bbb;padding:8px 0}
.pair{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;color:#444;max-width:480px;overflow-wrap:anywhere}
img.thumb{max-width:480px;height:auto}img.face{width:160px;height:160px;image-rendering:auto}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"""


def _figure(out: Path, path: Path, caption: str) -> str:
    text = html_text(caption)
    return f"<figure><img class='face' alt='{text}' src='{_src(out, path)}'><figcaption>{text}</figcaption></figure>"


def _photo_section(out: Path, row: Mapping[str, Any]) -> str:
    name = str(row["photo"])
    folder = sheet_folder(out, name)
    parts = [f"<div class='photo'><h2>{html_text(name)}</h2>",
             f"<p>{html_text(row.get('status', ''))}; faces: {_number(row, 'faces')}; "
             f"PSNR {_number(row, 'psnr')} dB, SSIM {_number(row, 'ssim')}; victims: "
             f"{html_text(row.get('victims', ''))}</p>"]
    scores = [(key.split("/", 1)[1], _number(row, key), _number(row, f"sr_mask/{key.split('/', 1)[1]}"))
              for key in row if key.startswith("avg_l/")]
    if scores:
        parts.append("<table><tr><th>victim</th><th>avg_L</th><th>SR_mask</th></tr>" + "".join(
            f"<tr><td>{html_text(v)}</td><td>{a}</td><td>{s}</td></tr>" for v, a, s in scores) + "</table>")
    pictures = []
    for which in ("original", "protected"):
        path = folder / f"{which}.jpg"
        if path.is_file():
            pictures.append(f"<figure><img class='thumb' alt='{which}' src='{_src(out, path)}'>"
                            f"<figcaption>{which}</figcaption></figure>")
    parts.append("<div class='pair'>" + "".join(pictures) + "</div>")
    try:
        edits = json.loads((folder / MANIFEST).read_text())["edits"]
    except (OSError, ValueError, KeyError, TypeError):
        edits = []
    figures = []
    for edit in edits:
        try:
            about = f"{edit['victim']}, face {edit['face']}, condition {edit['condition']}"
            pair = "".join(_figure(out, folder / str(edit[which]), f"{about}: edit of the {which}")
                           for which in ("original", "protected"))
        except (KeyError, TypeError):
            continue
        figures.append(f"<div class='pair'>{pair}</div>")
    parts.extend(figures)
    parts.append("</div>")
    return "\n".join(parts)


def write_page(out: Path, rows: Iterable[Mapping[str, Any]], title: str = "Protected photos") -> Path:
    """`<out>/index.html` for `rows` (protection.csv's), atomically."""
    ordered = sorted(rows, key=lambda r: str(r["photo"]))
    protected = sum(1 for r in ordered if r.get("status") == ledger.PROTECTED)
    body = "\n".join(_photo_section(out, row) for row in ordered)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html_text(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html_text(title)}</h1>"
            f"<p>{protected} of {len(ordered)} photo(s) protected. Each victim's edit of the original face is shown "
            "next to its edit of the protected face: where protection works, the second is visibly broken. "
            f"Numbers: <a href='{ledger.TABLE}'>{ledger.TABLE}</a>.</p>\n{body}\n</body></html>\n")
    path = out / PAGE
    io.write_text(path, page)
    return path
