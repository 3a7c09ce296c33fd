"""Robustness and EOT through a whole run: config -> craft -> metrics.json / CSV, errors as one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from test_run import compose_run, run_cli, small

from advwm.metrics.robustness import parse_transform
from advwm.pipeline import ConfigError, build_victims, craft
from advwm.run_files.watermark_file import load_watermark

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = ["+victims=[stargan]", "weights=random", "attack.iterations=2", "data.craft=[astronaut]",
        "data.evaluate=[grace_hopper,grace_hopper@mirror]", "trainer.enable_progress_bar=false", *small("stargan")]


def robust_by_hand(cfg, watermark: torch.Tensor, name: str) -> dict[str, float]:
    """avg_L and SR_mask of StarGAN under one transform, one image and condition at a time, from the saved file."""
    import lightning.pytorch as pl

    from advwm.data import DemoDataModule

    pl.seed_everything(int(cfg.seed), workers=True)  # as craft() does before building the random victims
    (victim,) = [r.victim for r in build_victims(cfg)]
    demo = DemoDataModule(craft=list(cfg.data.craft), evaluate=list(cfg.data.evaluate), image_size=int(cfg.image_size))
    demo.setup()
    batch = next(iter(demo.eval_dataloader()))
    x, labels = batch["image"], batch["labels"]
    transform = parse_transform(name)
    shared, shared_protected = transform(x), transform((x + watermark).clamp(-1, 1))
    losses, successes = [], []
    with torch.no_grad():
        for condition in victim.conditions(labels):
            for b in range(x.shape[0]):
                fake = victim(shared[b:b + 1], condition[b:b + 1])[0]
                fake_protected = victim(shared_protected[b:b + 1], condition[b:b + 1])[0]
                losses.append(float((fake_protected - fake).pow(2).mean()))
                mask = (fake - shared[b]).abs().sum(dim=0) > 0.5
                successes.append(bool(mask.any()) and float((fake_protected - fake).pow(2)[:, mask].mean()) > 0.05)
    return {"avg_l": sum(losses) / len(losses), "sr_mask": sum(successes) / len(successes)}


@pytest.mark.slow
def test_a_run_reports_every_metric_per_transform_in_metrics_json_and_the_csv(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, [*TINY, "metrics.robustness=[jpeg75,resize0.5]"])
    metrics = craft(cfg)
    for name in ("jpeg75", "resize0.5"):
        for metric in ("sr_mask", "l2_mask", "ruiz", "avg_l", "attack_rate"):
            assert f"robust/{name}/{metric}/stargan" in metrics, (name, metric)
        assert metrics[f"robust/{name}/sr_mask/mean"] == metrics[f"robust/{name}/sr_mask/stargan"]
        expected = robust_by_hand(cfg, load_watermark(tmp_path / "watermark.pt").tensor, name)
        assert metrics[f"robust/{name}/avg_l/stargan"] == pytest.approx(expected["avg_l"], rel=1e-4, abs=1e-7)
        assert metrics[f"robust/{name}/sr_mask/stargan"] == pytest.approx(expected["sr_mask"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["robust/jpeg75/avg_l/stargan"] == metrics["robust/jpeg75/avg_l/stargan"]
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert any(row.get("robust/jpeg75/sr_mask/stargan") for row in rows)  # what every logger (W&B too) is given


def test_metrics_fast_has_no_robust_keys_and_a_bad_name_stops_before_any_work(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, [*TINY, "attack.iterations=1", "data.evaluate=[grace_hopper]"])
    assert not any(k.startswith("robust/") for k in craft(cfg))
    cfg = compose_run(tmp_path / "bad", [*TINY, "metrics.robustness=[jpeg75,jpg50]", "weights=checkpoint",
                                         "paths.weights_dir=/nonexistent"])
    with pytest.raises(ConfigError, match=r"metrics.robustness: unknown transform 'jpg50'; use jpeg<quality"):
        craft(cfg)  # before the missing weights are noticed: the metrics are checked first


@pytest.mark.slow
def test_the_command_line_says_a_bad_transform_in_one_line(tmp_path: Path) -> None:
    result = run_cli([*TINY, "metrics.robustness=[jpeg75,resize2]", f"paths.log_dir={tmp_path}"])
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: metrics.robustness: 'resize2': the resize factor must lie strictly")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_eot_sharing_crafts_reproducibly_and_resumes_exactly(tmp_path: Path) -> None:
    """Same seed: the same EOT watermark twice; different from eot=none; a resumed run draws what the
    uninterrupted one drew (the draws follow the iteration count restored from the checkpoint)."""
    common = [*TINY, "eot=sharing", "eot.samples=2", "data.craft=[astronaut,grace_hopper]", "data.batch_size=1",
              "data.evaluate=[grace_hopper]"]
    first = craft(compose_run(tmp_path / "a", [*common, "trainer.max_epochs=2"]))
    craft(compose_run(tmp_path / "b", [*common, "trainer.max_epochs=2"]))
    craft(compose_run(tmp_path / "plain", [*TINY, "data.craft=[astronaut,grace_hopper]", "data.batch_size=1",
                                           "data.evaluate=[grace_hopper]", "trainer.max_epochs=2"]))
    craft(compose_run(tmp_path / "half", [*common, "trainer.max_epochs=1"]))
    last = tmp_path / "half" / "checkpoints" / "last.ckpt"
    resumed = craft(compose_run(tmp_path / "resumed", [*common, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert first["steps"] == resumed["steps"] == 8
    a, b, plain, again = (load_watermark(tmp_path / n / "watermark.pt").tensor for n in ("a", "b", "plain", "resumed"))
    assert torch.equal(a, b)
    assert not torch.equal(a, plain)
    assert torch.allclose(a, again, atol=1e-6)
    assert 0 < a.abs().max() <= 0.05 + 1e-6


def test_the_results_table_has_one_line_after_sharing() -> None:
    from advwm.pipeline import metrics_table

    metrics = {"sr_mask/stargan": 0.5, "sr_mask/mean": 0.5, "robust/jpeg75/sr_mask/mean": 0.25,
               "robust/jpeg75/sr_mask/stargan": 0.25, "robust/resize0.5/sr_mask/mean": 0.125, "eps": 0.05,
               "steps": 1, "seconds": 1.0, "data/craft_images": 1, "data/held_out_images": 1, "data/skipped_images": 0}
    lines = metrics_table(metrics, ["stargan"]).splitlines()
    assert "after sharing (SR_mask, mean): jpeg75 0.250, resize0.5 0.125" in lines
    del metrics["robust/jpeg75/sr_mask/mean"], metrics["robust/resize0.5/sr_mask/mean"]
    assert not any(line.startswith("after sharing") for line in metrics_table(metrics, ["stargan"]).splitlines())
