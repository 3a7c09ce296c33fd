"""The generated corpus (tests/corpus.py) through `data=folder`, `advwm.protect`, the file loaders, the study storage
check, the signal handling of each phase, and protect's pages.

Each case's outcome is in corpus.py's table; here every case is checked through the folder data module
(skipped with a warning naming it, or loaded with the right pixels) and through protect (refused with one
line, or written with the right size, alpha and bit depth), plus the watermark and checkpoint files, the values of
`hparams_search_storage` (usable, or one line naming the key), a SIGTERM or SIGINT in each phase a run names
(exit status 128 + n and one line; crafting holds it to the iteration's end), and hostile photo names through
protect's index.html and protection.csv. The same signals in real processes: tests/test_signals.py; the hostile
strings through the report: tests/test_report_hostile.py.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from corpus import (
    CHECKPOINT_CASES,
    HOSTILE_STRINGS,
    PHOTO_CASES,
    SIGNAL_CASES,
    STORAGE_CASES,
    WATERMARK_CASES,
    PhotoCase,
    SignalCase,
    StorageCase,
    make_photo_corpus,
    pattern,
    v1,
)
from PIL import Image

from advwm.data import ImageFolderDataModule
from advwm.data.decode import open_photo, orient
from advwm.protect.cli import Job, protect_one
from advwm.protect.photos import PhotoFolder
from advwm.protect.protectors import UniversalWatermark
from advwm.run_files.watermark_file import WatermarkError, load_watermark

REPO = Path(__file__).resolve().parents[1]
LOADED = [c for c in PHOTO_CASES if c.loads]
REFUSED = [c for c in PHOTO_CASES if not c.loads]
LOSSY_TOLERANCE = 10 / 255  # JPEG on flat quadrants, away from the edges


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return make_photo_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def folder_module(corpus) -> tuple[ImageFolderDataModule, list[str]]:
    """The whole corpus as one data=folder source, set up once; (module, warning lines)."""
    root = next(iter(corpus.values())).parent
    module = ImageFolderDataModule(str(root), n_craft=1000, image_size=32, batch_size=4, detect=False)
    collect = _Collect()
    logger = logging.getLogger("advwm")
    logger.addHandler(collect)
    try:
        module.setup()
    finally:
        logger.removeHandler(collect)
    return module, collect.lines


def quadrant_means(picture: np.ndarray) -> np.ndarray:
    """Mean colour of each quadrant's interior [4,3] ([H,W,3] input); edges left out (JPEG ringing)."""
    height, width = picture.shape[:2]
    my, mx = max(1, height // 8), max(1, width // 8)
    h2, w2 = height // 2, width // 2
    boxes = [(0, h2, 0, w2), (0, h2, w2, width), (h2, height, 0, w2), (h2, height, w2, width)]
    return np.stack([picture[t + my:b - my, l + mx:r - mx].reshape(-1, picture.shape[2]).mean(0)
                     for t, b, l, r in boxes])


def test_the_corpus_has_at_least_24_cases() -> None:
    assert len(PHOTO_CASES) + len(WATERMARK_CASES) + len(CHECKPOINT_CASES) >= 24
    assert len({c.name for c in PHOTO_CASES}) == len(PHOTO_CASES)


def test_orient_matches_pils_exif_transpose_for_all_eight_orientations(tmp_path: Path) -> None:
    from PIL import ImageOps

    stored = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    for orientation in range(1, 9):
        image = Image.fromarray(stored)
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(tmp_path / "o.png", exif=exif.tobytes())
        expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
        assert np.array_equal(orient(stored, orientation), expected), orientation


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.name)
def test_data_folder_skips_the_case_with_a_warning_naming_it(case: PhotoCase, corpus, folder_module) -> None:
    module, lines = folder_module
    path = str(corpus[case.name])
    assert path in module.skipped  # counted in metrics.json's data/skipped_images
    named = [line for line in lines if path in line]
    assert len(named) == 1 and case.reason in named[0], named
    assert f"{case.filename}#1" not in [item.name for item in module.craft_items]


