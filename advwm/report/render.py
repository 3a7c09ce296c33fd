"""Rendering: sections of tables, notes, charts and pictures as Markdown, as one self-contained HTML page, and
as plain text for the console.

Every string in a section is literal text (user strings among them: folder names, config values, titles,
metric names, reasons); the renderers alone write markup, and escape each string for their format
(`advwm.report.text`). A paragraph is a `str` or a sequence of inlines (`str` and `Code`).

The HTML page carries everything inline (charts and downscaled run pictures as base64 PNG, no external CSS
or JS) and links each run's row and pictures to the run's folder, relative to the report, so the links work
wherever the report sits beside its runs. Wide tables (AttGAN's 14 conditions) scroll inside their own box,
and long words wrap, so the page itself never gets wider than the window (checked in headless Chromium at
1400 px). In HTML the method column is split into one column per key that differs between the runs (the
header names the key once instead of every row repeating `key=`); Markdown keeps the `key=value` labels.
The best cell of a column has class `best` (and "(best)" in words for screen readers; in Markdown: bold and
"(best)"); cells tied within spread have class `tied` ("(tied)").
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from advwm.report.charts import Chart
from advwm.report.ranking import BEST, TIED
from advwm.report.text import (
    Inline,
    console_text,
    html_inline,
    html_text,
    md_inline,
    md_text,
)

THUMBNAIL_WIDTH = 640  # run pictures are downscaled to this before they are inlined
Paragraph = str | tuple[Inline, ...] | list[Inline]
MARK_WORDS = {BEST: "best", TIED: "tied"}


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]  # cells already formatted; the first is the method
    numeric: bool = True  # right-align all but the first column
    links: list[Path | None] | None = None  # per row: the run folder its first cell links to (HTML)
    # per row: {key: value} of what differs between runs; in HTML these replace the first column
    parts: list[dict[str, str]] | None = None
    marks: list[list[str]] | None = None  # per row, per cell after the first: "", "best" or "tied"
    folded: str | None = None  # a summary line: the table sits inside <details> (HTML and Markdown)

    def mark(self, row: int, column: int) -> str:
        """The mark of cell `column` (1 = the first after the method) of row `row`."""
        if not self.marks or column < 1 or column - 1 >= len(self.marks[row]):
            return ""
        return self.marks[row][column - 1]


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
    paragraphs: list[Paragraph] = field(default_factory=list)  # literal text and code inlines
    tables: list[Table] = field(default_factory=list)  # the folded ones are shown after the notes
    notes: list[Paragraph] = field(default_factory=list)  # shown after the (unfolded) tables
    charts: list[Chart] = field(default_factory=list)
    galleries: list[Gallery] = field(default_factory=list)
    anchor: str | None = None  # HTML id of the heading
    after_charts: list[Table] = field(default_factory=list)  # e.g. the key of the curves' legend labels


# ------------------------------------------------------------------------------------------------ Markdown


def _md_cell(table: Table, row: int, column: int, text: str) -> str:
    cell = md_text(text)
    mark = table.mark(row, column)
    if mark == BEST:
        return f"**{cell}** (best)"
    if mark == TIED:
        return f"{cell} (tied)"
    return cell


def md_table(table: Table) -> str:
    align = ["---"] + [("---:" if table.numeric else "---")] * (len(table.headers) - 1)
    lines = ["| " + " | ".join(md_text(h) for h in table.headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_cell(table, r, c, cell) for c, cell in enumerate(row)) + " |"
              for r, row in enumerate(table.rows)]
    text = "\n".join(lines)
    if table.folded:
        return f"<details><summary>{html_text(table.folded)}</summary>\n\n{text}\n\n</details>"
    return text


def console_table(table: Table) -> str:
    """The table as Markdown-like plain text for a terminal (no Markdown escapes, no control characters)."""
    def cell(r: int, c: int, text: str) -> str:
        shown = console_text(text).replace("|", "\\|")
        word = MARK_WORDS.get(table.mark(r, c))
        return f"{shown} ({word})" if word else shown

    lines = ["| " + " | ".join(console_text(h).replace("|", "\\|") for h in table.headers) + " |",
             "|" + "|".join(["---"] * len(table.headers)) + "|"]
    lines += ["| " + " | ".join(cell(r, c, text) for c, text in enumerate(row)) + " |"
              for r, row in enumerate(table.rows)]
    return "\n".join(lines)


def _url(path: Path, base: Path | None) -> str:
    """A link from the report's folder to `path` (a folder link ends in /), percent-encoded: a folder named
    `javascript:...` or holding `)`, `<` or spaces stays a relative path in every format."""
    target = os.path.relpath(path, base) if base is not None else str(path)
    target = target.replace(os.sep, "/")
    if path.is_dir() and not target.endswith("/"):
        target += "/"
    return quote(target.encode("utf-8", "surrogateescape"), safe="/")


def render_markdown(title: str, sections: Sequence[Section], files_dir: str, base: Path | None = None) -> str:
    out = [f"# {md_text(title)}", ""]
    for section in sections:
        out += ["#" * min(section.level, 6) + " " + md_text(section.title), ""]
        for paragraph in section.paragraphs:
            out += [md_inline(paragraph), ""]
        for table in section.tables:
            out += [md_table(table), ""] if not table.folded else []
        for note in section.notes:
            out += [md_inline(note), ""]
        for table in section.tables:
            out += [md_table(table), ""] if table.folded else []
        for chart in section.charts:
            out += [f"![{md_text(chart.title)}]({quote(files_dir)}/{quote(chart.name)})", ""]
        for table in section.after_charts:
            out += [md_table(table), ""]
        for gallery in section.galleries:
            if gallery.title:
                out += [f"**{md_text(gallery.title)}**", ""]
            out += [" ".join(f"![{md_text(p.caption)}]({_url(p.path, base)})" for p in gallery.pictures), ""]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ HTML


def _link(text: str, path: Path | None, base: Path | None) -> str:
    if path is None:
        return html_text(text)
    return f"<a href='{html_text(_url(path, base))}'>{html_text(text)}</a>"


def _html_cell(table: Table, row: int, column: int, text: str) -> str:
    mark = table.mark(row, column)
    kind = "num" if table.numeric else "text"
    if not mark:
        return f"<td class='{kind}'>{html_text(text)}</td>"
    words = " (best)" if mark == BEST else " (tied within spread)"
    return f"<td class='{kind} {mark}'>{html_text(text)}<span class='visually-hidden'>{words}</span></td>"


def _html_table(table: Table, base: Path | None = None) -> str:
    split = table.parts is not None and any(table.parts)
    keys = list(dict.fromkeys(k for p in table.parts or [] for k in p)) if split else []
    heads = [*keys, *table.headers[1:]] if split else table.headers
    head = "".join(f"<th>{html_text(h)}</th>" for h in heads)
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
        cells += [_html_cell(table, index, column, c) for column, c in enumerate(row) if column > 0]
        body.append("<tr>" + "".join(cells) + "</tr>")
    text = f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    if table.folded:
        return f"<details><summary>{html_text(table.folded)}</summary>{text}</details>"
    return text


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
        except (OSError, ValueError):  # unreadable or not a picture: left out
            continue
        image = f"<img class='thumb' alt='{html_text(picture.caption)}' src='data:image/png;base64,{data}'>"
        if picture.link is not None:
            image = f"<a href='{html_text(_url(picture.link, base))}'>{image}</a>"
        figures.append(f"<figure>{image}<figcaption>{html_text(picture.caption)}</figcaption></figure>")
    inner = "<div class='gallery'>" + "".join(figures) + "</div>"
    if gallery.collapsed:
        return f"<details><summary>{html_text(gallery.title)}</summary>{inner}</details>"
    return f"<h4>{html_text(gallery.title)}</h4>{inner}" if gallery.title else inner


STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1320px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
h1, h2, h3, h4, p, summary, figcaption, li { overflow-wrap: anywhere; }
div.scroll { max-width: 100%; overflow-x: auto; position: relative; }  /* holds the hidden words below */
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f2f2f2; max-width: 9em; overflow-wrap: anywhere; font-size: .92em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 40em; overflow-wrap: anywhere; }
td.method { min-width: 6em; max-width: 30em; overflow-wrap: anywhere; } tr:nth-child(even) td { background: #fafafa; }
tr td.best { font-weight: bold; background: #e3f2e6; } tr td.tied { background: #fdf3d8; }
.visually-hidden { position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; border: 0;
                   overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
p.note { font-size: .85em; color: #555; } code { background: #f4f4f4; padding: 0 .2em; overflow-wrap: anywhere; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: min(560px, 100%); } figcaption { font-size: .8em; color: #555; max-width: 560px; }
figure img.wide { max-width: 100%; } figure.wide figcaption { max-width: none; }
img.thumb { max-width: min(320px, 100%); border: 1px solid #ddd; }
details summary { cursor: pointer; color: #3b75af; margin: .3em 0; }
div.gallery { display: flex; flex-wrap: wrap; }
"""


