"""Rendering: sections of tables, notes and charts as Markdown and as one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from advwm.report.charts import Chart


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]  # cells already formatted; the first is the method
    numeric: bool = True  # right-align all but the first column


@dataclass
class Section:
    title: str
    level: int = 2
    paragraphs: list[str] = field(default_factory=list)  # plain text (escaped when rendered)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown after the tables
    charts: list[Chart] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(table: Table) -> str:
    align = ["---"] + [("---:" if table.numeric else "---")] * (len(table.headers) - 1)
    lines = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = [f"<td class='method'>{html.escape(row[0])}</td>"]
        cells += [f"<td class='{'num' if table.numeric else 'text'}'>{html.escape(c)}</td>" for c in row[1:]]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.method { white-space: nowrap; } tr:nth-child(even) td { background: #fafafa; }
p.note { font-size: .85em; color: #555; } code { background: #f4f4f4; padding: 0 .2em; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 560px; } figcaption { font-size: .8em; color: #555; }
"""


def render_markdown(title: str, sections: Sequence[Section], files_dir: str) -> str:
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
    return "\n".join(out).rstrip() + "\n"


def render_html(title: str, sections: Sequence[Section]) -> str:
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
           f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        level = min(section.level, 6)
        out.append(f"<h{level}>{html.escape(section.title)}</h{level}>")
        out += [f"<p>{_inline_code(paragraph)}</p>" for paragraph in section.paragraphs]
        out += [_html_table(table) for table in section.tables]
        out += [f"<p class='note'>{_inline_code(note)}</p>" for note in section.notes]
        for chart in section.charts:
            data = base64.b64encode(chart.png).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(chart.title)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(chart.title)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _inline_code(text: str) -> str:
    """Escape, then turn Markdown `code` spans into <code> (the only Markdown the paragraphs use)."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))

