"""protection.csv's values against independent computations, the rerun rules, and the contact sheet in Chromium."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from toys import LinearVictim

from advwm.callbacks.evaluation import MetricSettings
from advwm.data.decode import DecodedPhoto, open_photo
from advwm.metrics.quality import per_image_ssim
from advwm.protect import ledger
from advwm.protect.measure import psnr, score_victims, ssim
from advwm.protect.paste import paste
from advwm.protect.photos import PhotoFolder
from advwm.protect.protectors import UniversalWatermark

pytestmark = pytest.mark.usefixtures("single_thread")

THRESHOLDS = MetricSettings(robustness=[])
GAIN, LEVELS = 6.0, (0.0, -0.9)  # G(x, c) = 6 (1 + c) x: condition 0 breaks (change x36), condition -0.9 does not


def victims() -> list[LinearVictim]:
    return [LinearVictim("lin", GAIN, LEVELS)]


def scorer(crops: torch.Tensor, protected: torch.Tensor, labels: torch.Tensor):
    return score_victims(victims(), crops, protected, labels, THRESHOLDS)


def photo_file(path: Path, size: int = 48, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(40, 216, (size, size, 3)).astype(np.uint8)  # away from clamping
    Image.fromarray(pixels).save(path)
    return pixels


def sign_watermark(size: int = 48, eps: float = 0.05) -> torch.Tensor:
    return torch.sign(torch.randn(3, size, size, generator=torch.Generator().manual_seed(3))) * eps


def hand_scores(x: np.ndarray, x_protected: np.ndarray) -> tuple[float, float]:
    """avg_L and SR_mask of LinearVictim by hand (numpy, float64): per condition c, fake = g (1 + c) x; L = mean
    squared change of the fake; the mask is where sum_ch |fake - x| > 0.5, SR_mask counts masked L2 > 0.05."""
    losses, successes = [], []
    for level in LEVELS:
        fake, fake_protected = GAIN * (1 + level) * x, GAIN * (1 + level) * x_protected
        squared = (fake_protected - fake) ** 2
        losses.append(squared.mean())
        mask = np.abs(fake - x).sum(axis=2) > 0.5
        masked = squared[mask].sum() / (3 * mask.sum()) if mask.any() else np.nan
        successes.append(bool(mask.any()) and masked > 0.05)
    return float(np.mean(losses)), float(np.mean(successes))


def test_the_tables_values_against_a_hand_computation(tmp_path: Path) -> None:
    original = photo_file(tmp_path / "p.png")
    folder = PhotoFolder(tmp_path / "out", eps=0.05, settings="s", victims={"lin": "random"}, scorer=scorer)
    photo = open_photo(tmp_path / "p.png")
    folder.protect("p.png", tmp_path / "p.png", photo, [(0, 0, 48)], UniversalWatermark(sign_watermark(), 0.05),
                   ["p.png#1"], torch.zeros(1, 40))
    written = np.asarray(Image.open(tmp_path / "out" / "p.png.png")).astype(np.float64)
    x, x_protected = original / 127.5 - 1.0, written / 127.5 - 1.0  # the square is the photo, at the victims' size
    avg_l, sr_mask = hand_scores(x, x_protected)
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    expected_psnr = peak_signal_noise_ratio(x, x_protected, data_range=2.0)
    expected_ssim = structural_similarity(x, x_protected, data_range=2.0, channel_axis=2, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False)
    with open(tmp_path / "out" / "protection.csv", newline="") as stream:
        row = next(csv.DictReader(stream))
    assert row["photo"] == "p.png" and row["status"] == "protected" and row["faces"] == "1"
    assert row["victims"] == "lin=random" and row["source_sha256"] == ledger.file_digest(tmp_path / "p.png")
    assert sr_mask == 0.5  # the hand computation itself: one condition broken, one not
    assert float(row["avg_l/lin"]) == pytest.approx(avg_l, rel=1e-5)
    assert float(row["sr_mask/lin"]) == sr_mask
    assert float(row["psnr"]) == pytest.approx(expected_psnr, rel=1e-5)
    # SSIM: torchmetrics' (pads by reflection) over the whole photo; skimage's value is its mean away from the border
    from torchmetrics.functional.image import structural_similarity_index_measure

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(2, 0, 1)[None]

    _, full = structural_similarity_index_measure(tensor(x_protected), tensor(x), data_range=2.0,
                                                  return_full_image=True)
    assert float(full[..., 5:-5, 5:-5].mean()) == pytest.approx(expected_ssim, abs=1e-9)
    assert float(row["ssim"]) == pytest.approx(float(full.mean()), abs=1e-6)
    assert np.abs(written - original).max() == 6  # +-eps = 6.375 levels, never rounded up past eps


def test_ssim_on_the_changed_box_equals_the_whole_photos_ssim() -> None:
    rng = np.random.default_rng(2)
    photo = DecodedPhoto(rng.random((150, 200, 3)).astype(np.float32))
    squares = [(30, 40, 50), (120, 20, 30)]
    deltas = torch.from_numpy(rng.uniform(-0.05, 0.05, (2, 3, 8, 8))).float()
    protected = paste(photo, squares, deltas)
    whole = float(per_image_ssim(torch.from_numpy(protected.colour * 2.0 - 1.0).permute(2, 0, 1)[None].double(),
                                 torch.from_numpy(photo.colour * 2.0 - 1.0).permute(2, 0, 1)[None].double())[0])
    assert ssim(photo, protected, squares) == pytest.approx(whole, abs=1e-9)
    assert whole < 0.999  # the check can fail: the squares changed the photo
    assert ssim(photo, photo, []) == 1.0 and psnr(photo, photo) == float("inf")


def test_a_rerun_skips_only_the_same_file_with_the_same_settings(tmp_path: Path) -> None:
    photo_file(tmp_path / "p.png")
    digest = ledger.file_digest(tmp_path / "p.png")
    folder = PhotoFolder(tmp_path / "out", eps=0.05, settings="a", victims={})
    assert not folder.done("p.png", digest)
    folder.protect("p.png", tmp_path / "p.png", open_photo(tmp_path / "p.png"), [(0, 0, 48)],
                   UniversalWatermark(sign_watermark(), 0.05), ["p.png#1"])
    again = PhotoFolder(tmp_path / "out", eps=0.05, settings="a", victims={})  # a new run reads the table back
    assert again.done("p.png", digest)
    assert not PhotoFolder(tmp_path / "out", eps=0.05, settings="b", victims={}).done("p.png", digest)
    assert not again.done("p.png", "another file's content")
    (tmp_path / "out" / "p.png.png").unlink()
    assert not again.done("p.png", digest)  # the output is gone: protect it again


def test_the_table_keeps_earlier_rows_and_lists_faceless_photos(tmp_path: Path) -> None:
    photo_file(tmp_path / "a.png")
    photo_file(tmp_path / "b.png", seed=1)
    first = PhotoFolder(tmp_path / "out", eps=0.05, settings="s", victims={"lin": "official"}, scorer=scorer)
    first.protect("b.png", tmp_path / "b.png", open_photo(tmp_path / "b.png"), [], UniversalWatermark(
        sign_watermark(), 0.05), [])
    second = PhotoFolder(tmp_path / "out", eps=0.05, settings="s", victims={"lin": "official"}, scorer=scorer)
    second.protect("a.png", tmp_path / "a.png", open_photo(tmp_path / "a.png"), [(0, 0, 48)],
                   UniversalWatermark(sign_watermark(), 0.05), ["a.png#1"], torch.zeros(1, 40))
    with open(tmp_path / "out" / "protection.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["photo"] for r in rows] == ["a.png", "b.png"]
    assert rows[1]["status"] == "no face: unchanged" and rows[1]["faces"] == "0" and rows[1]["avg_l/lin"] == ""
    assert rows[1]["psnr"] == "inf" and rows[1]["ssim"] == "1"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "b.png.png")),
                          np.asarray(Image.open(tmp_path / "b.png")))


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="headless Chromium (/usr/bin/chromium) is not installed; "
                    ".ci/run installs it (apt-get install -y chromium)")
def test_the_contact_sheet_shows_every_picture_in_chromium(tmp_path: Path) -> None:
    hostile = "<b onmouseover=alert(1)>x.png"
    photo_file(tmp_path / "plain.png")
    photo_file(tmp_path / hostile, seed=4)
    photo_file(tmp_path / "noface.png", seed=5)
    folder = PhotoFolder(tmp_path / "out", eps=0.05, settings="s", victims={"lin": "random"}, scorer=scorer)
    for name, squares in (("plain.png", [(0, 0, 48)]), (hostile, [(0, 0, 24), (24, 24, 24)]), ("noface.png", [])):
        folder.protect(name, tmp_path / name, open_photo(tmp_path / name), squares,
                       UniversalWatermark(sign_watermark(), 0.05), [f"{name}#{k + 1}" for k in range(len(squares))],
                       torch.zeros(len(squares), 40))
    page = tmp_path / "out" / "index.html"
    probe = tmp_path / "out" / "probe.html"
    script = ("<script>window.addEventListener('load', () => { const all = [...document.images]; document.title = "
              "'images ' + all.length + ' shown ' + all.filter(i => i.complete && i.naturalWidth > 0).length + "
              "' bold ' + document.querySelectorAll('b').length; });</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
               "--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    found = re.search(r"<title>images (\d+) shown (\d+) bold (\d+)</title>", done.stdout)
    assert found, done.stdout[-500:] + done.stderr[-1500:]
    # per photo the original and the protected thumbnail; per face and victim its edit of both
    expected = 3 * 2 + (1 + 2) * 1 * 2
    assert (int(found.group(1)), int(found.group(2)), int(found.group(3))) == (expected, expected, 0)
    assert "&lt;b onmouseover=alert(1)&gt;x.png" in page.read_text()  # the hostile name shown as text
