"""The comparison report (`python -m advwm.report`): run discovery, method labels, tables, charts, sweeps."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from advwm import report
from advwm.report import Run, build_table, collect, main, varying

REPO = Path(__file__).resolve().parents[1]
TINY = ["+victims=[stargan,attgan]", "weights=random", "logger=csv", "metrics=fast", "image_size=32",
        "victims.stargan.arch.conv_dim=8", "victims.stargan.arch.repeat_num=1", "victims.attgan.arch.enc_dim=8",
        "victims.attgan.arch.dec_dim=8", "victims.attgan.arch.enc_layers=3", "victims.attgan.arch.dec_layers=3",
        "attack.iterations=1", "data.craft=[astronaut]", "data.evaluate=[grace_hopper]"]


def md_table(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table after `heading` in report.md: (header cells, body rows)."""
    lines = text.splitlines()
    rows: list[list[str]] = []
    for line in lines[lines.index(heading) + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, _rule, *body = rows
    return header, body


def unmarked(cell: str) -> str:
    """A table cell without the report's best/tied mark (`**x** (best)`, `x (tied)`)."""
    return re.sub(r"^\*\*(.*)\*\* \(best\)$", r"\1", cell).removesuffix(" (tied)")


def fake_run(folder: Path, config: dict, metrics: dict | str | None, choices: dict | None = None,
             overrides: list[str] | None = None) -> Path:
    """A run folder as advwm writes it: config.yaml, .hydra/{config,hydra,overrides}.yaml, metrics.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or []))
    hydra = {"hydra": {"runtime": {"choices": {"hydra/launcher": "basic", "paths": "default", **(choices or {})}}}}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    if isinstance(metrics, dict):
        (folder / "metrics.json").write_text(json.dumps(metrics))
    elif isinstance(metrics, str):
        (folder / "metrics.json").write_text(metrics)
    return folder


def config_of(aggregator: str, out: Path, **extra) -> dict:
    config = {"seed": 0, "image_size": 32, "paths": {"output_dir": str(out), "log_dir": "/somewhere"},
              "aggregator": {"name": aggregator}, "trainer": {"default_root_dir": str(out)},
              "logger": {"csv": {"save_dir": str(out)}}}
    config.update(extra)
    return config


# ------------------------------------------------------------------------------------- the real multirun


@pytest.fixture(scope="module")
def multirun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny real runs (aggregator=mgda,uniform) through the CLI, once for the module."""
    log_dir = tmp_path_factory.mktemp("report_runs")
    command = [sys.executable, "-m", "advwm.run", "-m", *TINY, "aggregator=mgda,uniform", f"paths.log_dir={log_dir}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (log_dir / "cli_stdout.txt").write_text(result.stdout)
    (sweep,) = (log_dir / "craft" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]
    return sweep


@pytest.mark.slow
def test_the_cli_renders_a_table_with_each_runs_numbers(multirun: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "advwm.report", str(multirun), "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report.md" in result.stdout
    text = (out / "report.md").read_text()
    header, body = md_table(text, "## sr_mask")
    assert header == ["method", "stargan", "attgan", "mean"]
    metrics = {n: json.loads((multirun / n / "metrics.json").read_text()) for n in ("0", "1")}
    expected = {"aggregator=mgda": metrics["0"], "aggregator=uniform": metrics["1"]}
    assert len(body) == 2
    for row in body:
        label = row[0]
        assert label.endswith(" †")  # random-weight runs are marked, and the footnote says why
        values = expected[label.removesuffix(" †")]
        for cell, key in zip(row[1:], ("sr_mask/stargan", "sr_mask/attgan", "sr_mask/mean"), strict=True):
            assert unmarked(cell) == f"{values[key]:.3f}"
    assert "† randomly initialised victims (stargan, attgan)" in text
    # per-condition tables, one per victim, with the metrics.json values
    header, body = md_table(text, "### sr_mask: attgan per condition")
    assert header[1:] == [k.rsplit("/", 1)[1] for k in metrics["0"] if k.startswith("sr_mask/attgan/")] + ["pooled"]
    assert len(body) == 2
    for victim in ("stargan", "attgan", "mean"):
        assert (out / "report_files" / f"bar_sr_mask_{victim}.png").stat().st_size > 1000
    assert "![sr_mask/stargan](report_files/bar_sr_mask_stargan.png)" in text


@pytest.mark.slow
def test_build_table_gives_metrics_json_values_and_the_aggregator_is_the_varying_key(multirun: Path) -> None:
    runs = collect([multirun.parent])  # a parent of the multirun works too
    assert [r.path.name for r in runs] == ["0", "1"] and not any(r.failed for r in runs)
    assert varying(runs) == (["aggregator"], [])
    assert [r.label for r in runs] == ["aggregator=mgda", "aggregator=uniform"]
    columns, rows = build_table(runs, "sr_mask")
    assert columns == ["method", "sr_mask/stargan", "sr_mask/attgan", "sr_mask/mean"]
    for run, row in zip(runs, rows, strict=True):
        on_disk = json.loads((run.path / "metrics.json").read_text())
        assert row == [run.label, *(float(on_disk[c]) for c in columns[1:])]
    columns, rows = build_table(runs, ["sr_mask", "l2_mask"])
    assert columns[4:] == ["l2_mask/stargan", "l2_mask/attgan", "l2_mask/mean"]
    for run, row in zip(runs, rows, strict=True):
        assert row[4:6] == [run.metrics["l2_mask/stargan"], run.metrics["l2_mask/attgan"]]
        assert row[6] == pytest.approx((row[4] + row[5]) / 2)  # no l2_mask/mean in metrics.json: computed


@pytest.mark.slow
def test_the_html_report_is_self_contained(multirun: Path, tmp_path: Path) -> None:
    assert main([str(multirun), "--out", str(tmp_path), "--metrics", "sr_mask,l2_mask"]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6  # 3 bars per metric
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    assert "aggregator=mgda" in page and "aggregator=uniform" in page
    assert "<h2>l2_mask</h2>" in page


# ------------------------------------------------------------------------------------- hand-made runs


def test_failed_runs_are_listed_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "multiruns" / "2026-01-01_00-00-00"
    good = {"sr_mask/stargan": 0.5, "sr_mask/mean": 0.5, "weights/stargan": "official"}
    fake_run(root / "0", config_of("mgda", root / "0"), good, {"aggregator": "mgda"})
    fake_run(root / "1", config_of("uniform", root / "1"), "{not json", {"aggregator": "uniform"})
    fake_run(root / "2", config_of("cmua", root / "2"), None, {"aggregator": "cmua"})
    (root / "2" / "craft.log").write_text("[t][advwm][INFO] - start\n[t][advwm][ERROR] - victim attgan: boom\n")
    runs = collect([root])
    assert [r.failed for r in runs] == [False, True, True]
    assert "unreadable" in runs[1].error and "no metrics.json" in runs[2].error and "boom" in runs[2].error
    assert [r.label for r in runs] == ["aggregator=mgda", "aggregator=uniform", "aggregator=cmua"]
    assert main([str(root)]) == 0  # --out defaults to the first argument
    text = (root / "report.md").read_text()
    _, body = md_table(text, "## Failed runs")
    assert [row[0] for row in body] == ["aggregator=uniform", "aggregator=cmua"]
    assert "victim attgan: boom" in body[1][2]
    _, body = md_table(text, "## sr_mask")
    assert body == [["aggregator=mgda", "0.500", "0.500"]]  # official weights: no † marker
    assert "†" not in text


def test_nan_and_missing_values_show_as_a_dash_and_the_mean_is_computed(tmp_path: Path) -> None:
    runs = [
        Run(tmp_path / "a", {"attack.iterations": 1}, {"fid/stargan": 12.0, "fid/attgan": float("nan")}, "a"),
        Run(tmp_path / "b", {"attack.iterations": 2}, {"fid/stargan": 10.0, "fid/attgan": 20.0, "psnr": 30.0}, "b"),
    ]
    columns, rows = build_table(runs, "fid")
    assert columns == ["method", "fid/stargan", "fid/attgan", "fid/mean"]
    assert rows[0][:2] == ["a", 12.0] and math.isnan(rows[0][2]) and rows[0][3] == 12.0  # nan-aware mean
    assert rows[1] == ["b", 10.0, 20.0, 15.0]
    columns, rows = build_table(runs, "psnr")  # a metric with no per-victim breakdown: one column
    assert columns == ["method", "psnr"] and math.isnan(rows[0][1]) and rows[1][1] == 30.0
    assert report.fmt_number(float("nan")) == "–" and report.fmt_number(None) == "–"
    assert report.fmt_number(0.12345) == "0.123"

    for name, value in (("a", "NaN"), ("b", "0.25")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(f'{{"sr_mask/stargan": {value}, "weights/stargan": "random"}}')
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    _, body = md_table((tmp_path / "out" / "report.md").read_text(), "## sr_mask")
    assert body == [["a †", "–"], ["b †", "0.250"]]  # no config: rows named by folder


def test_method_labels_drop_noise_and_prefer_hydra_choices(tmp_path: Path) -> None:
    runs_dir = tmp_path / "multiruns" / "x"
    specs = [("mgda", 0, 1), ("mgda", 0, 2), ("cmua", 1, 1)]
    for index, (aggregator, seed, iterations) in enumerate(specs):
        out = runs_dir / str(index)
        config = config_of(aggregator, out, seed=seed, attack={"iterations": iterations, "step_size": 0.01},
                           wandb={"name": f"run_2026-01-0{index + 1}_12-00-0{index}"})
        if aggregator == "cmua":
            config["aggregator"].update(variant="paper", alpha=0.5)
        fake_run(out, config, {"sr_mask/stargan": 0.1 * index}, {"aggregator": aggregator, "regularizer": "none"},
                 [f"aggregator={aggregator}", f"attack.iterations={iterations}", f"seed={seed}",
                  f"paths.log_dir={tmp_path}", "hydra.sweeper.n_trials=3"])
    runs = collect([runs_dir])
    groups, keys = varying(runs)
    # paths.*, output/save dirs and timestamps are noise; aggregator.* is explained by the choice
    assert groups == ["aggregator"] and keys == ["attack.iterations", "seed"]
    assert [r.label for r in runs] == ["aggregator=mgda, attack.iterations=1, seed=0",
                                       "aggregator=mgda, attack.iterations=2, seed=0",
                                       "aggregator=cmua, attack.iterations=1, seed=1"]

    # equal configs: rows are told apart by their folder; one run alone is named by its folder
    for index in range(2):
        fake_run(tmp_path / "same" / str(index), config_of("mgda", tmp_path / "same" / str(index)), {"sr_mask/x": 1})
    assert [r.label for r in collect([tmp_path / "same"])] == ["0", "1"]
    assert [r.label for r in collect([tmp_path / "same" / "0"])] == ["0"]


def test_group_overrides_name_the_method(tmp_path: Path) -> None:
    """`+victims=[...]` is not among Hydra's runtime choices: the override names the method instead."""
    for index, victims in enumerate((["stargan"], ["stargan", "attgan"])):
        out = tmp_path / str(index)
        config = config_of("cmua", out, victims={v: {"step_scale": 1.0} for v in victims})
        fake_run(out, config, {f"sr_mask/{v}": 0.0 for v in victims}, {"aggregator": "cmua"},
                 [f"+victims=[{','.join(victims)}]"])
    assert [r.label for r in collect([tmp_path])] == ["victims=[stargan]", "victims=[stargan,attgan]"]


def test_a_missing_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no run folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- sweeps


@pytest.fixture()
def study(tmp_path: Path) -> tuple[str, str, float, dict]:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna' / 'steps.db'}"
    (tmp_path / "optuna").mkdir()
    created = optuna.create_study(study_name="cmua_stargan", storage=storage, direction="maximize",
                                  sampler=optuna.samplers.RandomSampler(seed=0))
    for value in (0.25, 0.625, 0.5, 0.125):
        trial = created.ask()
        trial.suggest_float("victims.stargan.step_scale", 0.0, 10.0)
        created.tell(trial, value)
    failed = created.ask()
    created.tell(failed, state=optuna.trial.TrialState.FAIL)
    return storage, "cmua_stargan", created.best_value, created.best_params


def test_sweep_history_from_a_study(tmp_path: Path, study: tuple[str, str, float, dict]) -> None:
    storage, name, best, params = study
    out = tmp_path / "out"
    assert main(["--study", storage, "--study-name", name, "--out", str(out)]) == 0
    chart = out / "report_files" / "sweep_cmua_stargan.png"
    assert chart.stat().st_size > 1000
    # parallel coordinates: each trial's step size against its objective
    assert (out / "report_files" / "parallel_cmua_stargan.png").stat().st_size > 1000
    text = (out / "report.md").read_text()
    assert best == 0.625 and "Best value: 0.625 (trial 1" in text
    _, body = md_table(text, "## Sweep history: cmua_stargan")
    assert body == [["victims.stargan.step_scale", f"{params['victims.stargan.step_scale']:g}"]]
    assert "5 trials: 4 complete, 1 fail." in text
    _, trials = md_table(text, "### Trials of cmua_stargan")
    assert [row[2] for row in trials] == ["0.250", "0.625", "0.500", "0.125", "–"]
    assert "data:image/png;base64," in (out / "report.html").read_text()

    history = report.load_history(storage)  # one study in the storage: no name needed
    assert history["name"] == name and history["best"]["value"] == best and history["direction"] == "maximize"
    assert report.best_so_far([0.25, 0.625, 0.5, 0.125], "maximize") == [0.25, 0.625, 0.625, 0.625]
    assert report.best_so_far([3.0, 1.0, 2.0], "minimize") == [3.0, 1.0, 1.0]


def test_the_study_is_found_from_the_runs_config(tmp_path: Path, study: tuple[str, str, float, dict]) -> None:
    storage, name, best, _ = study
    root = tmp_path / "cmua_search" / "multiruns" / "t"
    for index, scale in enumerate((1.5, 7.25)):
        out = root / str(index)
        config = config_of("cmua", out, hparams_search_storage=storage, study_name=name,
                           victims={"stargan": {"step_scale": scale}})
        fake_run(out, config, {"sr_mask/stargan": 0.5, "sr_mask/mean": 0.5}, {"aggregator": "cmua"},
                 [f"victims.stargan.step_scale={scale}"])
    (root / "optimization_results.yaml").write_text(yaml.safe_dump({"name": "optuna", "best_value": best}))
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Sweep history: cmua_stargan" in text and "Best value: 0.625" in text
    assert "## Sweeper summary" in text and "best value 0.625" in text
    _, body = md_table(text, "## sr_mask")
    assert [row[0] for row in body] == ["victims.stargan.step_scale=1.5", "victims.stargan.step_scale=7.25"]
    assert (tmp_path / "out" / "report_files" / "sweep_cmua_stargan.png").is_file()


def test_a_missing_study_database_is_reported_not_created(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'absent.db'}"
    assert main(["--study", storage, "--study-name", "s", "--out", str(tmp_path / "out")]) == 0
    assert "no study database" in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "absent.db").exists()


# ------------------------------------------------------------------------------------- the multirun's end


@pytest.mark.slow
def test_a_multirun_ends_with_one_table_its_folder_and_the_report_command(multirun: Path) -> None:
    stdout = (multirun.parent.parent.parent / "cli_stdout.txt").read_text()
    tail = stdout[stdout.index("sr_mask over the runs of this multirun:"):]
    lines = tail.splitlines()
    assert lines[1].split() == ["run", "method", "stargan", "attgan", "mean", "seconds"]
    metrics = {n: json.loads((multirun / n / "metrics.json").read_text()) for n in ("0", "1")}
    for number, aggregator in (("0", "mgda"), ("1", "uniform")):
        (row,) = [line for line in lines if line.startswith(f"{number} ")]
        cells = row.split()
        assert cells[1] == f"aggregator={aggregator}" and cells[2] == "†"
        keys = ("sr_mask/stargan", "sr_mask/attgan", "sr_mask/mean")
        assert cells[3:6] == [f"{metrics[number][k]:.3f}" for k in keys]
    assert f"multirun folder: {multirun.resolve()}" in tail
    assert f"python -m advwm.report {multirun.resolve()}" in tail
    assert (multirun / "summary.txt").read_text().startswith("sr_mask over the runs")


# ------------------------------------------------------------------------------------- the dashboard


def _png(path: Path, size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _seeded_runs(root: Path) -> dict[tuple[str, int], float]:
    """Six hand-made runs: aggregator mgda/uniform x seed 0/1/2, with known SR_mask values, pictures and losses."""
    values = {("mgda", 0): 0.5, ("mgda", 1): 0.7, ("mgda", 2): 0.9, ("uniform", 0): 0.2, ("uniform", 1): 0.2,
              ("uniform", 2): 0.5}
    for index, ((aggregator, seed), value) in enumerate(values.items()):
        out = root / str(index)
        fake_run(out, config_of(aggregator, out, seed=seed), {
            "sr_mask/stargan": value, "sr_mask/mean": value, "sr_mask/stargan/Blond_Hair": value,
            "l2_mask/stargan": value / 10, "psnr": 40.0 + index, "weights/stargan": "official", "seconds": 1.0},
            {"aggregator": aggregator}, [f"aggregator={aggregator}", f"seed={seed}"])
        _png(out / "watermark.png")
        _png(out / "images" / "stargan.png", (900, 1400), (30, 30, 200))
        (out / "csv").mkdir()
        (out / "csv" / "metrics.csv").write_text("loss/stargan,loss/total,step\n"
                                                 + "".join(f"{0.01 * s * (index + 1)},{0.01 * s},{s}\n"
                                                           for s in range(4)))
    return values


def test_every_metric_by_default_and_mean_std_over_seeds(tmp_path: Path) -> None:
    values = _seeded_runs(tmp_path / "runs")
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    for heading in ("## sr_mask", "## l2_mask", "## psnr", "## Curves over iterations", "## Watermarks and grids"):
        assert heading in text, heading
    _, body = md_table(text, "## sr_mask")  # the methods as rows, the seeds pooled
    by_label = {row[0]: row for row in body}
    assert list(by_label) == ["aggregator=mgda", "aggregator=uniform"]
    for aggregator in ("mgda", "uniform"):
        samples = [values[(aggregator, seed)] for seed in range(3)]
        mean = sum(samples) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in samples) / 2)  # sample std, by hand
        assert f"{mean:.3f} ± {std:.3f} (n=3)" in by_label[f"aggregator={aggregator}"][1]
    # 0.5, 0.7, 0.9 against 0.2, 0.2, 0.5: [0.5, 0.9] and [0.127, 0.473] do not overlap, mgda is best
    assert by_label["aggregator=mgda"][1] == "**0.700 ± 0.200 (n=3)** (best)"
    assert by_label["aggregator=uniform"][1] == "0.300 ± 0.173 (n=3)"
    mean, std, n = report.mean_std([1.0, float("nan")])  # NaN values do not count; one value has no std
    assert (mean, n) == (1.0, 1) and math.isnan(std)
    assert (tmp_path / "out" / "report_files" / "curves_loss.png").stat().st_size > 1000
    assert "![stargan: SR_mask 0.500](../runs/0/images/stargan.png)" in text


def test_the_html_links_runs_and_shows_watermarks_grids_and_split_labels(tmp_path: Path) -> None:
    _seeded_runs(tmp_path / "runs")
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<img class='thumb'") == 12  # 6 watermarks + 6 grids
    assert "href='../runs/0/'" in page and "href='../runs/5/images/stargan.png'" in page
    assert "<summary>grids of aggregator=mgda, seed=0</summary>" in page
    assert "<th>aggregator</th><th>seed</th><th>stargan</th>" in page  # keys named once, in the header
    assert "aggregator=" not in page.split("<h2>sr_mask</h2>")[1].split("</table>")[0]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    from PIL import Image

    thumb = re.search(r"<img class='thumb' alt='stargan[^']*' src='data:image/png;base64,([^']+)'", page)
    assert thumb is not None
    import base64

    assert Image.open(io.BytesIO(base64.b64decode(thumb.group(1)))).width == 640  # the 900 px grid, downscaled


CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = (1400, 900)


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium at a 1400 x 900 window, on a fresh profile, nothing fetched from outside."""
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", *args, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)


def page_width(page: Path, tmp_path: Path) -> tuple[int, int]:
    """(document scrollWidth, window innerWidth) of `page` after it loaded, read through --dump-dom."""
    probe = tmp_path / f"probe_{page.stem}.html"
    script = ("<script>window.addEventListener('load', () => { document.title = 'width ' + "
              "document.documentElement.scrollWidth + ' ' + window.innerWidth; });</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    done = chromium(probe, tmp_path / f"profile_{page.stem}", "--virtual-time-budget=5000", "--dump-dom")
    found = re.search(r"<title>width (\d+) (\d+)</title>", done.stdout)
    assert found, done.stdout[-500:] + done.stderr[-1500:]
    return int(found.group(1)), int(found.group(2))


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="headless Chromium (/usr/bin/chromium) is not installed; "
                    ".ci/run installs it (apt-get install -y chromium)")
def test_the_dashboard_fits_1400_px_in_chromium(multirun: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main([str(multirun), "--out", str(out)]) == 0
    page = out / "report.html"
    text = page.read_text()
    assert "<h3>sr_mask: attgan per condition</h3>" in text  # the 14-condition table that overflowed
    shot = tmp_path / "report.png"
    done = chromium(page, tmp_path / "profile_shot", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-1500:]
    from PIL import Image

    assert Image.open(shot).size == VIEWPORT
    scroll_width, inner_width = page_width(page, tmp_path)
    assert inner_width == VIEWPORT[0]
    assert scroll_width <= VIEWPORT[0]
    # the check can fail: the same page with a table forced wider than the window overflows
    wide = tmp_path / "wide.html"
    wide.write_text(text.replace("<div class='scroll'>", "<div>", 1)
                    .replace("<table>", "<table style='width:2000px'>", 1))
    assert page_width(wide, tmp_path)[0] > VIEWPORT[0]


def test_the_multirun_summary_writes_numbers_as_the_report_does(tmp_path: Path) -> None:
    """The table printed at a multirun's end: a value below 0.001 in scientific notation (not 0.000), a run's
    hostile label without control characters, a failed run with its reason."""
    from advwm.callbacks.multirun import summary_table

    sweep = tmp_path / "multirun"
    for number, (aggregator, value) in enumerate((("mgda", 0.0004), ("uniform\x1b[2J", 0.25))):
        fake_run(sweep / str(number), config_of(aggregator, sweep / str(number)),
                 {"sr_mask/stargan": value, "sr_mask/mean": value, "seconds": 3.0},
                 overrides=[f"aggregator={aggregator}"])
    fake_run(sweep / "2", config_of("single", sweep / "2"), "{not json", overrides=["aggregator=single"])
    table = summary_table(sweep)
    assert "4.00e-04" in table and "0.000 " not in table and "0.250" in table
    assert "\x1b" not in table and "FAILED" in table
