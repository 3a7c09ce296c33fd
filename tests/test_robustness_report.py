"""The report's robustness section: tables per transform beside the unshared value, SR_mask vs JPEG quality."""

from __future__ import annotations

from pathlib import Path

from test_report import config_of, fake_run, md_table

from advwm.report import collect, main, metric_families
from advwm.report.robustness import jpeg_quality, transforms_of

TRANSFORMS = ("jpeg95", "jpeg75", "jpeg50", "resize0.5")


def robust_metrics(unshared: float, after: dict[str, float], victims=("stargan", "attgan")) -> dict:
    """metrics.json of a run: SR_mask `unshared` and avg_L unshared/10, after transform t `after[t]` (and /10)."""
    metrics = {"weights/stargan": "official", "weights/attgan": "official"}
    for v, victim in enumerate(victims):
        scale = 1.0 - 0.5 * v  # the second victim is half as protected
        metrics[f"sr_mask/{victim}"] = unshared * scale
        metrics[f"avg_l/{victim}"] = unshared * scale / 10
        for name, value in after.items():
            metrics[f"robust/{name}/sr_mask/{victim}"] = value * scale
            metrics[f"robust/{name}/avg_l/{victim}"] = value * scale / 10
            metrics[f"robust/{name}/ruiz/{victim}"] = value
    metrics["sr_mask/mean"] = sum(metrics[f"sr_mask/{v}"] for v in victims) / len(victims)
    metrics["avg_l/mean"] = sum(metrics[f"avg_l/{v}"] for v in victims) / len(victims)
    for name in after:
        for metric in ("sr_mask", "avg_l"):
            metrics[f"robust/{name}/{metric}/mean"] = sum(metrics[f"robust/{name}/{metric}/{v}"]
                                                          for v in victims) / len(victims)
    return metrics


def two_runs(root: Path) -> Path:
    plain = {"jpeg95": 0.8, "jpeg75": 0.3, "jpeg50": 0.1, "resize0.5": 0.2}
    eot = {"jpeg95": 0.9, "jpeg75": 0.7, "jpeg50": 0.5, "resize0.5": 0.6}
    for index, (choice, after) in enumerate((("none", plain), ("sharing", eot))):
        folder = root / str(index)
        fake_run(folder, config_of("cmua", folder, eot={"name": choice}), robust_metrics(1.0, after),
                 {"eot": choice})
    return root


def test_the_report_has_a_sharing_section_with_tables_and_the_jpeg_curve(tmp_path: Path) -> None:
    root = two_runs(tmp_path / "runs")
    runs = collect([root])
    assert transforms_of(runs) == list(TRANSFORMS)
    assert [jpeg_quality(t) for t in TRANSFORMS] == [95, 75, 50, None]
    assert not any(f.startswith("robust") for f in metric_families(runs))  # not 30 one-column tables
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Robustness to sharing" in text and "## robust/" not in text
    header, body = md_table(text, "## Robustness to sharing")
    assert header == ["SR_mask (mean over victims): method", "unshared", *TRANSFORMS]
    assert body == [["eot=none", "0.750", "0.600", "0.225", "0.075", "0.150"],
                    ["eot=sharing", "0.750", "0.675", "0.525", "0.375", "0.450"]]
    header, body = md_table(text, "### Robustness to sharing: attgan")
    assert header[0] == "SR_mask: method" and body[1] == ["eot=sharing", "0.500", "0.450", "0.350", "0.250", "0.300"]
    for chart in ("sharing_mean.png", "sharing_stargan.png", "sharing_attgan.png"):
        assert (tmp_path / "out" / "report_files" / chart).stat().st_size > 1000, chart
    assert "SR_mask vs JPEG quality: stargan" in text
    assert "Robustness to sharing" in (tmp_path / "out" / "report.html").read_text()


def test_runs_without_robust_keys_have_no_sharing_section(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "0"
    fake_run(folder, config_of("cmua", folder), {"sr_mask/stargan": 0.5, "weights/stargan": "random"})
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert "Robustness to sharing" not in (tmp_path / "out" / "report.md").read_text()
