"""Every string a user controls, escaped for the output it goes to: Markdown, HTML, the console, matplotlib.

User-controlled means anything read from disk or the command line: run folder names, config keys and values,
`--title`, study names and storages, metric names from `metrics.json`, failure reasons from logs. The report's
own markup (headings, tables, links, code spans, `<details>`) is written only by the renderers, never carried
inside such a string, so each string is escaped exactly once, for its output, at the point it is written.

Why our own code: `html.escape` covers HTML, but no maintained library escapes plain text *into* Markdown
(Markdown libraries render it, the other direction). `md_text` follows the CommonMark/GFM spec: raw HTML and
entities are neutralised as HTML entities (`&lt;script&gt;` shows as text in every viewer, also those that pass
HTML through; a `&` only where it would start an entity, a `>` only where it would start a quote), and the
characters that start inline markup (links, images, emphasis, code, strikethrough, math, table pipes) are
backslash-escaped (CommonMark allows a backslash before any ASCII punctuation).

Characters no viewer shows honestly become visible escapes in every output (`visible`): control characters
(newlines would end a table row or a heading; ESC drives the terminal), Unicode bidi overrides (text that reads
differently from what it is), line/paragraph separators, and the undecodable bytes of a non-UTF-8 file name
(Python's surrogate escapes, which would make writing the report fail).
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LINE_BREAKS = frozenset("\u2028\u2029")


@dataclass(frozen=True)
class Code:
    """A user string to show as code (a path, a key): a code span in Markdown, `<code>` in HTML."""

    text: str


Inline = str | Code  # a plain `str` is always literal text, escaped for its output


def visible(text: object) -> str:
    """`text` with control, bidi and line-separator characters and undecodable bytes as visible escapes."""
    out = []
    for char in str(text):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:  # any other lone surrogate: not encodable as UTF-8
            out.append(f"\\u{code:04x}")
        elif char in _NAMED:
            out.append(_NAMED[char])
        elif char in _BIDI or char in _LINE_BREAKS or unicodedata.category(char) == "Cc":
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


# Always escaped: they open links/images ([ ]), code (`), emphasis (*), strikethrough (~), math ($, GitHub),
# table cells (|), headings' closing sequence (#), and the backslash itself.
_MD_ALWAYS = re.compile(r"([\\`*\[\]|~$#])")
# At the start of a block they would open a list (`- x`, `+ x`, `1. x`, `1) x`) or draw a rule (`---`).
_MD_BULLET = re.compile(r"^(\s*)([-+])(?=\s|$|[-\s]*$)")
_MD_NUMBERED = re.compile(r"^(\s*\d{1,9})([.)])(?=\s|$)")
_MD_QUOTE = re.compile(r"^(\s*)>")
_MD_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")  # `&lt;`, `&#60;`, `&#x3c;` would render as the character


def _underscores(text: str) -> str:
    """Escape `_` where it could open or close emphasis: not between two letters or digits (`sr_mask` stays)."""
    out = []
    for index, char in enumerate(text):
        if char == "_":
            before = text[index - 1] if index > 0 else " "
            after = text[index + 1] if index + 1 < len(text) else " "
            if not (before.isalnum() and after.isalnum()):
                out.append("\\_")
                continue
        out.append(char)
    return "".join(out)


def md_text(text: object) -> str:
    """Literal text in Markdown (a paragraph, a heading, a table cell, an image's alt text)."""
    escaped = _MD_ALWAYS.sub(r"\\\1", visible(text))
    escaped = _underscores(escaped)
    escaped = _MD_NUMBERED.sub(r"\1\\\2", _MD_BULLET.sub(r"\1\\\2", escaped))
    escaped = _MD_ENTITY.sub("&amp;", escaped).replace("<", "&lt;")  # no raw HTML, autolink or entity
    return _MD_QUOTE.sub(r"\1\\>", escaped)  # a `>` is markup only at the start (a quote); `x >= 1` stays


def md_code(text: object) -> str:
    """A code span holding `text` literally (CommonMark: a fence longer than any backtick run inside)."""
    shown = visible(text)
    longest = max((len(run) for run in re.findall(r"`+", shown)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") or not shown.strip(" ") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


def md_inline(pieces: str | tuple[Inline, ...] | list[Inline]) -> str:
    if isinstance(pieces, str):
        return md_text(pieces)
    return "".join(md_code(p.text) if isinstance(p, Code) else md_text(p) for p in pieces)


def html_text(text: object) -> str:
    """Literal text in HTML, in element content or in a quoted attribute."""
    return html.escape(visible(text), quote=True)


def html_inline(pieces: str | tuple[Inline, ...] | list[Inline]) -> str:
    if isinstance(pieces, str):
        return html_text(pieces)
    return "".join(f"<code>{html_text(p.text)}</code>" if isinstance(p, Code) else html_text(p) for p in pieces)


def console_text(text: object) -> str:
    """Text for the terminal: nothing that moves the cursor, clears the screen or reorders the line."""
    return visible(text)


def mpl_text(text: object) -> str:
    """Text for a matplotlib label: a pair of `$` would be parsed as math (and bad math raises)."""
    return visible(text).replace("$", r"\$")
