"""The dashboard a researcher reads first: methods as rows with the seeds pooled, the best per column marked
(direction per metric family, ties within spread said), one section per sweep of a parent folder with only
its own varying settings, refused/failed runs apart, curves over iterations with seed bands, readable numbers,
and a page that fits 1400 px in headless Chromium for one sweep, two sweeps and a search."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_report import CHROMIUM, VIEWPORT, chromium, config_of, fake_run, md_table, page_width

from advwm.report import collect, main
from advwm.report.curves import band, logged_curves, short_labels
from advwm.report.ranking import BEST, TIED, Stat, direction, mark_column
from advwm.report.tables import PREFERRED, fmt_number, fmt_stat

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ the rules


def test_the_direction_of_each_metric_family() -> None:
    """Written down once (advwm.report.ranking), checked here against the list in its docstring."""
    expected = {"sr_mask": "max", "l2_mask": "max", "ruiz": "max", "avg_l": "max", "attack_rate": "max",
                "fid": "max", "psnr": "max", "ssim": "max", "liveness/acs_after": "min", "liveness/tfhc_after": "min",
                "liveness/acs_before": None, "liveness/tfhc_before": None}
    assert set(expected) == set(PREFERRED)  # every family the report knows has its rule here
    assert {family: direction(family) for family in PREFERRED} == expected
    assert direction("robust/jpeg75/sr_mask") == "max" and direction("robust/jpeg75/empty_mask") is None
    assert direction("something_new") is None and direction("seconds") is None


def _stats(*cells: tuple[float, float, int]) -> list[Stat]:
    return [Stat(*cell) for cell in cells]


def test_the_best_is_crowned_only_when_no_spread_overlaps_it() -> None:
    nan = math.nan
    # 0.7 ± 0.1 = [0.6, 0.8] against 0.3 ± 0.1 = [0.2, 0.4]: apart, the first is best
    assert mark_column(_stats((0.7, 0.1, 3), (0.3, 0.1, 3)), "max") == [BEST, ""]
    assert mark_column(_stats((0.7, 0.1, 3), (0.3, 0.1, 3)), "min") == ["", BEST]
    # [0.5, 0.9] and [0.45, 0.55] overlap: both tied; [0.0, 0.2] is apart from the best and unmarked
    assert mark_column(_stats((0.7, 0.2, 3), (0.5, 0.05, 3), (0.1, 0.1, 3)), "max") == [TIED, TIED, ""]
    # touching intervals count as overlapping: [0.4, 0.6] and [0.6, 0.8]
    assert mark_column(_stats((0.5, 0.1, 2), (0.7, 0.1, 2)), "max") == [TIED, TIED]
    # one seed each: no spread, so only equal values tie
    assert mark_column(_stats((0.5, nan, 1), (0.5, nan, 1), (0.4, nan, 1)), "max") == [TIED, TIED, ""]
    assert mark_column(_stats((0.5, nan, 1), (0.6, nan, 1)), "max") == ["", BEST]
    # the spread of the *best* row decides: [0.8, 1.0] vs 0.75 (one seed) is apart
    assert mark_column(_stats((0.9, 0.1, 3), (0.75, nan, 1)), "max") == [BEST, ""]
    # rows without a value do not count; one value left, or no direction: nothing is marked
    assert mark_column(_stats((nan, nan, 0), (0.2, nan, 1), (0.1, nan, 1)), "max") == ["", BEST, ""]
    assert mark_column(_stats((nan, nan, 0), (0.2, nan, 1)), "max") == ["", ""]
    assert mark_column(_stats((0.9, 0.1, 3), (0.1, 0.1, 3)), None) == ["", ""]


def test_numbers_below_a_thousandth_are_in_scientific_notation() -> None:
    assert fmt_number(9.045497e-07) == "9.05e-07"
    assert fmt_number(-0.000512) == "-5.12e-04"
    assert fmt_number(0.0) == "0.000" and fmt_number(-0.0) == "-0.000"
    assert fmt_number(0.001) == "0.001" and fmt_number(0.0123) == "0.012" and fmt_number(12.5) == "12.500"
    assert fmt_number(4.2e-5, digits=2) == "4.2e-05"
    assert fmt_stat(7.7e-07, 2.03e-07, 2) == "7.70e-07 ± 2.03e-07 (n=2)"
    assert fmt_stat(0.5, math.nan, 1) == "0.500 (n=1)" and fmt_stat(0.5, math.nan, 1, with_n=False) == "0.500"
    assert fmt_stat(math.nan, math.nan, 0) == "–"


# ------------------------------------------------------------------------------------------------ fabricated sweeps

# SR_mask per (method, seed): sgd 0.5/0.6/0.7 ([0.5, 0.7]); pgd 0.55/0.65/0.75 ([0.55, 0.75]): tied with sgd;
# adam 0.1/0.1/0.1 ([0.1, 0.1]): apart. PSNR: adam highest and apart. l2_mask tiny (scientific notation).
SR = {("sgd", 0): 0.5, ("sgd", 1): 0.6, ("sgd", 2): 0.7, ("pgd", 0): 0.55, ("pgd", 1): 0.65, ("pgd", 2): 0.75,
      ("adam", 0): 0.1, ("adam", 1): 0.1, ("adam", 2): 0.1}
PSNR = {"sgd": 30.0, "pgd": 31.0, "adam": 40.0}


def write_curves(folder: Path, rows: list[dict[str, float]]) -> None:
    """csv/metrics.csv as Lightning's CSVLogger writes it: one column per key, empty cells elsewhere."""
    keys = sorted({k for row in rows for k in row if k != "step"}) + ["step"]
    (folder / "csv").mkdir(parents=True, exist_ok=True)
    with (folder / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def attack_sweep(root: Path, weights: str = "official") -> Path:
    """A multirun attack=sgd,pgd,adam x seed=0,1,2 with internal keys that differ between runs (as real runs'
    folders do) and periodic metrics in the CSV log."""
    for index, ((attack, seed), sr) in enumerate(SR.items()):
        out = root / str(index)
        config = config_of("cmua", out, seed=seed, attack={"name": attack, "iterations": 3},
                           metrics={"every_n_steps": 1},
                           callbacks={"evaluation": {"settings": {"every_n_steps": 1, "seed_note": f"{index}"}},
                                      "export": {"output_dir": str(out)}},
                           logger={"csv": {"save_dir": str(out), "version": f"v{index}"}},
                           hydra={"job": {"num": index}})
        metrics = {"sr_mask/stargan": sr, "sr_mask/mean": sr, "l2_mask/stargan": sr * 1e-5,
                   "psnr": PSNR[attack] + seed * 0.1, "weights/stargan": weights, "seconds": 2.0, "steps": 3}
        fake_run(out, config, metrics, {"attack": attack}, [f"attack={attack}", f"seed={seed}"])
        write_curves(out, [{"loss/stargan": 0.1 * step * (1 + seed), "loss/total": 0.1 * step, "step": step}
                           for step in range(3)]
                     + [{"periodic/sr_mask/stargan": sr * step / 3, "periodic/sr_mask/mean": sr * step / 3,
                         "step": step} for step in (1, 2, 3)])
    return root


def iterations_sweep(root: Path) -> Path:
    """A second multirun (attack.iterations=5,10), plus a refused and a failed run."""
    for index, iterations in enumerate((5, 10)):
        out = root / str(index)
        config = config_of("cmua", out, attack={"name": "pgd", "iterations": iterations},
                           callbacks={"evaluation": {"settings": {"every_n_steps": iterations}}})
        fake_run(out, config, {"sr_mask/stargan": iterations / 20, "weights/stargan": "random"}, {"attack": "pgd"},
                 [f"attack.iterations={iterations}"])
    refused = root / "2"
    fake_run(refused, config_of("cmua", refused, attack={"name": "pgd", "iterations": -1}), None, {"attack": "pgd"},
             ["attack.iterations=-1"])
    (refused / "config.yaml").unlink()  # written only once work starts
    (refused / "craft.log").write_text("[2026-01-01 00:00:00,000][advwm.run_files.loggers][ERROR] - error: "
                                       "attack.iterations=-1: choose a whole number >= 1\n")
    failed = root / "3"
    fake_run(failed, config_of("cmua", failed, attack={"name": "pgd", "iterations": 20}), None, {"attack": "pgd"},
             ["attack.iterations=20"])
    (failed / "checkpoints").mkdir()
    (failed / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (failed / "craft.log").write_text("[t][advwm][INFO] - start\n[t][advwm.run_files.loggers][ERROR] - error: "
                                      "disk full writing watermark.pt\n")
    return root


def test_methods_are_rows_with_seeds_pooled_the_best_marked_and_ties_said(tmp_path: Path) -> None:
    root = attack_sweep(tmp_path / "craft" / "multiruns" / "t1")
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    header, body = md_table(text, "## sr_mask")
    assert header == ["method", "stargan", "mean"]
    rows = {row[0]: row[1:] for row in body}
    assert list(rows) == ["attack=sgd", "attack=pgd", "attack=adam"]  # 3 methods, not 9 runs
    for attack in ("sgd", "pgd", "adam"):
        samples = [SR[(attack, seed)] for seed in range(3)]
        mean = sum(samples) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in samples) / 2)
        assert f"{mean:.3f} ± {std:.3f} (n=3)" in rows[f"attack={attack}"][0]
    # pgd has the best mean (0.65) but its spread [0.55, 0.75] overlaps sgd's [0.5, 0.7]: no crown, said so
    assert rows["attack=pgd"][0] == "0.650 ± 0.100 (n=3) (tied)" and rows["attack=sgd"][0].endswith("(tied)")
    assert "**" not in "".join(rows["attack=adam"])
    assert "stargan: no clear best: attack=pgd (best mean) tied within spread with attack=sgd." in text
    # PSNR: adam 40.1 ± 0.1 is apart from the rest: crowned
    _, body = md_table(text, "## psnr")
    assert {row[0]: row[1] for row in body}["attack=adam"] == "**40.100 ± 0.100 (n=3)** (best)"
    assert "Higher is better (watermark less visible)" in text
    # tiny values stay readable, and the per-seed rows follow, folded
    _, body = md_table(text, "## l2_mask")
    assert body[0][1].startswith("6.00e-06 ± 1.00e-06 (n=3)")
    folded = text.split("## l2_mask")[1].split("<details><summary>Per-seed rows (9 runs)</summary>")[1]
    _, seeds = md_table("x\n" + folded, "x")
    assert [row[0] for row in seeds[:3]] == ["attack=sgd, seed=0", "attack=sgd, seed=1", "attack=sgd, seed=2"]
    assert seeds[0][1] == "5.00e-06"

    page = (tmp_path / "out" / "report.html").read_text()
    table = page.split("<h2>sr_mask</h2>")[1].split("</table>")[0]
    assert "<th>attack</th><th>stargan</th><th>mean</th>" in table  # the key named once, the seed pooled
    assert table.count("class='num tied'") == 4 and "class='num best'" not in table
    assert "<span class='visually-hidden'> (tied within spread)</span>" in table
    psnr = page.split("<h2>psnr</h2>")[1].split("</table>")[0]
    assert re.search(r"<td class='num best'>40\.100 ± 0\.100 \(n=3\)<span class='visually-hidden'> \(best\)</span>",
                     psnr)
    assert "<details><summary>Per-seed rows (9 runs)</summary>" in page


