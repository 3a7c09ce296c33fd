"""Hostile strings in reports (issue 17, part 5): every user-controlled string (run folder names, config keys
and values, the title, study names, metric names, failure reasons) is escaped in every output: report.md,
report.html and the console.

How it is checked, independently of the report's own escaping code: report.md is rendered by a real Markdown
renderer (markdown-it-py, CommonMark + GFM tables, raw HTML passed through and every link accepted, as the
most permissive viewers do) and report.html is parsed as it is; in both, no element or attribute may come from
a user string (no `<script>`, no `on...=` handler, no link, no emphasis, only the report's own tags), no table
row may lose a cell to a `|`, and the text a reader sees must hold each string as the corpus says it is shown
(control characters and bidi overrides as visible escapes, everything else verbatim). The console output
holds no control character but the newline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from corpus import HOSTILE_STRINGS
from test_report import CHROMIUM, VIEWPORT, chromium, config_of, page_width

REPO = Path(__file__).resolve().parents[1]

HOSTILE = HOSTILE_STRINGS  # tests/corpus.py: (raw string, what a reader must see)
FOLDER_ONLY = [(os.fsdecode(b"caf\xe9-latin1"), "caf\\xe9-latin1")]  # a name that is not UTF-8 (bytes on disk)
# the report's own tags: md through markdown-it, and report.html
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "h5", "h6", "p", "div",
                "table", "thead", "tbody", "tr", "th", "td", "details", "summary", "figure", "figcaption", "img",
                "strong", "code", "span", "a"}
TITLE = "<script>alert('title')</script> | `t` [x](javascript:alert(1))"
STUDY = "study <img src=x onerror=alert(1)> | *s*"


class Page(HTMLParser):
    """Tags, attributes and the visible text of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows: list[list[str]] = []  # per table row: its cells' text
        self._skip = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("style", "script", "title"):
            self._skip += 1
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag == "img":  # alt text is what a reader sees when the picture is missing
            self.text.append(dict(attrs).get("alt") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title"):
            self._skip -= 1
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)
            if self._cell is not None:
                self._cell.append(data)


def parse(document: str) -> Page:
    page = Page()
    page.feed(document)
    page.close()
    return page


def render_markdown(text: str) -> str:
    markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py (installed with rich) renders report.md")
    renderer = markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    renderer.validateLink = lambda url: True  # the most permissive viewer: javascript: links too
    return renderer.render(text)


