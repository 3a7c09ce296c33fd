"""`python -m advwm.protect`: a universal watermark applied to photos at their own resolution."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advwm.data.transforms import preprocess
from advwm.protect import face_square, main


def smooth_watermark(size: int, eps: float = 0.05) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    wave = torch.sin(2 * math.pi * xx / size) * torch.cos(2 * math.pi * yy / size)
    return torch.stack([wave, -wave, 0.5 * wave]) * eps


def test_face_square_follows_the_data_modules_centre_crop() -> None:
    assert face_square(90, 60, None) == (15, 0, 60)
    assert face_square(178, 218, 170) == (4, 24, 170)


def test_protect_adds_the_watermark_on_the_face_square_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = (rng.random((60, 90, 3)) * 155 + 50).astype(np.uint8)  # away from 0/255: no clamping
    Image.fromarray(photo).save(tmp_path / "face.png")
    watermark = smooth_watermark(32)
    torch.save(watermark, tmp_path / "watermark.pt")
    assert main([str(tmp_path / "watermark.pt"), str(tmp_path / "face.png"), "--out", str(tmp_path / "out")]) == 0
    protected = np.asarray(Image.open(tmp_path / "out" / "face.png"))
    assert protected.shape == photo.shape
    assert np.array_equal(protected[:, :15], photo[:, :15]) and np.array_equal(protected[:, 75:], photo[:, 75:])
    change = (protected[:, 15:75].astype(float) - photo[:, 15:75]) / 127.5  # in [-1, 1] units
    assert np.abs(change).max() <= 0.05 + 1 / 127.5 and np.abs(change).max() > 0.04
    # what a victim sees: the clean face plus (up to resampling and 8-bit rounding) the watermark
    seen = preprocess(Image.fromarray(protected), 32) - preprocess(Image.fromarray(photo), 32)
    assert torch.allclose(seen, watermark, atol=0.012)


def test_per_image_payloads_and_unreadable_photos_get_one_line_each(tmp_path: Path, capsys) -> None:
    torch.save({"perturbations": torch.zeros(1, 3, 8, 8), "names": ["a"]}, tmp_path / "per_image.pt")
    assert main([str(tmp_path / "per_image.pt"), str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "per-image" in capsys.readouterr().err
    torch.save(smooth_watermark(8), tmp_path / "watermark.pt")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (20, 20), (100, 120, 140)).save(tmp_path / "photos" / "ok.png")
    code = main([str(tmp_path / "watermark.pt"), str(tmp_path / "photos"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "skipped" in err and "broken.jpg" in err
    assert (tmp_path / "out" / "ok.png").is_file()


def test_zero_strength_leaves_the_photo_unchanged(tmp_path: Path) -> None:
    photo = np.full((40, 40, 3), 128, np.uint8)
    Image.fromarray(photo).save(tmp_path / "p.png")
    torch.save(smooth_watermark(16), tmp_path / "w.pt")
    main([str(tmp_path / "w.pt"), str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--strength", "0"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "p.png")), photo)