def test_random_weight_methods_keep_their_mark(tmp_path: Path) -> None:
    root = attack_sweep(tmp_path / "runs", weights="random")
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    _, body = md_table(text, "## sr_mask")
    assert [row[0] for row in body] == ["attack=sgd †", "attack=pgd †", "attack=adam †"]
    assert "† randomly initialised victims (stargan)" in text


def test_a_parent_folder_gives_one_section_per_sweep_with_its_own_settings(tmp_path: Path) -> None:
    attack_sweep(tmp_path / "craft" / "multiruns" / "t1")
    iterations_sweep(tmp_path / "ablation" / "multiruns" / "t2")
    runs = [r for r in collect([tmp_path]) if r.path.parent.name == "t2"]
    assert [r.status for r in runs] == ["ok", "ok", "refused", "failed"]
    assert runs[2].error == "attack.iterations=-1: choose a whole number >= 1"  # the one line, no log prefix
    assert "disk full writing watermark.pt" in runs[3].error  # crafting had begun: failed, not refused
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    _, overview = md_table(text, "## Overview")
    assert overview == [["ablation/multiruns/t2", "4", "2", "1", "1", "attack.iterations"],
                        ["craft/multiruns/t1", "9", "9", "0", "0", "attack, seed"]]
    first, second = text.split("## ablation/multiruns/t2")[1].split("## craft/multiruns/t1")
    header, body = md_table(first, "### sr_mask")
    assert header == ["method", "stargan"]
    assert body == [["attack.iterations=5 †", "0.250"], ["attack.iterations=10 †", "**0.500** (best)"]]
    _, refused = md_table(first, "### Refused runs")
    assert refused == [["attack.iterations=-1", "2", "attack.iterations=-1: choose a whole number >= 1"]]
    _, failed = md_table(first, "### Failed runs")
    assert [row[:2] for row in failed] == [["attack.iterations=20", "3"]]
    assert failed[0][2].startswith("no metrics.json") and "disk full" in failed[0][2]
    _, body = md_table(second, "### sr_mask")
    assert [row[0] for row in body] == ["attack=sgd", "attack=pgd", "attack=adam"]
    page = (tmp_path / "out" / "report.html").read_text()
    for internal in ("callbacks", "paths.", "logger", "hydra", "every_n_steps", "seed_note", "version"):
        assert not re.search(f"<th>[^<]*{re.escape(internal)}", page), internal  # never a column
    assert "id='sweep-1'>ablation/multiruns/t2</h2>" in page and "id='sweep-2'>craft/multiruns/t1</h2>" in page
    stdout = subprocess.run([sys.executable, "-m", "advwm.report", str(tmp_path), "--out", str(tmp_path / "o2")],
                            cwd=REPO, capture_output=True, text=True, timeout=1800).stdout
    assert "ablation/multiruns/t2: sr_mask\n| method | stargan |" in stdout
    assert "craft/multiruns/t1: sr_mask\n| method | stargan | mean |" in stdout
    assert "13 runs (1 refused, 1 failed)" in stdout