def hostile_runs(root: Path) -> None:
    """Two sweeps: runs named by hostile folders (equal configs), and a hostile-named sweep whose runs differ in
    a hostile config value, with a hostile key, victim, metric family, refusal and log line."""
    names = [raw for raw, _ in HOSTILE if "\n" not in raw and "/" not in raw] + [raw for raw, _ in FOLDER_ONLY]
    names += [raw for raw, _ in HOSTILE if "\n" in raw]
    for index, name in enumerate(names):
        folder = root / "by_folder" / f"{index:02d} {name}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"sr_mask/stargan": index / 100, "weights/stargan": "random"}))
    sweep = root / f"sweep {HOSTILE[1][0]}"
    victim = "<img src=y onerror=alert(2)>"
    for index, (raw, _) in enumerate(HOSTILE):
        out = sweep / str(index)
        (out / ".hydra").mkdir(parents=True)
        config = config_of("cmua", out, attack={"name": raw}, **{"<th onclick=alert(3)>": index % 2})
        (out / "config.yaml").write_text(yaml.safe_dump(config))
        (out / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (out / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"attack.name={raw}"]))
        metrics = {f"sr_mask/{victim}": index / 50, f"sr_mask/{raw.replace('/', '_')}": 0.5, "sr_mask/mean": 0.1,
                   "<i onclick=alert(6)>fam|x": 0.25 + index, "weights/stargan": "official"}
        (out / "metrics.json").write_text(json.dumps(metrics))
        (out / "csv").mkdir()
        (out / "csv" / "metrics.csv").write_text(f"loss/{victim},step\n0.1,0\n0.2,1\n")
    refused = sweep / "refused"
    (refused / ".hydra").mkdir(parents=True)
    (refused / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config_of("cmua", refused)))
    (refused / "craft.log").write_text("[t][advwm.run_files.loggers][ERROR] - error: attack.name="
                                       + "".join(raw for raw, _ in HOSTILE[:3]) + ": no such attack\n")
    failed = sweep / "failed"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config_of("cmua", failed)))
    (failed / "watermark.partial.pt").write_bytes(b"")
    (failed / "craft.log").write_text("[t][x][ERROR] - boom <script>alert(4)</script> | `x`\n")


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = tmp_path_factory.mktemp("hostile")
    hostile_runs(root / "runs")
    storage = f"sqlite:///{root / 'study.db'}"
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    for value in (0.1, 0.4):
        trial = study.ask()
        trial.suggest_float("victims.<x onerror=alert(5)>.step_scale", 0.0, 10.0)
        study.tell(trial, value)
    out = root / "out"
    done = subprocess.run([sys.executable, "-m", "advwm.report", str(root / "runs"), "--out", str(out), "--title",
                           TITLE, "--study", storage, "--study-name", STUDY], cwd=REPO, capture_output=True,
                          timeout=1800, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return out, done.stdout.decode("utf-8")


def expected_texts() -> list[str]:
    return [shown for _, shown in HOSTILE + FOLDER_ONLY]


def check_page(page: Page, where: str) -> None:
    for tag, attrs in page.tags:
        assert tag in ALLOWED_TAGS, f"{where}: a user string became a <{tag}> element"
        for name, value in attrs.items():
            assert not name.startswith("on"), f"{where}: <{tag} {name}=...> handler from a user string"
            if name == "style":  # markdown-it's column alignment
                assert tag in ("th", "td") and re.fullmatch(r"text-align:(left|right|center)", value or ""), value
                continue
            assert name in {"class", "id", "href", "src", "alt", "title", "lang", "charset", "name", "content"}, \
                f"{where}: <{tag}> got attribute {name!r}"
            if name in ("href", "src"):
                assert not re.match(r"\s*(javascript|vbscript|data:text)", value or "", re.I), f"{where}: {value}"
                assert not re.match(r"\s*[a-z][a-z0-9+.-]*:", value or "", re.I) or value.startswith(
                    "data:image/png;base64,"), f"{where}: {tag} {name}={value!r} leaves the report's folder"
    seen = re.sub(r"[ \n]+", " ", "".join(page.text))
    for shown in expected_texts() + [TITLE, STUDY]:
        assert re.sub(r"[ \n]+", " ", shown) in seen, f"{where}: {shown!r} is not shown as it is"
    for row in page.rows:
        assert row, f"{where}: an empty table row"


def test_report_md_rendered_by_a_markdown_viewer_shows_every_hostile_string_as_text(hostile_report) -> None:
    out, _ = hostile_report
    text = (out / "report.md").read_text(encoding="utf-8")
    page = parse(render_markdown(text))
    tags = {tag for tag, _ in page.tags}
    assert "a" not in tags and "em" not in tags and "del" not in tags  # no link or emphasis from a name
    check_page(page, "report.md")
    # every table row keeps its cells: a `|` in a name splits no cell (escaped pipes: `\|`)
    lines = text.splitlines()
    columns = None
    for number, line in enumerate(lines):
        if re.fullmatch(r"\|(-+:?\|)+", line):
            columns = line.count("|") - 1
            assert len(re.split(r"(?<!\\)\|", lines[number - 1])) - 2 == columns, lines[number - 1][:200]
        elif line.startswith("| ") and columns is not None:
            assert len(re.split(r"(?<!\\)\|", line)) - 2 == columns, line[:200]
        elif not line.startswith("|"):
            columns = None
    outside_code = re.sub(r"(`+)(.+?)(?<!`)\1(?!`)", "", text)  # code spans show HTML as text
    for raw, _ in HOSTILE:  # nothing user-made reaches the file raw where a viewer would act on it
        if raw.startswith("<"):
            assert raw not in outside_code


def test_report_html_shows_every_hostile_string_as_text(hostile_report) -> None:
    out, _ = hostile_report
    page = parse((out / "report.html").read_text(encoding="utf-8"))
    check_page(page, "report.html")
    links = [attrs["href"] for tag, attrs in page.tags if tag == "a"]
    assert links and all(not link.startswith(("javascript", "/")) and "://" not in link for link in links)
    header_cells = [cell for row in page.rows for cell in row]
    assert "<th onclick=alert(3)>" in header_cells  # the hostile key is a column header, as text


def test_the_console_shows_hostile_strings_without_control_characters(hostile_report) -> None:
    _, stdout = hostile_report
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]", stdout)
    assert "\\x1b[31mred\\x1b[0m" in stdout and "bidi \\u202egnp.exe" in stdout
    assert "line1\\nline2" in stdout
    assert "attack.name=a \\| b \\| c" in stdout  # a pipe in a name is not a new column
    assert "<script>alert('title')</script>" not in stdout  # the title is not printed; names are, as text


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="headless Chromium (/usr/bin/chromium) is not installed; "
                    ".ci/run installs it (apt-get install -y chromium)")
def test_the_hostile_page_runs_no_script_and_fits_1400_px(hostile_report, tmp_path: Path) -> None:
    """In a real browser: no name widens the page, and the document Chromium built holds no script."""
    out, _ = hostile_report
    scroll_width, inner_width = page_width(out / "report.html", tmp_path)
    assert inner_width == VIEWPORT[0] and scroll_width <= VIEWPORT[0]
    dom = chromium(out / "report.html", tmp_path / "profile_dom", "--virtual-time-budget=3000", "--dump-dom").stdout
    assert "<script" not in dom.split("</title>", 1)[1]  # nothing executable in the rendered document