@pytest.mark.parametrize("case", LOADED, ids=lambda c: c.name)
def test_data_folder_loads_the_case_as_a_person_sees_it(case: PhotoCase, corpus, folder_module) -> None:
    module, lines = folder_module
    names = [item.name for item in module.craft_items]
    assert f"{case.filename}#1" in names  # detection off: the central square, one sample per photo
    sample = module.train_dataloader().dataset[names.index(f"{case.filename}#1")]
    seen = (sample["image"].permute(1, 2, 0).numpy() + 1.0) / 2.0  # [32,32,3] in [0,1]
    top = 65535 if case.bit_depth == 16 else 255
    stored = np.rint(case.expected * top) / top  # what the file holds, at its own depth
    left = (stored.shape[1] - stored.shape[0]) // 2  # the central square of the 96x64 pattern
    square = torch.from_numpy(stored[:, left:left + stored.shape[0]]).permute(2, 0, 1)[None].float()
    reference = F.interpolate(square, size=(32, 32), mode="bilinear", antialias=True,
                              align_corners=False)[0].permute(1, 2, 0).numpy()  # the documented interpolation
    if case.exact:  # with alpha, colour and alpha are each rounded in the file before compositing on white
        assert np.abs(seen - reference).max() <= (1.0 / 255 if case.alpha else 1e-5)
    else:
        assert np.abs(quadrant_means(seen) - quadrant_means(reference)).max() <= LOSSY_TOLERANCE
    named = [line for line in lines if str(corpus[case.name]) in line]
    assert (len(named) == 1 and case.warning in named[0]) if case.warning else not named, named


@pytest.mark.parametrize("case", LOADED, ids=lambda c: c.name)
def test_decoder_gives_upright_full_depth_pixels(case: PhotoCase, corpus) -> None:
    photo = open_photo(corpus[case.name])
    assert photo.size == (pattern().shape[1], pattern().shape[0])  # upright: 96 wide, 64 high
    assert photo.bit_depth == case.bit_depth and (photo.alpha is not None) == case.alpha
    if case.exact:
        tolerance = 1e-6 if case.bit_depth == 16 else 0.5 / 255
        assert np.abs(photo.on_white() - case.expected).max() <= tolerance
    else:
        assert np.abs(quadrant_means(photo.on_white()) - quadrant_means(case.expected)).max() <= LOSSY_TOLERANCE


def _folder(out: Path) -> PhotoFolder:
    return PhotoFolder(out, eps=0.05, settings="test", victims={})


@pytest.mark.parametrize("case", [c for c in REFUSED if not c.listing_only], ids=lambda c: c.name)
def test_protect_refuses_the_case_in_one_line(case: PhotoCase, corpus, tmp_path: Path) -> None:
    job = Job(corpus[case.name], tmp_path / "out" / f"{case.filename}.png", case.filename)
    outcome = protect_one(job, _folder(tmp_path / "out"), UniversalWatermark(torch.zeros(3, 8, 8), 0.05), False, None)
    assert outcome.kind == "refused" and "\n" not in outcome.line
    assert outcome.line.startswith(f"refused {corpus[case.name]}: ") and case.reason in outcome.line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", LOADED, ids=lambda c: c.name)
def test_protect_writes_the_case_upright_with_its_alpha_and_depth(case: PhotoCase, corpus, tmp_path: Path) -> None:
    out = tmp_path / "deep"
    target = out / f"{case.filename}.png"
    job = Job(corpus[case.name], target, case.filename)
    outcome = protect_one(job, _folder(out), UniversalWatermark(torch.zeros(3, 8, 8), 0.05), False, None)
    assert outcome.kind == "protected", outcome.line
    written = open_photo(target)
    source = open_photo(corpus[case.name])
    assert written.size == source.size and written.bit_depth == case.bit_depth
    assert (written.alpha is not None) == case.alpha
    top = 65535 if case.bit_depth == 16 else 255
    assert np.abs(written.colour - source.colour).max() <= 0.5 / top + 1e-6  # zero watermark: the photo itself
    if case.alpha:
        assert np.array_equal(np.rint(written.alpha * 255), np.rint(source.alpha * 255))
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".advwm-tmp")]
    assert leftovers == []  # no temporary file left behind


