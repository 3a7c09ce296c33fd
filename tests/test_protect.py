"""`python -m advwm.protect`: a universal watermark applied to photos at their own resolution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import RunsCode, smooth_watermark, v1
from PIL import Image

from advwm.data.transforms import preprocess
from advwm.protect.cli import Job, main, refuse_collisions
from advwm.protect.paste import central_square

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advwm.protect", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "PYTHONPATH": str(REPO)})


def flat(path: Path, colour: tuple[int, int, int] = (100, 120, 140), size: tuple[int, int] = (40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_central_square_follows_the_data_modules_centre_crop() -> None:
    assert central_square(90, 60, None) == (15, 0, 60)
    assert central_square(178, 218, 170) == (4, 24, 170)


def test_protect_adds_the_watermark_on_the_face_square_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = (rng.random((60, 90, 3)) * 155 + 50).astype(np.uint8)  # away from 0/255: no clamping
    Image.fromarray(photo).save(tmp_path / "face.png")
    watermark = smooth_watermark(32)
    torch.save(v1(watermark), tmp_path / "watermark.pt")
    assert main([str(tmp_path / "watermark.pt"), str(tmp_path / "face.png"), "--out", str(tmp_path / "out"),
                 "--no-detect"]) == 0
    protected = np.asarray(Image.open(tmp_path / "out" / "face.png.png"))
    assert protected.shape == photo.shape
    assert np.array_equal(protected[:, :15], photo[:, :15]) and np.array_equal(protected[:, 75:], photo[:, 75:])
    change = (protected[:, 15:75].astype(float) - photo[:, 15:75]) / 127.5  # in [-1, 1] units
    assert np.abs(change).max() <= 0.05 + 1 / 127.5 and np.abs(change).max() > 0.04
    # what a victim sees: the clean face plus (up to resampling and 8-bit rounding) the watermark
    seen = preprocess(Image.fromarray(protected), 32) - preprocess(Image.fromarray(photo), 32)
    assert torch.allclose(seen, watermark, atol=0.012)


def test_center_crop_implies_no_detection_and_protects_that_square(tmp_path: Path) -> None:
    flat(tmp_path / "aligned.png", size=(178, 218))
    torch.save(v1(smooth_watermark(16)), tmp_path / "w.pt")
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "aligned.png"), "--out", str(tmp_path / "o"),
                 "--center-crop", "170"]) == 0
    changed = np.asarray(Image.open(tmp_path / "o" / "aligned.png.png")).astype(int) != [100, 120, 140]
    rows, cols = np.nonzero(changed.any(axis=2))
    assert rows.min() >= 24 and rows.max() < 194 and cols.min() >= 4 and cols.max() < 174


def test_outputs_keep_the_folder_structure_and_the_original_suffix(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for name in ("face.jpg", "face.png", "a/photo.jpg", "b/photo.jpg", "visage_é_顔.jpg"):
        flat(photos / name)
    torch.save(v1(smooth_watermark(8)), tmp_path / "w.pt")
    out = tmp_path / "out"
    assert main([str(tmp_path / "w.pt"), str(photos), "--out", str(out), "--no-detect"]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png") if p.is_file() and "sheet" not in p.parts)
    assert written == ["a/photo.jpg.png", "b/photo.jpg.png", "face.jpg.png", "face.png.png", "visage_é_顔.jpg.png"]
    # the same photos named as files (and one twice): the common folder of the inputs is the base
    out2 = tmp_path / "out2"
    assert main([str(tmp_path / "w.pt"), str(photos / "a/photo.jpg"), str(photos / "b/photo.jpg"),
                 str(photos / "b/photo.jpg"), "--out", str(out2), "--no-detect"]) == 0
    assert sorted(str(p.relative_to(out2)) for p in out2.rglob("*.png") if "sheet" not in p.relative_to(out2).parts) \
        == ["a/photo.jpg.png", "b/photo.jpg.png"]


def test_an_output_folder_inside_the_input_is_not_protected_again(tmp_path: Path) -> None:
    flat(tmp_path / "photos" / "p.png")
    torch.save(v1(smooth_watermark(8)), tmp_path / "w.pt")
    for _ in range(2):
        assert main([str(tmp_path / "w.pt"), str(tmp_path / "photos"), "--out", str(tmp_path / "photos" / "out"),
                     "--no-detect"]) == 0
    assert sorted(p.name for p in (tmp_path / "photos" / "out").glob("*.png")) == ["p.png.png"]


def test_colliding_outputs_are_refused_not_overwritten(tmp_path: Path) -> None:
    lines: list[str] = []
    jobs = [Job(tmp_path / "A.jpg", tmp_path / "o" / "A.jpg.png"),
            Job(tmp_path / "a.jpg", tmp_path / "o" / "a.jpg.png"),  # the same file on a case-insensitive disk
            Job(tmp_path / "x.png", tmp_path / "x.png.png"),  # would overwrite the input photo x.png.png
            Job(tmp_path / "x.png.png", tmp_path / "x.png.png.png")]
    kept, refused = refuse_collisions(jobs, report=lambda line, file=None: lines.append(line))
    assert [j.source.name for j in kept] == ["A.jpg", "x.png.png"] and refused == 2
    assert "a.jpg" in lines[0] and "would overwrite" in lines[0] and "x.png" in lines[1]


def test_an_empty_or_missing_input_is_one_line(tmp_path: Path, capsys) -> None:
    torch.save(v1(smooth_watermark(8)), tmp_path / "w.pt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photo here")
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no photo" in err[0]
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_writes_are_atomic(tmp_path: Path, monkeypatch) -> None:
    flat(tmp_path / "p.png")
    torch.save(v1(smooth_watermark(8)), tmp_path / "w.pt")
    out = tmp_path / "out"
    flat(out / "p.png.png", colour=(1, 2, 3))  # an earlier output
    before = (out / "p.png.png").read_bytes()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "p.png"), "--out", str(out), "--no-detect"]) == 1
    assert (out / "p.png.png").read_bytes() == before  # the old file intact, no half-written one
    assert sorted(p.name for p in out.iterdir()) == ["p.png.png"]  # and no temporary file left behind
    monkeypatch.undo()
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "p.png"), "--out", str(out), "--no-detect"]) == 0
    assert (out / "p.png.png").read_bytes() != before


def test_zero_strength_leaves_the_photo_unchanged(tmp_path: Path) -> None:
    photo = np.full((40, 40, 3), 128, np.uint8)
    Image.fromarray(photo).save(tmp_path / "p.png")
    torch.save(v1(smooth_watermark(16)), tmp_path / "w.pt")
    main([str(tmp_path / "w.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--strength", "0",
          "--no-detect"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "p.png.png")), photo)


def test_an_old_bare_tensor_watermark_still_works_with_a_warning(tmp_path: Path, capsys) -> None:
    flat(tmp_path / "p.png")
    torch.save(smooth_watermark(8), tmp_path / "w.pt")
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--no-detect"]) == 0
    assert "no metadata" in capsys.readouterr().err


def test_per_image_payloads_and_unreadable_photos_get_one_line_each(tmp_path: Path, capsys) -> None:
    torch.save(v1(torch.zeros(1, 3, 8, 8), scope="per_image"), tmp_path / "per_image.pt")
    assert main([str(tmp_path / "per_image.pt"), str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "per-image" in capsys.readouterr().err
    torch.save(v1(smooth_watermark(8)), tmp_path / "watermark.pt")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    flat(tmp_path / "photos" / "ok.png", size=(20, 20))  # under 32 px: refused too
    flat(tmp_path / "photos" / "good.png")
    code = main([str(tmp_path / "watermark.pt"), str(tmp_path / "photos"), "--out", str(tmp_path / "out"),
                 "--no-detect"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 2
    assert "broken.jpg" in err[0] and "cannot identify" in err[0] and "ok.png" in err[1] and "32 px" in err[1]
    assert (tmp_path / "out" / "good.png.png").is_file() and not (tmp_path / "out" / "ok.png.png").exists()


def test_cli_warns_loudly_about_random_victims(tmp_path: Path) -> None:
    flat(tmp_path / "p.png")
    torch.save(v1(smooth_watermark(8), victims={"stargan": "random", "attgan": "official"}), tmp_path / "w.pt")
    result = cli(str(tmp_path / "w.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--no-detect")
    assert result.returncode == 0, result.stderr
    assert "THIS WATERMARK WAS CRAFTED AGAINST RANDOMLY INITIALISED VICTIMS (stargan)" in result.stderr
    assert "does NOT protect" in result.stderr
    assert (tmp_path / "o" / "p.png.png").is_file()


def test_cli_refuses_a_watermark_whose_pickle_runs_code_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    torch.save({"watermark": RunsCode(marker)}, tmp_path / "evil.pt")
    flat(tmp_path / "p.png")
    result = cli(str(tmp_path / "evil.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o"))
    assert result.returncode == 1 and not marker.exists()
    assert len(result.stderr.strip().splitlines()) == 1 and "would run code" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--strength", "-1", "[0, 1]"), ("--strength", "nan", "[0, 1]"), ("--strength", "100", "exceed"),
    ("--strength", "1.01", "exceed"), ("--center-crop", "0", "positive"), ("--center-crop", "-5", "positive"),
    ("--center-crop", "abc", "whole number"), ("--eps", "0", "(0, 1]")])
def test_a_bad_option_is_one_line_without_a_traceback(option: str, value: str, says: str, tmp_path: Path,
                                                      capsys) -> None:
    flat(tmp_path / "p.png")
    torch.save(v1(smooth_watermark(8)), tmp_path / "w.pt")
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "w.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), f"{option}={value}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: argument") and option in lines[0] and says in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_full_strength_never_moves_a_pixel_past_eps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = (rng.random((50, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "p.png")
    board = torch.sign(torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))) * 0.053
    torch.save(v1(board, eps=0.053), tmp_path / "w.pt")
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--no-detect",
                 "--strength", "1"]) == 0
    change = np.asarray(Image.open(tmp_path / "o" / "p.png.png")).astype(float) - photo
    assert np.abs(change).max() / 127.5 <= 0.053 and np.abs(change).max() == 6  # 6.76 levels: never rounded to 7


def test_a_file_without_metadata_is_checked_against_the_stated_default_eps(tmp_path: Path, capsys) -> None:
    flat(tmp_path / "p.png")
    torch.save(smooth_watermark(8) * 20, tmp_path / "big.pt")  # a bare tensor 20x over eps 0.05
    assert main([str(tmp_path / "big.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metadata" in err[0] and "above eps 0.05" in err[0] and "default" in err[0]
    assert not (tmp_path / "o").exists()
    # told its eps, it is accepted and the change stays within it
    assert main([str(tmp_path / "big.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--eps", "1",
                 "--no-detect"]) == 0
    torch.save(smooth_watermark(8), tmp_path / "ok.pt")  # within the default: applied, with the warning
    assert main([str(tmp_path / "ok.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o2"), "--no-detect"]) == 0
    assert "no metadata" in capsys.readouterr().err
    # a file with metadata keeps its own eps: --eps cannot loosen it
    torch.save(v1(smooth_watermark(8)), tmp_path / "v1.pt")
    assert main([str(tmp_path / "v1.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o3"), "--eps", "0.5"]) == 1
    assert "only for watermark files without metadata" in capsys.readouterr().err


def test_measure_scores_against_the_watermarks_victims_when_asked(tmp_path: Path, capsys) -> None:
    from omegaconf import OmegaConf

    from advwm.victims.small import SMALL_ARCHITECTURES

    config = OmegaConf.to_yaml({"image_size": 8, "victims": {"stargan": {
        "weights": "random", "checkpoint": None, "arch": SMALL_ARCHITECTURES["stargan"]}}})
    torch.save(v1(smooth_watermark(8), victims={"stargan": "random"}, config=config), tmp_path / "w.pt")
    flat(tmp_path / "p.png")
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--no-detect"]) == 0
    assert "not measured (the watermark was crafted against random victims" in capsys.readouterr().out
    assert "avg_l/stargan" not in (tmp_path / "o" / "protection.csv").read_text()
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "m"), "--no-detect",
                 "--measure"]) == 0
    header, row = (tmp_path / "m" / "protection.csv").read_text().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert values["victims"] == "stargan=random" and float(values["avg_l/stargan"]) >= 0
    assert 0.0 <= float(values["sr_mask/stargan"]) <= 1.0