def test_curves_pool_the_seeds_of_each_method_into_a_band(tmp_path: Path) -> None:
    root = attack_sweep(tmp_path / "runs")
    curves = logged_curves(root / "0")
    assert curves["loss/stargan"] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert curves["periodic/sr_mask/mean"] == [(1, 0.5 / 3), (2, 1.0 / 3), (3, 0.5)]
    assert "step" not in curves and not any(k.startswith("sr_mask") for k in curves)
    # loss/stargan = 0.1 * step * (1 + seed): at step 2 the seeds give 0.2, 0.4, 0.6
    pooled = band([logged_curves(root / str(i))["loss/stargan"] for i in range(3)])
    assert pooled.steps == [0, 1, 2]
    assert pooled.mean == pytest.approx([0.0, 0.2, 0.4]) and pooled.low == pytest.approx([0.0, 0.1, 0.2])
    assert pooled.high == pytest.approx([0.0, 0.3, 0.6])
    uneven = band([[(0, 1.0), (1, math.nan)], [(0, 3.0), (2, 5.0)]])  # NaN left out; a step only one run has
    assert (uneven.steps, uneven.mean, uneven.low, uneven.high) == ([0, 2], [2.0, 5.0], [1.0, 5.0], [3.0, 5.0])
    assert short_labels(["a=1", "a=2"]) == (["a=1", "a=2"], False)
    assert short_labels(["x" * 40, "y"]) == (["M1", "M2"], True)

    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    files = tmp_path / "out" / "report_files"
    for name in ("curves_loss.png", "curves_periodic_sr_mask.png"):
        assert (files / name).stat().st_size > 5000, name
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Curves over iterations" in text and "the band their min–max" in text
    assert "No periodic metrics were logged" not in text


