"""End to end: `python -m advwm.run` on the demo faces with small random victims, and its failure modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from advwm.pipeline import craft
from advwm.run_files.watermark_file import load_watermark
from advwm.victims.small import SMALL_ARCHITECTURES, small_overrides

REPO = Path(__file__).resolve().parents[1]
SMALL_ARCH = {name: small_overrides(name) for name in SMALL_ARCHITECTURES}  # Hydra overrides per victim


def small(*victims: str) -> list[str]:
    """Overrides for 32-px runs with tiny versions of the named victims."""
    return ["image_size=32"] + [o for v in victims for o in SMALL_ARCH[v]]


SMALL = small("stargan", "attgan")


def run_cli(args: list[str], timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "advwm.run", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def compose_run(tmp_path: Path, overrides: list[str]):
    """The composed config of a run writing into tmp_path (CSV logger only, unless a logger is chosen)."""
    if not any(o.startswith("logger=") for o in overrides):
        overrides = ["logger=csv", *overrides]
    if not any(o.startswith("metrics=") for o in overrides):
        overrides = ["metrics=fast", *overrides]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def hyperfas_file() -> Path:
    from conftest import fixtures_root

    return fixtures_root().parent / "models" / "hyperfas" / "fas.h5"


@pytest.mark.slow
def test_cli_demo_with_small_random_victims_writes_every_output(tmp_path: Path) -> None:
    result = run_cli(["experiment=demo", "weights=random", "attack.iterations=2", *SMALL, "metrics=default",
                      "checkpoint_every=1", f"metrics.liveness_weights={hyperfas_file()}", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    # the first lines say the victims are random and how to get the official files
    first = result.stdout.splitlines()[:3]
    assert first[0] == "advwm: attacking stargan, attgan (demo)"
    assert "RANDOMLY INITIALISED" in first[1] and "python -m advwm.weights list" in first[2]
    # progress: iteration i/N with each victim's loss, an evaluation bar; no noise
    output = result.stdout + result.stderr
    assert "iteration: 100%" in output and "2/2" in output and "stargan=" in output and "attgan=" in output
    assert "judging (SR_mask, L2_mask, FID" in output
    for noise in ("v_num", "Epoch 0", "GPU available", "TPU available", "anonymous setting", "Run history",
                  "Run summary", "saved_models", "Seed set to"):
        assert noise not in output, noise
    log_text = (tmp_path / "demo.log").read_text()  # the log keeps the table, the time and the output folder
    assert "SR_mask" in log_text and "2 steps" in log_text and f"outputs: {tmp_path}" in log_text
    assert f"W&B (offline): {tmp_path}" in result.stdout
    for name in ("config.yaml", "watermark.pt", "watermark.png", "metrics.json", "csv/metrics.csv",
                 "images/stargan.png", "images/attgan.png", "demo.log", "checkpoints/last.ckpt"):
        assert (tmp_path / name).is_file(), name
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))  # W&B ran, offline (no login in tests)
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("run-*.wandb"))
    history = list(offline_runs[0].glob("run-*.wandb"))[0].read_bytes()
    for key in (b"loss/stargan", b"loss/attgan", b"sr_mask/mean"):  # per-victim loss curves and the results
        assert key in history, key
    media = offline_runs[0] / "files" / "media" / "images"
    assert len(list((media / "watermark").glob("checkpoints_*.png"))) == 2  # the watermark at each checkpoint
    assert {p.name.split("_")[0] for p in (media / "grid").glob("*.png")} == {"stargan", "attgan"}
    saved = load_watermark(tmp_path / "watermark.pt", scope="universal")
    watermark = saved.tensor
    assert watermark.shape == (3, 32, 32)
    assert watermark.abs().max() <= 0.05 + 1e-6 and watermark.abs().max() > 0
    assert saved.has_metadata and saved.eps == 0.05 and saved.image_size == 32
    assert saved.victims == {"stargan": "random", "attgan": "random"} and "image_size: 32" in saved.config
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("sr_mask/stargan", "sr_mask/attgan", "sr_mask/mean", "sr_mask/stargan/Blond_Hair",
                "sr_mask/attgan/Eyeglasses", "l2_mask/stargan", "empty_mask/attgan", "eps", "steps", "seconds"):
        assert key in metrics, key
    assert metrics["steps"] == 2 and metrics["eps"] == 0.05
    assert metrics["judged/stargan"] == 2 * 5 and metrics["judged/attgan"] == 2 * 14
    assert metrics["weights/stargan"] == "random" and "RANDOMLY INITIALISED" in metrics["note"]
    assert "RANDOMLY INITIALISED" in result.stdout and "RANDOMLY INITIALISED" in (tmp_path / "demo.log").read_text()
    assert "SR_mask" in result.stdout and "\nmean " in result.stdout and str(tmp_path) in result.stdout
    assert metrics["sr_mask/mean"] == pytest.approx((metrics["sr_mask/stargan"] + metrics["sr_mask/attgan"]) / 2)
    for victim, pairs in (("stargan", 10), ("attgan", 28)):
        for kind in ("ruiz", "avg_l", "attack_rate", "l2_mask"):
            assert f"{kind}/{victim}" in metrics and f"{kind}/{victim}/Young" in metrics
        assert metrics[f"fid_count/{victim}"] == pairs and metrics[f"fid/{victim}"] >= 0
        if hyperfas_file().is_file():
            for key in ("acs_before", "acs_after", "tfhc_before", "tfhc_after"):
                assert 0 <= metrics[f"liveness/{key}/{victim}"] <= 1
        else:
            assert "fas.h5" in metrics["skipped/liveness"]
    assert 20 < metrics["psnr"] < 60 and 0 < metrics["ssim"] <= 1


@pytest.mark.slow
def test_missing_checkpoints_are_one_error_naming_every_file_printed_once(tmp_path: Path) -> None:
    result = run_cli(["+victims=[stargan,attgan,stgan]", "victims.stargan.checkpoint=/nonexistent/200000-G.ckpt",
                      "paths.weights_dir=/nowhere", f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no official weights for 3 victim(s): stargan (/nonexistent/200000-G.ckpt; "
                           "`python -m advwm.weights fetch stargan`)")
    assert "attgan (/nowhere/attgan/weights.199.pth; Get the official AttGAN" in last
    assert "stgan (/nowhere/stgan/G_200000.pth.tar; STGAN" in last
    assert "weights=random" in last and "python -m advwm.weights list" in last
    output = result.stdout + result.stderr
    assert output.count("no official weights") == 1  # printed once (the log file keeps it too)
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before Hydra wrote anything (advwm.preflight), torch unloaded


@pytest.mark.slow
def test_a_run_without_victims_says_how_to_choose_them(tmp_path: Path) -> None:
    result = run_cli([f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    assert "+victims=[stargan,attgan]" in result.stderr.strip().splitlines()[-1]


def test_demo_falls_back_to_random_but_other_runs_do_not(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, ["experiment=demo", "paths.weights_dir=/nonexistent", *SMALL])
    assert cfg.victims.stargan.weights == "auto"
    cfg = compose_run(tmp_path, ["+victims=[stargan,attgan]", "paths.weights_dir=/nonexistent"])
    assert cfg.victims.attgan.weights == "checkpoint"
    from advwm.victims import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError, match=r"2 victim\(s\): stargan .*; attgan "):
        craft(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(("attack", "domains", "regularizer"), [
    ("ifgsm", "mgda", "penalty"), ("mifgsm", "iterative", "l2"), ("apgd", "single", "log"),
    ("di2fgsm", "uniform", "none"), ("mdi2fgsm", "uniform", "penalty"), ("pgd", "mgda", "l2"),
])
def test_per_image_runs_keep_each_protected_image_valid(tmp_path: Path, attack: str, domains: str,
                                                        regularizer: str) -> None:
    cfg = compose_run(tmp_path, ["+victims=[stargan,attgan]", "weights=random", "scope=per_image",
                                 "aggregator=mgda", f"attack={attack}", f"domains={domains}",
                                 f"regularizer={regularizer}", "attack.iterations=3",
                                 "data.craft=[astronaut,grace_hopper,astronaut@mirror]", *SMALL])
    metrics = craft(cfg)
    saved = load_watermark(tmp_path / "watermark.pt", scope="per_image")
    assert saved.perturbations.shape == (3, 3, 32, 32)
    assert saved.names == ["astronaut", "grace_hopper", "astronaut@mirror"]
    assert saved.perturbations.abs().max() <= 0.05 + 1e-6
    assert metrics["judged/stargan"] == 3 * 5 and metrics["steps"] == 2 * 3
    from PIL import Image

    for name in saved.names:  # the protected faces, ready to share, equal x + delta up to 8-bit rounding
        assert Image.open(tmp_path / "protected" / f"{name}.png").size == (32, 32)
    assert saved.victims == {"stargan": "random", "attgan": "random"} and saved.image_size == 32
    from advwm.data import DemoDataModule

    demo = DemoDataModule(craft=["grace_hopper"], evaluate=["astronaut"], image_size=32, batch_size=1)
    demo.setup()
    clean = next(iter(demo.train_dataloader()))["image"][0]
    png = torch.from_numpy(np.asarray(Image.open(tmp_path / "protected" / "grace_hopper.png"))).permute(2, 0, 1)
    expected = ((clean + saved.perturbations[1]).clamp(-1, 1) + 1) / 2 * 255
    assert (png.float() - expected).abs().max() <= 0.5 + 1e-3


@pytest.mark.slow
def test_folder_run_skips_and_counts_a_corrupt_image(tmp_path: Path) -> None:
    from PIL import Image

    faces = tmp_path / "faces"
    faces.mkdir()
    for i, colour in enumerate([(200, 120, 90), (90, 120, 200), (120, 200, 90)]):
        Image.new("RGB", (48, 60), colour).save(faces / f"face{i}.png")
    (faces / "face9.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "run"
    cfg = compose_run(out, ["+victims=[stargan]", "weights=random", "data=folder", f"data.root={faces}",
                            "data.detect=false", "data.n_craft=2", "data.labels=[Male]", "attack.iterations=1",
                            *small("stargan")])
    metrics = craft(cfg)
    assert metrics["data/skipped_images"] == 1
    assert metrics["data/craft_images"] == 2 and metrics["data/held_out_images"] == 1
    assert json.loads((out / "metrics.json").read_text())["data/skipped_images"] == 1


def _nan_run(folder: Path, fail_after_first_step: bool) -> str:
    """Craft against a linear victim that returns NaN (from the start, or from the second step); the error text."""
    from lightning.pytorch import Callback, Trainer
    from toys import LinearVictim, TensorFaces, base_attack

    from advwm.attacks import NoRegularizer, Uniform, UniformDomains, Universal
    from advwm.attacks.module import NonFiniteLossError, WatermarkAttack
    from advwm.callbacks import WatermarkExport

    victim = LinearVictim("broken", 1.0 if fail_after_first_step else float("nan"))

    class BreakAfterFirstStep(Callback):
        def on_train_batch_end(self, *args) -> None:
            victim.gain.fill_(float("nan"))

    module = WatermarkAttack([victim], aggregator=Uniform(), domains=UniformDomains(), regularizer=NoRegularizer(),
                             attack=base_attack("pgd", 0.01, iterations=2), scope=Universal(), eps=0.05,
                             image_size=4, batch_size=1)
    callbacks = [WatermarkExport(folder)] + ([BreakAfterFirstStep()] if fail_after_first_step else [])
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, callbacks=callbacks)
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit(module, datamodule=TensorFaces(torch.zeros(1, 3, 4, 4), batch_size=1, repeats=2))
    return str(caught.value)


def test_a_victim_that_returns_nan_stops_with_one_line_and_keeps_the_steps_taken(tmp_path: Path) -> None:
    message = _nan_run(tmp_path / "later", fail_after_first_step=True)
    assert "\n" not in message and "broken" in message and "iteration 1" in message
    partial = load_watermark(tmp_path / "later" / "watermark.partial.pt").tensor
    assert partial.shape == (3, 4, 4) and partial.abs().max() > 0  # the first step's watermark
    # no step taken: nothing to keep, so no partial file at all
    message = _nan_run(tmp_path / "at_once", fail_after_first_step=False)
    assert "\n" not in message and "iteration 0" in message
    assert not (tmp_path / "at_once").exists() or not list((tmp_path / "at_once").iterdir())


@pytest.mark.slow
def test_resuming_from_the_last_checkpoint_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    common = ["+victims=[stargan]", "weights=random", "attack.iterations=2", "data.craft=[astronaut,grace_hopper]",
              "data.evaluate=[grace_hopper]", "data.batch_size=1", *small("stargan")]
    straight = craft(compose_run(tmp_path / "straight", [*common, "trainer.max_epochs=2"]))
    craft(compose_run(tmp_path / "first", [*common, "trainer.max_epochs=1"]))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    resumed = craft(compose_run(tmp_path / "resumed", [*common, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert straight["steps"] == resumed["steps"] == 8
    a = load_watermark(tmp_path / "straight" / "watermark.pt").tensor
    b = load_watermark(tmp_path / "resumed" / "watermark.pt").tensor
    first = load_watermark(tmp_path / "first" / "watermark.pt").tensor
    assert not torch.equal(first, b)
    assert torch.allclose(a, b, atol=1e-6)


def test_missing_fid_and_liveness_weights_skip_those_metrics_with_the_reason(tmp_path: Path, caplog) -> None:
    cfg = compose_run(tmp_path, ["+victims=[stargan]", "weights=random", "metrics=default", "attack.iterations=1",
                                 "metrics.fid_weights=/nonexistent/inception.pth",
                                 "metrics.liveness_weights=/nonexistent/fas.h5", "data.craft=[astronaut]",
                                 "data.evaluate=[grace_hopper]", *small("stargan")])
    metrics = craft(cfg)
    assert "/nonexistent/inception.pth" in metrics["skipped/fid"]
    assert "/nonexistent/fas.h5" in metrics["skipped/liveness"]
    assert not any(k.startswith(("fid/", "liveness/")) for k in metrics)
    assert "metric fid skipped" in caplog.text and "metric liveness skipped" in caplog.text
    assert "sr_mask/stargan" in metrics


@pytest.mark.slow
def test_periodic_evaluation_logs_every_n_steps(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, ["+victims=[stargan]", "weights=random", "metrics.every_n_steps=2",
                                 "attack.iterations=4", "data.craft=[astronaut]", "data.evaluate=[grace_hopper]",
                                 *small("stargan")])
    craft(cfg)
    import csv

    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    periodic = [r for r in rows if r.get("periodic/sr_mask/stargan")]
    assert [int(r["step"]) for r in periodic] == [2, 4]
    assert all(0.0 <= float(r["periodic/avg_l/stargan"]) for r in periodic)


@pytest.mark.slow
@pytest.mark.parametrize(("victims", "expected"), [
    (("stargan", "aggan", "attgan", "hisd"), {"stargan/Blond_Hair", "aggan/Young", "attgan/Eyeglasses",
                                              "hisd/Eyeglasses@ref"}),
    (("stargan", "attgan", "stgan", "ugatit"), {"stgan/Bangs", "stgan/Pale_Skin", "ugatit/A2B"}),
], ids=["cmua-set", "cdmaa-set"])
def test_the_papers_victim_sets_run_and_report_per_condition(tmp_path: Path, victims: tuple[str, ...],
                                                           expected: set[str]) -> None:
    cfg = compose_run(tmp_path, [f"+victims=[{','.join(victims)}]", "weights=random", "data=demo",
                                 "attack.iterations=1", "data.craft=[astronaut]", "data.evaluate=[grace_hopper]",
                                 *small(*victims)])
    metrics = craft(cfg)
    from test_end_to_end import recompute

    recomputed = recompute(cfg, load_watermark(tmp_path / "watermark.pt").tensor)
    for victim in victims:  # each victim's numbers, recomputed from the saved watermark by hand
        assert metrics[f"avg_l/{victim}"] == pytest.approx(recomputed[f"avg_l/{victim}"], rel=1e-4, abs=1e-7)
        assert metrics[f"sr_mask/{victim}"] == pytest.approx(recomputed[f"sr_mask/{victim}"])
        assert (tmp_path / "images" / f"{victim}.png").is_file()
    for key in expected:
        assert f"sr_mask/{key}" in metrics, key


def test_a_wrong_victim_config_is_one_error_naming_the_victim(tmp_path: Path) -> None:
    from advwm.pipeline import ConfigError

    cfg = compose_run(tmp_path, ["+victims=[attgan]", "weights=random", "image_size=128",
                                 "+victims.attgan.arch.img_size=256"])
    with pytest.raises(ConfigError, match=r"victims\.attgan: .*img_size=256 differs from image_size=128"):
        craft(cfg)
    cfg = compose_run(tmp_path, ["+victims=[stargan]", "weights=random", "+victims.stargan.arch.nonsense=3"])
    with pytest.raises(ConfigError, match=r"victims\.stargan: .*unknown arch argument.*nonsense"):
        craft(cfg)


# ------------------------------------------------------------------------------------- the first hour


def test_help_is_advwms_page_with_commands_groups_and_outputs() -> None:
    result = run_cli(["--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    page = result.stdout
    assert page.startswith("advwm: craft an adversarial watermark")
    assert "powered by Hydra" not in page
    for line in ("python -m advwm.run experiment=demo", "python -m advwm.report", "python -m advwm.weights list",
                 "victims: aggan, attgan, hisd, stargan, stgan, ugatit", "aggregator: cmua, cmua_reference",
                 "experiment: cdmaa_table1", "hydra/launcher: basic", "<root>/outputs/<task_name>/runs/<time>/",
                 "<root>/weights/<victim>/<file>", "RANDOM"):
        assert line in page, line


def test_a_misspelled_victim_is_one_line_listing_the_victims() -> None:
    result = run_cli(["+victims=[stargn,attgan]"])
    assert result.returncode != 0
    assert result.stderr.strip() == ("error: unknown victim(s) stargn in +victims=[stargn,attgan]; choose from: "
                                     "aggan, attgan, hisd, stargan, stgan, ugatit (e.g. +victims=[stargan,attgan])")
    assert result.stdout == ""


def test_tilde_values_are_expanded_like_a_shell_does() -> None:
    from advwm.run import expand_home, unknown_victim_error

    home = os.path.expanduser("~")
    assert expand_home(["data.root=~/my_photos", "data=folder", "+x=~", "a=b~c", "data.root='~/q'"]) == [
        f"data.root='{home}/my_photos'", "data=folder", f"+x='{home}'", "a=b~c", "data.root='~/q'"]
    assert unknown_victim_error(["experiment=demo", "+victims=[hisd]"]) is None
    assert "nope" in unknown_victim_error(["victims=nope"])


@pytest.mark.slow
def test_a_tilde_path_on_the_command_line_reaches_the_data_module(tmp_path: Path) -> None:
    missing = "~/advwm_no_such_folder_for_tests"
    result = run_cli(["+victims=[stargan]", "weights=random", *small("stargan"), "data=folder",
                      f"data.root={missing}", "logger=csv", f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: image folder {os.path.expanduser(missing)} does not exist or is not a folder"


def test_outputs_and_weights_live_under_the_project_root_wherever_you_are(tmp_path: Path) -> None:
    code = ("from advwm.project import project_root; from advwm.weights import weights_dir; "
            "print(project_root()); print(weights_dir())")
    env = {k: v for k, v in os.environ.items() if k != "ADVWM_ROOT"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800, check=True)
    assert done.stdout.splitlines() == [str(REPO), str(REPO / "weights")]
    env["ADVWM_ROOT"] = "~/elsewhere"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800, check=True)
    assert done.stdout.splitlines()[0] == os.path.expanduser("~/elsewhere")
    from advwm.project import is_checkout

    assert is_checkout(REPO) and not is_checkout(tmp_path)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+victims=[stargan]"])
    assert cfg.paths.log_dir == f"{REPO}/outputs" and cfg.victims.stargan.checkpoint.startswith(f"{REPO}/weights/")


def test_a_presets_victims_stay_and_extra_victims_are_added(tmp_path: Path) -> None:
    from advwm.run import weights_banner

    cfg = compose_run(tmp_path, ["experiment=demo", "+victims=[hisd]", "paths.weights_dir=/nonexistent"])
    assert list(cfg.victims) == ["stargan", "attgan", "hisd"]
    assert cfg.victims.hisd.weights == "auto"  # the preset's top-level weights=auto reaches the added victim
    banner = weights_banner(cfg)
    assert banner.splitlines()[0] == "advwm: attacking stargan, attgan, hisd (demo)"
    assert "stargan, attgan, hisd are RANDOMLY INITIALISED" in banner
    cfg = compose_run(tmp_path, ["experiment=demo", "+victims=[stargan]"])
    assert list(cfg.victims) == ["stargan", "attgan"]  # naming a preset's victim again adds nothing


def test_the_progress_bar_shows_each_victims_loss_and_no_version() -> None:
    from advwm.callbacks.progress import AttackProgressBar, victim_losses

    metrics = {"loss/total": torch.tensor(0.5), "loss/stargan": torch.tensor(0.25), "loss/attgan": 0.125,
               "sr_mask/stargan": 1.0, "loss/attgan/Bald": 3.0}
    assert victim_losses(metrics) == {"stargan": 0.25, "attgan": 0.125, "total": 0.5}
    assert list(victim_losses(metrics)) == ["stargan", "attgan", "total"]
    assert "rate_fmt" in AttackProgressBar.BAR_FORMAT and "rate_noinv_fmt" not in AttackProgressBar.BAR_FORMAT

    class Trainer:
        callback_metrics = metrics

    assert AttackProgressBar().get_metrics(Trainer(), None) == {"stargan": "0.25", "attgan": "0.125", "total": "0.5"}


def test_each_grid_row_carries_its_l2_mask() -> None:
    from advwm.callbacks.export import comparison_grid, row_l2_mask

    clean = torch.zeros(3, 16, 16)
    fake = torch.stack([torch.ones(3, 16, 16), torch.zeros(3, 16, 16)])  # row 0 edits every pixel, row 1 none
    sample = {"clean": clean, "protected": clean, "fake": fake,
              "fake_protected": torch.stack([torch.full((3, 16, 16), 0.5), torch.zeros(3, 16, 16)])}
    values = row_l2_mask(sample)
    assert values[0] == pytest.approx(0.25) and np.isnan(values[1])  # (0.5 - 1)^2 by hand; empty mask
    grid = comparison_grid(sample, ["Blond_Hair", "Male"])
    assert grid.size[0] > 150