def render_html(title: str, sections: Sequence[Section], base: Path | None = None) -> str:
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           f"<title>{html_text(title)}</title>",
           f"<style>{STYLE}</style></head><body>", f"<h1>{html_text(title)}</h1>"]
    for section in sections:
        level = min(section.level, 6)
        anchor = f" id='{html_text(section.anchor)}'" if section.anchor else ""
        out.append(f"<h{level}{anchor}>{html_text(section.title)}</h{level}>")
        out += [f"<p>{html_inline(paragraph)}</p>" for paragraph in section.paragraphs]
        out += [_html_table(table, base) for table in section.tables if not table.folded]
        out += [f"<p class='note'>{html_inline(note)}</p>" for note in section.notes]
        out += [_html_table(table, base) for table in section.tables if table.folded]  # below the notes
        for chart in section.charts:
            data = base64.b64encode(chart.png).decode("ascii")
            wide = " class='wide'" if chart.wide else ""
            out.append(f"<figure{wide}><img{wide} alt='{html_text(chart.title)}' title='{html_text(chart.hover)}' "
                       f"src='data:image/png;base64,{data}'><figcaption>{html_text(chart.title)}</figcaption></figure>")
        out += [_html_table(table, base) for table in section.after_charts]
        out += [_html_gallery(gallery, base) for gallery in section.galleries]
    out.append("</body></html>")
    return "\n".join(out) + "\n"