def test_protect_cli_over_the_whole_corpus_names_every_refusal(corpus, tmp_path: Path) -> None:
    root = next(iter(corpus.values())).parent
    torch.save(v1(torch.zeros(3, 16, 16)), tmp_path / "watermark.pt")
    result = subprocess.run([sys.executable, "-m", "advwm.protect", str(tmp_path / "watermark.pt"), str(root),
                             "--out", str(tmp_path / "out"), "--no-detect"], cwd=REPO, capture_output=True,
                            text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    err_lines = result.stderr.strip().splitlines()
    for case in REFUSED:
        named = [line for line in err_lines if case.filename in line]
        assert len(named) == 1 and case.reason in named[0], (case.name, named)
    for case in LOADED:
        assert (tmp_path / "out" / f"{case.filename}.png").is_file(), case.name
    assert f"protected {len(LOADED)} photo(s)" in result.stdout


@pytest.mark.parametrize("case", WATERMARK_CASES, ids=lambda c: c.name)
def test_watermark_files_load_or_are_refused_in_one_line(case, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "watermark.pt"
    path.write_bytes(case.make(marker))
    scope = "universal" if case.name == "per_image_for_protect" else None
    if case.reason:
        with pytest.raises(WatermarkError) as caught:
            load_watermark(path, scope=scope)
        message = str(caught.value)
        assert "\n" not in message and case.reason in message and str(path) in message
    else:
        loaded = load_watermark(path)
        assert loaded.watermark is not None and loaded.watermark.shape == (3, 32, 32)
        assert any(case.warning in w for w in loaded.warnings) if case.warning else not loaded.warnings
    assert not marker.exists()  # a pickle with code never ran


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=lambda c: c.name)
def test_broken_checkpoints_are_refused_in_one_line(case, tmp_path: Path) -> None:
    from advwm.victims import CheckpointError, load_checkpoint_into

    marker = tmp_path / "code_ran"
    path = tmp_path / "G.ckpt"
    path.write_bytes(case.make(marker))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint_into("stargan", torch.nn.Linear(2, 2), path)
    assert "\n" not in str(caught.value) and case.reason in str(caught.value)
    assert not marker.exists()


# ---- the corpus as a whole ----------------------------------------------------------------------------------------

def test_the_corpus_has_every_kind_and_at_least_40_cases() -> None:
    kinds = {"photos": PHOTO_CASES, "watermark files": WATERMARK_CASES, "checkpoints": CHECKPOINT_CASES,
             "study storages": STORAGE_CASES, "signals": SIGNAL_CASES, "hostile strings": HOSTILE_STRINGS}
    assert all(len(cases) >= 3 for cases in kinds.values()), {kind: len(cases) for kind, cases in kinds.items()}
    assert sum(len(cases) for cases in kinds.values()) >= 40
    for kind in ("photos", "watermark files", "checkpoints", "study storages", "signals"):
        names = [case.name for case in kinds[kind]]
        assert len(names) == len(set(names)), kind  # each case is its own test id
    assert {case.phase for case in SIGNAL_CASES} >= {"starting", "crafting", "judging", "saving the results",
                                                      "protecting photos", "starting or between runs"}


# ---- study storages ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", STORAGE_CASES, ids=lambda c: c.name)
def test_study_storages_are_usable_or_refused_in_one_line_naming_the_key(case: StorageCase, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from advwm.studies import STORAGE_KEY, study_problem

    url = case.make(tmp_path)
    problem = study_problem(OmegaConf.create({STORAGE_KEY: url, "study_name": "corpus"}))
    if not case.reason:
        assert problem is None
        return
    assert problem is not None and "\n" not in problem and problem.startswith(f"{STORAGE_KEY}=")
    assert case.reason in problem, problem
    if case.hidden:
        assert case.hidden not in problem and "***" in problem


# ---- signals, phase by phase ----------------------------------------------------------------------------------------

def _deliver(signum: int) -> None:
    """Send `signum` to this (the main) thread; Python runs its handler at the next bytecode, inside the sleep."""
    import threading
    import time

    signal.pthread_kill(threading.main_thread().ident or 0, signum)
    time.sleep(0.1)


@pytest.mark.parametrize("case", SIGNAL_CASES, ids=lambda c: c.name)
def test_a_stop_signal_in_each_phase_ends_with_128_plus_n_and_one_line(case: SignalCase, capsys) -> None:
    from advwm.run_files import signals

    reached_the_end_of_crafting = False
    with pytest.raises(SystemExit) as ended:
        with signals.ending_cleanly("starting or between runs"):
            signals.set_phase(case.phase, holding=case.held)
            _deliver(case.signum)
            if case.held:  # crafting: nothing stops before the iteration in progress ends
                assert "stopping when the iteration in progress ends" in capsys.readouterr().err
                reached_the_end_of_crafting = True
                signals.set_phase("saving the results")  # crafting ended: its files are written, the stop comes
            raise AssertionError("the signal did not stop the run")
    name = signal.Signals(case.signum).name
    assert ended.value.code == 128 + case.signum
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    phase = "saving the results" if case.held else case.phase
    assert lines[-1].startswith(f"error: stopped by {name} while {phase}: "), lines
    assert reached_the_end_of_crafting == case.held
    assert signal.getsignal(case.signum) is not signals._stop_handler  # the handlers before it are back


# ---- hostile photo names through protect ---------------------------------------------------------------------------

def test_hostile_photo_names_are_text_on_protects_page_and_round_trip_through_its_table(tmp_path: Path,
                                                                                          capsys) -> None:
    from html.parser import HTMLParser

    from advwm.protect import ledger
    from advwm.protect.cli import main as protect

    photos = tmp_path / "photos"
    photos.mkdir()
    names = [raw.replace("/", "∕") + ".png" for raw, _ in HOSTILE_STRINGS]  # "/" is the one byte a name cannot hold
    for name in names:
        Image.fromarray(pattern()).save(photos / name)
    torch.save(v1(torch.zeros(3, 16, 16)), tmp_path / "watermark.pt")
    out = tmp_path / "out"
    assert protect([str(tmp_path / "watermark.pt"), str(photos), "--out", str(out), "--no-detect"]) == 0
    said = capsys.readouterr()
    for _raw, seen in HOSTILE_STRINGS:  # the terminal: control and bidi characters as escapes, one line per photo
        assert seen.replace("/", "∕") in said.out, seen
    assert not [char for char in said.out + said.err if char != "\n" and (ord(char) < 32 or char == "\u202e")]

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.tags: list[tuple[str, dict]] = []
            self.text: list[str] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.tags.append((tag, dict(attrs)))

        def handle_data(self, data: str) -> None:
            self.text.append(data)

    page = Tags()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert {tag for tag, _ in page.tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "div",
                                             "table", "tr", "th", "td", "figure", "figcaption", "img", "a", "span"}
    assert not [attrs for _, attrs in page.tags if any(key.startswith("on") for key in attrs)]
    shown = "".join(page.text)
    rows = ledger.read(out)
    for (_raw, seen), name in zip(HOSTILE_STRINGS, names, strict=True):
        assert seen.replace("/", "∕") + ".png" in shown, seen  # as text, control characters as visible escapes
        assert name in rows, name  # protection.csv gives it back exactly (a rerun skips it)
