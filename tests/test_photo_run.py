"""A person's photos end to end: `scope=per_image data=folder` and `python -m advwm.protect --craft` (tiny random
victims at 32 px: these runs show the machinery, not protection)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advwm.data.decode import open_photo
from advwm.protect.faces import detect_faces
from advwm.run_files.watermark_file import load_watermark

REPO = Path(__file__).resolve().parents[1]
EPS_LEVELS = 6  # eps 0.05 in [-1, 1] units is 6.375 of 255 levels: the file moves a pixel by 6 at most


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # 512 x 512, NASA's portrait of Eileen Collins


def photos(folder: Path) -> Path:
    """A 512 x 512 portrait JPEG, a photo without a face, and face.jpg + face.png (names that collide once the
    suffix changes)."""
    from matplotlib import cbook
    from skimage import data

    folder.mkdir(parents=True)
    Image.fromarray(astronaut()).save(folder / "portrait.jpg", quality=95)
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg", quality=95)
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
        hopper.convert("RGB").save(folder / "face.jpg", quality=95)
        Image.fromarray(np.asarray(hopper.convert("RGB"))[:, ::-1].copy()).save(folder / "face.png")  # mirrored
    return folder


def table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as stream:
        return {row["photo"]: row for row in csv.DictReader(stream)}


@pytest.mark.slow
def test_a_per_image_run_protects_each_photo_at_its_own_size(tmp_path: Path, capsys) -> None:
    from test_run import compose_run, small

    from advwm.pipeline import craft

    folder = photos(tmp_path / "photos")
    out = tmp_path / "run"
    cfg = compose_run(out, ["+victims=[stargan,attgan]", "weights=random", "scope=per_image", "data=folder",
                            f"data.root={folder}", "aggregator=mgda", "attack=ifgsm", "attack.iterations=2",
                            "data.batch_size=2", *small("stargan", "attgan")])
    metrics = craft(cfg)
    protected = out / "protected"
    printed = capsys.readouterr()
    assert f"protected photos: {protected}" in printed.out
    assert "photos 3/3 protected" in printed.out  # the progress bar's label (Lightning writes it to stdout)
    rows = table(protected / "protection.csv")
    assert sorted(rows) == ["coffee.jpg", "face.jpg", "face.png", "portrait.jpg"]
    assert [r["photo"] for r in metrics["protection"]] == sorted(rows)  # the same rows in the run's results
    for row in metrics["protection"]:
        for key, value in row.items():
            written = rows[row["photo"]][key]
            assert written == str(value) if isinstance(value, str | int) else \
                float(written) == pytest.approx(value, rel=1e-5)  # the table keeps 6 significant digits
    # the photo without a face comes back unchanged, named
    assert rows["coffee.jpg"]["status"] == "no face: unchanged" and rows["coffee.jpg"]["faces"] == "0"
    assert np.array_equal(np.asarray(Image.open(protected / "coffee.jpg.png")),
                          np.rint(open_photo(folder / "coffee.jpg").colour * 255).astype(np.uint8))
    # face.jpg and face.png: both protected, both kept
    for name in ("face.jpg", "face.png"):
        assert rows[name]["status"] == "protected" and (protected / f"{name}.png").is_file()
    assert not np.array_equal(np.asarray(Image.open(protected / "face.jpg.png"))[:, ::-1],
                              np.asarray(Image.open(protected / "face.png.png")))
    # the portrait: 512 x 512, changed only inside the face square, within eps
    original = np.rint(open_photo(folder / "portrait.jpg").colour * 255)
    result = np.asarray(Image.open(protected / "portrait.jpg.png")).astype(np.float64)
    assert result.shape == (512, 512, 3)
    (left, top, side), = [f.square for f in detect_faces(original.astype(np.uint8))]
    inside = np.zeros((512, 512), bool)
    inside[top:top + side, left:left + side] = True
    change = result - original
    assert np.array_equal(result[~inside], original[~inside]) and np.abs(change).max() <= EPS_LEVELS
    assert np.abs(change[inside]).max() > 0
    # and the change is the crafted perturbation upsized to the square (nearest-neighbour, centred), added, rounded
    saved = load_watermark(out / "watermark.pt", scope="per_image")
    delta = saved.perturbations[saved.names.index("portrait.jpg#1")]
    source = np.floor((np.arange(side) + 0.5) * delta.shape[-1] / side).astype(int)  # by hand
    resized = delta.numpy()[:, source][:, :, source].transpose(1, 2, 0).astype(np.float64)
    square = original[top:top + side, left:left + side] / 127.5 - 1.0
    expected = np.clip(np.rint((np.clip(square + resized, -1, 1) + 1) * 127.5) - original[top:top + side,
                       left:left + side], -EPS_LEVELS, EPS_LEVELS)
    assert np.abs(change[top:top + side, left:left + side] - expected).max() <= 1  # float rounding at .5 only
    assert np.mean(change[top:top + side, left:left + side] == expected) > 0.99
    for victim in ("stargan", "attgan"):
        assert 0.0 <= float(rows["portrait.jpg"][f"sr_mask/{victim}"]) <= 1.0
    assert rows["portrait.jpg"]["victims"] == "stargan=random attgan=random"
    assert (protected / "index.html").is_file()


def protect_cli(*args: str) -> subprocess.CompletedProcess:
    from test_run import small

    tiny = [f"--set={o}" for o in small("stargan")[1:]]
    return subprocess.run([sys.executable, "-m", "advwm.protect", *args, "--craft", "--victims", "stargan",
                           "--weights", "random", "--iterations", "2", "--image-size", "32", *tiny],
                          cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"})


@pytest.mark.slow
def test_the_short_command_protects_and_a_rerun_skips_what_is_done(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(astronaut()).save(folder / "portrait.jpg", quality=95)
    from skimage import data

    Image.fromarray(data.coffee()).save(folder / "coffee.jpg", quality=95)
    out = tmp_path / "protected"
    first = protect_cli(str(folder), "--out", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "protected 1 photo(s)" in first.stdout and "1 without a face" in first.stdout
    assert sorted(p.name for p in out.glob("*.png")) == ["coffee.jpg.png", "portrait.jpg.png"]
    assert [p.name for p in (out / "runs").iterdir()] and (out / "index.html").is_file()
    before = (out / "portrait.jpg.png").read_bytes()
    second = protect_cli(str(folder), "--out", str(out))
    assert second.returncode == 0 and "nothing to do" in second.stdout, second.stderr[-2000:]
    assert len(list((out / "runs").iterdir())) == 1  # no run at all
    Image.fromarray(astronaut()).save(folder / "portrait.jpg", quality=90)  # the photo changed: protected again
    third = protect_cli(str(folder), "--out", str(out))
    assert third.returncode == 0, third.stderr[-2000:]
    assert "1 photo(s) already protected" in third.stdout and "protected 1 photo(s)" in third.stdout
    assert (out / "portrait.jpg.png").read_bytes() != before
    assert sorted(table(out / "protection.csv")) == ["coffee.jpg", "portrait.jpg"]
    # other settings: everything again
    fourth = protect_cli(str(folder), "--out", str(out), "--eps", "0.03")
    assert fourth.returncode == 0 and "already protected" not in fourth.stdout, fourth.stderr[-2000:]
    result = np.asarray(Image.open(out / "portrait.jpg.png")).astype(float)
    assert np.abs(result - np.rint(open_photo(folder / "portrait.jpg").colour * 255)).max() <= int(0.03 * 127.5)
    assert torch.is_tensor(load_watermark(next((out / "runs").glob("*/watermark.pt")), scope="per_image").tensor)


@pytest.mark.slow
def test_a_stopped_per_image_run_keeps_its_photos_and_the_resumed_run_writes_the_rest(tmp_path: Path) -> None:
    from omegaconf import open_dict
    from test_run import compose_run, small

    from advwm.pipeline import craft

    folder = photos(tmp_path / "photos")
    out = tmp_path / "run"
    overrides = ["+victims=[stargan]", "weights=random", "scope=per_image", "data=folder", f"data.root={folder}",
                 "attack.iterations=2", "data.batch_size=1", "checkpoint_every=1", *small("stargan")]
    stopped = compose_run(out, [*overrides, "trainer.max_steps=2"])  # the first photo's 2 iterations only
    craft(stopped)
    rows = table(out / "protected" / "protection.csv")
    assert rows["face.jpg"]["status"] == "protected" and "portrait.jpg" not in rows  # kept; the next one not begun
    first = (out / "protected" / "face.jpg.png").stat().st_mtime_ns
    resumed = compose_run(out, overrides)
    with open_dict(resumed):
        resumed.ckpt_path = str(out / "checkpoints" / "last.ckpt")
    metrics = craft(resumed)
    rows = table(out / "protected" / "protection.csv")
    assert rows["portrait.jpg"]["status"] == "protected" and rows["face.jpg"]["status"] == "protected"
    assert (out / "protected" / "face.jpg.png").stat().st_mtime_ns == first  # not written twice
    assert [r["photo"] for r in metrics["protection"]] == sorted(rows)
    assert all(isinstance(r["psnr"], float) for r in metrics["protection"])  # rows read back keep their numbers
    uninterrupted = compose_run(tmp_path / "once", overrides)
    craft(uninterrupted)
    assert (tmp_path / "once" / "protected" / "portrait.jpg.png").read_bytes() == \
        (out / "protected" / "portrait.jpg.png").read_bytes()  # resuming gives the uninterrupted photo


def test_craft_without_the_official_weights_is_one_line_in_protects_own_options(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(astronaut()).save(folder / "portrait.jpg", quality=95)
    weights = tmp_path / "no_weights"
    result = subprocess.run([sys.executable, "-m", "advwm.protect", str(folder), "--out", str(tmp_path / "out"),
                             "--craft", "--victims", "stargan", f"--set=paths.weights_dir={weights}"],
                            cwd=REPO, capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no official weights for 1 victim(s): stargan (")
    assert "pass --set victims.<name>.checkpoint=" in line and line.endswith(
        "or add --weights random for a smoke run with random victims")
    assert not (tmp_path / "out").exists()
