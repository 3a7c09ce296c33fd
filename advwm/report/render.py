"""Rendering: sections of tables, notes, charts and pictures as Markdown and as one self-contained HTML page.

The HTML page carries everything inline (charts and downscaled run pictures as base64 PNG, no external CSS
or JS) and links each run's row and pictures to the run's folder, relative to the report, so the links work
wherever the report sits beside its runs. Wide tables (AttGAN's 14 conditions) scroll inside their own box,
so the page itself never gets wider than the window (checked in headless Chromium at 1400 px).
In HTML the method column is split into one column per key that differs between the runs (the header names
the key once instead of every row repeating `key=`); Markdown keeps the `key=value` labels (plain text).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from advwm.report.charts import Chart

THUMBNAIL_WIDTH = 640  # run pictures are downscaled to this before they are inlined


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]  # cells already formatted; the first is the method
    numeric: bool = True  # right-align all but the first column
    links: list[Path | None] | None = None  # per row: the run folder its first cell links to (HTML)
    # per row: {key: value} of what differs between runs; in HTML these replace the first column
    parts: list[dict[str, str]] | None = None


@dataclass
class Picture:
    caption: str
    path: Path  # a PNG on disk (inlined, downscaled, in HTML; linked in Markdown)
    link: Path | None = None  # where a click goes (the full-size file or the run folder)


@dataclass
class Gallery:
    title: str
    pictures: list[Picture]
    collapsed: bool = False  # HTML: inside a <details> element, opened by a click


@dataclass
class Section:
    title: str
    level: int = 2
    paragraphs: list[str] = field(default_factory=list)  # plain text (escaped when rendered)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown after the tables
    charts: list[Chart] = field(default_factory=list)
    galleries: list[Gallery] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(table: Table) -> str:
    align = ["---"] + [("---:" if table.numeric else "---")] * (len(table.headers) - 1)
    lines = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _relative(path: Path, base: Path | None) -> str:
    """A link from the report's folder to `path` (a folder link ends in /)."""
    target = os.path.relpath(path, base) if base is not None else str(path)
    target = target.replace(os.sep, "/")
    return target + "/" if path.is_dir() and not target.endswith("/") else target


def _link(text: str, path: Path | None, base: Path | None) -> str:
    if path is None:
        return html.escape(text)
    return f"<a href='{html.escape(_relative(path, base))}'>{html.escape(text)}</a>"


def _html_table(table: Table, base: Path | None = None) -> str:
    split = table.parts is not None and any(table.parts)
    keys = list(dict.fromkeys(k for p in table.parts or [] for k in p)) if split else []
    heads = [*keys, *table.headers[1:]] if split else table.headers
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = []
    for index, row in enumerate(table.rows):
        link = table.links[index] if table.links else None
        if split:
            parts = (table.parts or [])[index]
            mark = " \N{DAGGER}" if row[0].endswith(" \N{DAGGER}") else ""
            values = [parts.get(k, "") for k in keys]
            values[-1] += mark
            cells = [f"<td class='method'>{_link(value, link if i == 0 else None, base)}</td>"
                     for i, value in enumerate(values)]
        else:
            cells = [f"<td class='method'>{_link(row[0], link, base)}</td>"]
        cells += [f"<td class='{'num' if table.numeric else 'text'}'>{html.escape(c)}</td>" for c in row[1:]]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def thumbnail_png(path: Path, width: int = THUMBNAIL_WIDTH) -> bytes:
    """The picture as PNG bytes, no wider than `width` (a run's grids are thousands of pixels tall)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _html_gallery(gallery: Gallery, base: Path | None) -> str:
    figures = []
    for picture in gallery.pictures:
        try:
            data = base64.b64encode(thumbnail_png(picture.path)).decode("ascii")
        except OSError:
            continue
        image = f"<img class='thumb' alt='{html.escape(picture.caption)}' src='data:image/png;base64,{data}'>"
        if picture.link is not None:
            image = f"<a href='{html.escape(_relative(picture.link, base))}'>{image}</a>"
        figures.append(f"<figure>{image}<figcaption>{html.escape(picture.caption)}</figcaption></figure>")
    inner = "<div class='gallery'>" + "".join(figures) + "</div>"
    if gallery.collapsed:
        return f"<details><summary>{html.escape(gallery.title)}</summary>{inner}</details>"
    return f"<h4>{html.escape(gallery.title)}</h4>{inner}" if gallery.title else inner


STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1320px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
div.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f2f2f2; max-width: 9em; overflow-wrap: anywhere; font-size: .92em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.method { max-width: 30em; overflow-wrap: anywhere; } tr:nth-child(even) td { background: #fafafa; }
p.note { font-size: .85em; color: #555; } code { background: #f4f4f4; padding: 0 .2em; overflow-wrap: anywhere; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: min(560px, 100%); } figcaption { font-size: .8em; color: #555; max-width: 560px; }
img.thumb { max-width: min(320px, 100%); border: 1px solid #ddd; }
details summary { cursor: pointer; color: #3b75af; margin: .3em 0; }
div.gallery { display: flex; flex-wrap: wrap; }
"""


def render_markdown(title: str, sections: Sequence[Section], files_dir: str, base: Path | None = None) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += ["#" * section.level + " " + section.title, ""]
        for paragraph in section.paragraphs:
            out += [paragraph, ""]
        for table in section.tables:
            out += [md_table(table), ""]
        for note in section.notes:
            out += [note, ""]
        for chart in section.charts:
            out += [f"![{chart.title}]({files_dir}/{chart.name})", ""]
        for gallery in section.galleries:
            if gallery.title:
                out += [f"**{gallery.title}**", ""]
            out += [" ".join(f"![{p.caption}]({_relative(p.path, base)})" for p in gallery.pictures), ""]
    return "\n".join(out).rstrip() + "\n"


def render_html(title: str, sections: Sequence[Section], base: Path | None = None) -> str:
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           f"<title>{html.escape(title)}</title>",
           f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        level = min(section.level, 6)
        out.append(f"<h{level}>{html.escape(section.title)}</h{level}>")
        out += [f"<p>{_inline_code(paragraph)}</p>" for paragraph in section.paragraphs]
        out += [_html_table(table, base) for table in section.tables]
        out += [f"<p class='note'>{_inline_code(note)}</p>" for note in section.notes]
        for chart in section.charts:
            data = base64.b64encode(chart.png).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(chart.title)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(chart.title)}</figcaption></figure>")
        out += [_html_gallery(gallery, base) for gallery in section.galleries]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _inline_code(text: str) -> str:
    """Escape, then turn Markdown `code` spans into <code> (the only Markdown the paragraphs use)."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))