def test_long_method_labels_get_a_key_beside_the_curves(tmp_path: Path) -> None:
    for index, name in enumerate(("a_very_long_attack_name_number_one", "a_very_long_attack_name_number_two")):
        out = tmp_path / "runs" / str(index)
        fake_run(out, config_of("cmua", out, attack={"name": name}), {"sr_mask/stargan": 0.1},
                 overrides=[f"attack.name={name}"])
        write_curves(out, [{"loss/stargan": 0.1 * s, "step": s} for s in range(3)])
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    _, key = md_table((tmp_path / "out" / "report.md").read_text(), "## Curves over iterations")
    assert key == [["M1", "attack.name=a_very_long_attack_name_number_one"],
                   ["M2", "attack.name=a_very_long_attack_name_number_two"]]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "title='M1: attack.name=a_very_long_attack_name_number_one; M2: " in page  # the hover title
    assert "No periodic metrics were logged" in page


# ------------------------------------------------------------------------------------------------ a search


@pytest.fixture()
def search(tmp_path: Path) -> Path:
    """A step-size search as Hydra's Optuna sweeper leaves it: trial folders with trial.json, the study in
    SQLite, optimization_results.yaml."""
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna' / 'cmua_stargan.db'}"
    (tmp_path / "optuna").mkdir()
    study = optuna.create_study(study_name="cmua_stargan", storage=storage, direction="maximize")
    root = tmp_path / "craft" / "multiruns" / "search"
    for number, scale in enumerate((1.5, 7.25, 3.0)):
        trial = study.ask()
        trial.suggest_float("victims.stargan.step_scale", 0.0, 10.0)
        value = scale / 10
        study.tell(trial, value)
        out = root / str(number)
        config = config_of("cmua", out, hparams_search_storage=storage, study_name="cmua_stargan",
                           objective="avg_l/mean", victims={"stargan": {"step_scale": scale}})
        fake_run(out, config, {"avg_l/stargan": value, "avg_l/mean": value, "sr_mask/stargan": 0.0,
                               "weights/stargan": "random"}, {"aggregator": "cmua"},
                 [f"victims.stargan.step_scale={scale}"])
        (out / "trial.json").write_text(f'{{"trial": {number}, "study": "cmua_stargan"}}')
        write_curves(out, [{"loss/stargan": scale * s, "step": s} for s in range(2)])
    (root / "optimization_results.yaml").write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": {"victims.stargan.step_scale": 7.25}, "best_value": 0.725}))
    return root


def test_a_search_shows_its_trials_ranked_and_its_study(search: Path, tmp_path: Path) -> None:
    assert main([str(search), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    _, body = md_table(text, "## avg_l")
    assert body[1] == ["victims.stargan.step_scale=7.25 †", "**0.725** (best)", "**0.725** (best)"]
    assert "## Sweep history: cmua_stargan" in text and "objective `avg_l/mean`" in text
    assert "Best value: 0.725 (trial 1" in text and "## Sweeper summary" in text


# ------------------------------------------------------------------------------------------------ in Chromium


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="headless Chromium (/usr/bin/chromium) is not installed; "
                    ".ci/run installs it (apt-get install -y chromium)")
def test_the_pages_fit_1400_px_for_one_sweep_two_sweeps_and_a_search(search: Path, tmp_path: Path) -> None:
    parent = tmp_path / "outputs"
    attack_sweep(parent / "craft" / "multiruns" / "t1")
    iterations_sweep(parent / "ablation" / "multiruns" / "t2")
    cases = {"one": [parent / "craft" / "multiruns" / "t1"], "two": [parent], "search": [search]}
    for name, paths in cases.items():
        out = tmp_path / f"page_{name}"
        assert main([*map(str, paths), "--out", str(out)]) == 0
        headings = re.findall(r"<h2 id='sweep-\d+'>([^<]*)</h2>", (out / "report.html").read_text())
        assert headings == {"one": [], "two": ["ablation/multiruns/t2", "craft/multiruns/t1"], "search": []}[name]
        scroll_width, inner_width = page_width(out / "report.html", tmp_path)
        assert inner_width == VIEWPORT[0], name
        assert scroll_width <= VIEWPORT[0], name
    shot = tmp_path / "two.png"
    chromium(tmp_path / "page_two" / "report.html", tmp_path / "profile_shot", f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000


# ------------------------------------------------------------------------------------ a CLI that answers at once


def _imported(*args: str) -> set[str]:
    """The top-level packages `python -X importtime <args>` imported (its stderr lists every import)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_the_help_answers_without_torch_lightning_or_matplotlib() -> None:
    imported = _imported("-m", "advwm.report", "--help")
    assert "argparse" in imported and "advwm" in imported  # the probe sees imports
    assert not imported & {"torch", "lightning", "matplotlib", "optuna", "PIL"}, imported & {"torch", "lightning"}


def test_a_report_is_built_without_torch_or_lightning(tmp_path: Path) -> None:
    root = attack_sweep(tmp_path / "runs")
    imported = _imported("-m", "advwm.report", str(root), "--out", str(tmp_path / "out"))
    assert "matplotlib" in imported  # it drew the charts
    assert not imported & {"torch", "lightning"}
