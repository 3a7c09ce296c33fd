"""Resume trusts nothing (issue 17.1): the settings a checkpoint must share, what it must hold, and one checkpoint per
run folder.

- Every leaf key of the composed config of several presets, changed one at a time, is either one that may change
  (`advwm.run_files.resume.MAY_CHANGE`) or refused with one line naming it: the signature is the config minus a list.
- What the config only points to is compared by content: a victim's weight file (a moved file resumes, changed
  bytes do not) and the crafting photos (a photo added to the folder is refused).
- A checkpoint whose perturbation is over eps, not finite or of another shape, whose attack state is not finite or
  misshaped, or whose bytes were damaged is refused before any work, naming ckpt_path; the module refuses it too.
- A finished run's checkpoint resumed into a new folder writes that run's outputs (judged, exported) equal to its own.
- A run in a folder holding another run's checkpoint refuses (one line, nothing written); a resume there replaces
  `last.ckpt` (never a `last-v1.ckpt` beside it).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from PIL import Image
from test_run import REPO, compose_run, run_cli, small

from advwm import resolvers  # noqa: F401  (the search's ${advwm.keys:...}, as advwm.run registers them)
from advwm.errors import ConfigError
from advwm.pipeline import build_datamodule, build_module, build_victims, craft
from advwm.run_files.folder import RunFolderError
from advwm.run_files.resume import (
    CRAFT_FILES,
    DIGEST_KEY,
    checkpoint_digest,
    checkpoint_problem,
    craft_files_hash,
    may_change,
    resume_signature,
    signature_difference,
    signature_differences,
)
from advwm.run_files.watermark_file import load_watermark
from advwm.validation import ConfigValueError
from advwm.victims import load_generator

pytestmark = pytest.mark.usefixtures("single_thread")

# ---- the signature: every key of the composed config ------------------------------------------------------------

PRESETS = {
    "demo": ["experiment=demo"],
    "per_image": ["+victims=[stargan,hisd]", "scope=per_image", "attack=apgd", "aggregator=mgda",
                  "regularizer=penalty", "eot=sharing", "domains=iterative", "logger=wandb"],
    "celeba": ["+victims=[ugatit,stgan,aggan]", "data=celeba", "attack=di2fgsm", "aggregator=iterative",
               "execution=gpu_fast"],
    "folder": ["+victims=[attgan]", "data=folder", "+method=cdmaa_apgd"],
    "search": ["+victims=[stargan]", "hparams_search=cmua_step_sizes"],
    "apgd": ["+victims=[stargan,attgan]", "attack=apgd", "aggregator=uniform"],
    "amortized": ["+victims=[stargan,attgan]", "+method=amortized"],
}
WEIGHT_MODES = ("checkpoint", "random", "auto")


def composed(overrides: list[str]) -> DictConfig:
    """The composed config as a run sees it (its output folder is Hydra's, set at run time: set here)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cfg.paths.output_dir = "/nonexistent/run"
    return cfg


def leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every leaf of the unresolved config (a list is one leaf), dotted."""
    keys = []
    for name in node:
        child = node._get_node(name)
        key = f"{prefix}{name}"
        if isinstance(child, DictConfig) and not child._is_none() and len(child):
            keys += leaf_keys(child, f"{key}.")
        else:
            keys.append(key)
    return keys


def changed(key: str, value: Any) -> Any:
    """Another value of the same kind (a victim's weights: another of its three modes)."""
    if key.startswith("victims.") and key.endswith(".weights"):
        return WEIGHT_MODES[(WEIGHT_MODES.index(value) + 1) % len(WEIGHT_MODES)]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.125
    if isinstance(value, str):
        return value + "_changed"
    if value is None:
        return "changed"
    if isinstance(value, list):
        return [*value, value[0]] if value else ["changed"]
    if isinstance(value, dict):
        return {**value, "changed": 1}
    raise AssertionError(f"{key}: no mutation for {value!r}")


def resolved(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def named(saved: dict, current: dict) -> set[str]:
    return {name for name, _, _ in signature_differences(saved, current)}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_key_may_change_or_is_refused_naming_it(preset: str) -> None:
    cfg = composed(PRESETS[preset])
    judged_after = not cfg.scope._target_.endswith("PerImage")  # per image, batches are judged while crafting
    scheduled = judged_after and cfg.attack.optimizer._target_.endswith("APGD")  # its schedule spans max_epochs
    original = resume_signature(cfg)
    free, refused = [], []
    for key in leaf_keys(cfg):
        mutated = copy.deepcopy(cfg)
        with open_dict(mutated):
            OmegaConf.update(mutated, key, changed(key, resolved(cfg, key)), merge=False)
        current = resume_signature(mutated)
        name = key[: -len("._target_")] if key.endswith("._target_") else key  # a group's class names the group
        if may_change(key, judged_after, scheduled):  # it may change a setting interpolating it (paths -> data.root)
            assert name not in named(original, current), f"{key} may change, yet it is refused"
            free.append(key)
        else:
            assert name in named(original, current), f"{key} changed, not refused: {named(original, current)}"
            line = signature_difference(original, current)
            assert line is not None and "\n" not in line and name in line
            refused.append(key)
    assert len(refused) > 30, len(refused)
    for kept in ("attack.step_size", "seed", "eps", "image_size", "trainer.precision", "aggregator._target_",
                 "data.batch_size"):
        assert kept in refused
    for loose in ("paths.log_dir", "checkpoint_every", "task_name", "objective", "trainer.devices"):
        assert loose in free
    assert ("metrics.success_threshold" in free) == judged_after  # per image, batches are judged while crafting
    assert ("trainer.max_epochs" in refused) == scheduled and (scheduled or preset != "apgd")


def test_a_group_chosen_differently_is_named_by_the_group_and_its_classes() -> None:
    base = resume_signature(composed(["+victims=[stargan]"]))
    other = resume_signature(composed(["+victims=[stargan,attgan]", "eot=sharing", "aggregator=mgda"]))
    difference = signature_difference(base, other)
    assert difference == ("the checkpoint was written with other settings than this run's: aggregator (CMUAFusion "
                          "there, MGDA here); eot (None there, SharingEOT here); victims.attgan (unset there, set here)"
                          ": resume with the checkpoint's settings, or start a new run")
    assert signature_difference(base, base) is None


# ---- a real checkpoint, and damaged copies of it -------------------------------------------------------------------

COMMON = ["+victims=[stargan]", "weights=random", "attack.iterations=3", "data.batch_size=2",
          "data.craft=[astronaut,astronaut@mirror,grace_hopper]", "data.evaluate=[grace_hopper@mirror]",
          "checkpoint_every=1", *small("stargan")]
MOMENTUM = [*COMMON, "attack=mifgsm", "aggregator=mgda"]
PER_IMAGE = [*COMMON, "scope=per_image", "attack=ifgsm", "aggregator=mgda"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A universal MI-FGSM run (momentum state) stopped after 2 iterations, a per-image one after its first batch."""
    root = tmp_path_factory.mktemp("stopped")
    craft(compose_run(root / "universal", [*MOMENTUM, "trainer.max_steps=2"]))
    craft(compose_run(root / "per_image", [*PER_IMAGE, "trainer.max_steps=3"]))
    return {name: root / name / "checkpoints" / "last.ckpt" for name in ("universal", "per_image")}


def tampered(source: Path, target: Path, change, redigest: bool = True) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    change(checkpoint)
    if redigest:  # a file whose digest agrees with its content: only the content checks can refuse it
        checkpoint[DIGEST_KEY] = checkpoint_digest(checkpoint)
    torch.save(checkpoint, target)
    return target


def _scale(factor: float):
    return lambda c: c["state_dict"]["perturbation"].mul_(factor)


def _set(path: tuple, value: Any):
    def change(checkpoint: dict) -> None:
        node = checkpoint
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return change


MOMENTUM_STATE = ("optimizer_states", 0, "state", 0, "momentum")
CASES = {
    "over eps": (_scale(100.0), True, "cannot be resumed: its perturbation exceeds the budget (max |delta| "),
    "over eps, digest not updated": (_scale(100.0), False, "its content does not match the digest written with it"),
    "NaN": (_set(("state_dict", "perturbation"), lambda t: t.fill_(float("nan"))), True,
            "its perturbation holds NaN or infinite values"),
    "another size": (_set(("state_dict", "perturbation"), torch.zeros(1, 3, 16, 16)), True,
                     "its perturbation is (1, 3, 16, 16), not [rows, 3, 32, 32]"),
    "too many rows": (_set(("state_dict", "perturbation"), torch.zeros(2, 3, 32, 32)), True,
                      "its perturbation has 2 rows, this run's scope and batch size give 1"),
    "momentum NaN": (_set(MOMENTUM_STATE, lambda t: t.fill_(float("inf"))), True,
                     "its attack state (optimizer_states[0].state.0.momentum) holds NaN or infinite values"),
    "momentum misshaped": (_set(MOMENTUM_STATE, torch.zeros(2, 3, 32, 32)), True,
                           "its attack state (optimizer_states[0].state.0.momentum) is (2, 3, 32, 32), not shaped"),
    "optimizer eps": (_set(("optimizer_states", 0, "param_groups", 0, "eps"), 1.0), True,
                      "its attack state has eps=1.0, this run has eps=0.05"),
    "no digest": (lambda c: c.pop(DIGEST_KEY), False, "it has no content digest"),
    "older advwm": (lambda c: c.pop("advwm_signature_version"), True, "was written by an older advwm"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_checkpoint_is_refused_before_any_work(stopped: dict[str, Path], tmp_path: Path, case: str) -> None:
    change, redigest, expected = CASES[case]
    path = tampered(stopped["universal"], tmp_path / "damaged.ckpt", change, redigest)
    cfg = compose_run(tmp_path / "resumed", [*MOMENTUM, f"ckpt_path={path}"])
    problem = checkpoint_problem(str(path), cfg)
    assert problem is not None and problem.startswith(f"ckpt_path={path}") and expected in problem, problem
    with pytest.raises(ConfigValueError, match="ckpt_path="):
        craft(cfg)
    assert not (tmp_path / "resumed").exists()


@pytest.mark.slow
def test_ckpt_path_must_be_a_readable_advwm_checkpoint(stopped: dict[str, Path], tmp_path: Path) -> None:
    """(Moved from test_validation: the checks now live in advwm.run_files.resume.)"""
    cfg = compose_run(tmp_path / "r", MOMENTUM)
    hint = "give the checkpoints/last.ckpt of an earlier run, or leave ckpt_path unset"
    assert checkpoint_problem(str(stopped["universal"]), cfg) is None
    assert checkpoint_problem(str(tmp_path / "missing.ckpt"), cfg) == f"ckpt_path={tmp_path / 'missing.ckpt'}: no " \
                                                                       f"such file: {hint}"
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    whole = stopped["universal"].read_bytes()
    (tmp_path / "half.ckpt").write_bytes(whole[: len(whole) // 2])
    torch.save({"G": torch.zeros(3)}, tmp_path / "weights.pth")
    for name, reason in (("notes.txt", "("), ("half.ckpt", "("), ("weights.pth", "(KeyError: ")):
        problem = checkpoint_problem(str(tmp_path / name), cfg)
        assert problem is not None and problem.startswith(
            f"ckpt_path={tmp_path / name} is not a checkpoint of an advwm run {reason}") and problem.endswith(hint)
    torch.save({"state_dict": {"perturbation": torch.zeros(1, 3, 32, 32)}, "epoch": 0}, tmp_path / "old.ckpt")
    problem = checkpoint_problem(str(tmp_path / "old.ckpt"), cfg)
    assert problem is not None and "was written by an older advwm" in problem


@pytest.mark.slow
def test_random_bytes_inside_the_file_are_refused(stopped: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(stopped["universal"].read_bytes())
    delta = torch.load(stopped["universal"], weights_only=True)["state_dict"]["perturbation"]
    start = bytes(data).find(delta.numpy().tobytes()[:64])  # the perturbation's stored bytes
    assert start > 0
    data[start + 100:start + 116] = os.urandom(16)
    (tmp_path / "damaged.ckpt").write_bytes(bytes(data))
    problem = checkpoint_problem(str(tmp_path / "damaged.ckpt"), compose_run(tmp_path / "r", MOMENTUM))
    assert problem is not None and "its content does not match the digest written with it" in problem


@pytest.mark.slow
def test_per_image_perturbations_kept_by_the_export_are_checked(stopped: dict[str, Path], tmp_path: Path) -> None:
    state = ("callbacks", "WatermarkExport", "per_image", 0)
    path = tampered(stopped["per_image"], tmp_path / "damaged.ckpt", _set(state, lambda t: t * 10))
    problem = checkpoint_problem(str(path), compose_run(tmp_path / "r", PER_IMAGE))
    assert problem is not None and "per-image perturbation of batch 0 (WatermarkExport) exceeds the budget" in problem


@pytest.mark.slow
def test_the_module_refuses_a_damaged_checkpoint_too(stopped: dict[str, Path], tmp_path: Path) -> None:
    """The Python API, past the pipeline's check: Lightning's restore calls the module's guard."""
    path = tampered(stopped["universal"], tmp_path / "damaged.ckpt", _scale(100.0))
    cfg = compose_run(tmp_path / "api", MOMENTUM)
    module = build_module(cfg, [r.victim for r in build_victims(cfg)])
    datamodule = build_datamodule(cfg, module.aggregator.repeats(module.attack.iterations))
    datamodule.setup("fit")
    module.signature[CRAFT_FILES] = craft_files_hash(datamodule.craft_items)  # as the pipeline does
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=str(tmp_path / "api"))
    with pytest.raises(ConfigError, match=rf"^ckpt_path={path} cannot be resumed: its perturbation exceeds the budget"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(path))
    assert torch.equal(module.perturbation.detach(), torch.zeros_like(module.perturbation))


@pytest.mark.slow
def test_more_passes_continue_crafting_unless_a_schedule_spans_the_run(tmp_path: Path) -> None:
    """trainer.max_epochs is when crafting stops (a larger one goes on: tests/test_run.py shows the result equals
    the longer run), except for APGD on a universal watermark, whose schedule spans max_epochs passes."""
    apgd = [*COMMON, "attack=apgd", "aggregator=uniform"]
    craft(compose_run(tmp_path / "apgd", [*apgd, "trainer.max_steps=2"]))
    with pytest.raises(ConfigValueError, match=r"trainer\.max_epochs \(1 there, 2 here\)"):
        craft(compose_run(tmp_path / "longer", [*apgd, "trainer.max_epochs=2",
                                                f"ckpt_path={tmp_path / 'apgd/checkpoints/last.ckpt'}"]))


# ---- what the config points to: weight files and photos ---------------------------------------------------------

def _stargan_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(load_generator("stargan", conv_dim=8, c_dim=5, repeat_num=2).state_dict(), path)
    return path


@pytest.mark.slow
def test_a_victims_weights_are_compared_by_content_not_path(tmp_path: Path) -> None:
    weights = _stargan_weights(tmp_path / "G.ckpt", seed=1)
    official = [o for o in COMMON if o != "weights=random"] + [f"victims.stargan.checkpoint={weights}"]
    craft(compose_run(tmp_path / "stopped", [*official, "trainer.max_steps=2"]))
    checkpoint = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    moved = shutil.copy(weights, tmp_path / "moved.ckpt")
    _stargan_weights(weights, seed=2)  # other bytes at the same path
    with pytest.raises(ConfigValueError, match=r"victims\.stargan\.weights_sha256 \('[0-9a-f]+\.\.\. \(#\w{8}\) there"):
        craft(compose_run(tmp_path / "changed", [*official, f"ckpt_path={checkpoint}"]))
    metrics = craft(compose_run(tmp_path / "moved", [*official[:-1], f"victims.stargan.checkpoint={moved}",
                                                     f"ckpt_path={checkpoint}"]))
    assert metrics["steps"] == 6 and metrics["weights/stargan"] == "official"


@pytest.mark.slow
def test_the_crafting_photos_are_compared_by_name_order_and_labels(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, name in enumerate(("b", "c", "d", "e")):
        Image.new("RGB", (40, 40), (60 * index, 90, 30)).save(photos / f"{name}.png")
    folder = [*[o for o in COMMON if not o.startswith("data.")], "data=folder", f"data.root={photos}",
              "data.n_craft=3", "data.batch_size=2", "data.eval_batch_size=2", "data.detect=false"]  # flat colours
    craft(compose_run(tmp_path / "stopped", [*folder, "trainer.max_steps=2"]))
    checkpoint = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(photos / "a.png")  # sorts first: the crafting list moves
    with pytest.raises(ConfigError, match=rf"^ckpt_path={checkpoint}: the checkpoint was crafted on other faces than "
                                          rf"this run's 3 \(the photos of {photos}, their order, crops or labels"):
        craft(compose_run(tmp_path / "added", [*folder, f"ckpt_path={checkpoint}"]))
    assert not (tmp_path / "added" / "checkpoints").exists() and not list((tmp_path / "added").glob("watermark*"))
    (photos / "a.png").unlink()
    assert craft(compose_run(tmp_path / "same", [*folder, f"ckpt_path={checkpoint}"]))["steps"] == 6
    with pytest.raises(ConfigValueError, match=r"data\.labels \(\['Young'\] there, \['Male'\] here\)"):
        craft(compose_run(tmp_path / "relabelled", [*folder, "data.labels=[Male]", f"ckpt_path={checkpoint}"]))


# ---- a finished run's checkpoint; one checkpoint per folder -------------------------------------------------------

def outputs(folder: Path) -> tuple[torch.Tensor, dict]:
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("seconds")
    return load_watermark(folder / "watermark.pt").tensor, metrics


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "steps"), [(MOMENTUM, 6), (PER_IMAGE, 6),
                                                  ([*MOMENTUM, "trainer.max_steps=4"], 4)],
                         ids=["universal", "per_image", "cut-by-max_steps"])
def test_a_finished_runs_checkpoint_resumed_elsewhere_writes_its_outputs(tmp_path: Path, overrides: list[str],
                                                                         steps: int, capsys) -> None:
    """(With the same trainer.max_steps Lightning sees nothing left and skips its loop: `finish_crafted` judges.)"""
    craft(compose_run(tmp_path / "finished", overrides))
    checkpoint = tmp_path / "finished" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["advwm_iteration"] == steps  # written when crafting ended
    capsys.readouterr()
    metrics = craft(compose_run(tmp_path / "elsewhere", [*overrides, f"ckpt_path={checkpoint}"]))
    skipped = f"the checkpoint's crafting had ended ({steps} iterations): judging and saving" in capsys.readouterr().out
    assert skipped == (steps == 4)
    assert metrics["steps"] == steps and metrics["images_judged"] > 0
    watermark, numbers = outputs(tmp_path / "elsewhere")
    original, original_numbers = outputs(tmp_path / "finished")
    assert torch.equal(watermark, original) and numbers == original_numbers
    assert (tmp_path / "elsewhere" / "watermark.png").is_file() and (tmp_path / "elsewhere" / "images").is_dir()


@pytest.mark.slow
def test_a_run_cut_short_without_a_periodic_checkpoint_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """The checkpoint of a run's last iteration is written at that iteration's end: one written when the fit ends
    says its epoch is complete, and the resume would skip the rest of it."""
    rare = [*MOMENTUM, "checkpoint_every=1000"]
    straight = craft(compose_run(tmp_path / "straight", rare))
    craft(compose_run(tmp_path / "cut", [*rare, "trainer.max_steps=2"]))
    resumed = craft(compose_run(tmp_path / "resumed", [*rare, f"ckpt_path={tmp_path / 'cut/checkpoints/last.ckpt'}"]))
    assert resumed["steps"] == straight["steps"] == 6
    assert torch.equal(outputs(tmp_path / "resumed")[0], outputs(tmp_path / "straight")[0])


@pytest.mark.slow
def test_a_run_in_a_folder_holding_a_checkpoint_must_resume_it(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    every4 = [*COMMON, "checkpoint_every=4"]  # the stop's checkpoint first, then a periodic one at 4, the last at 6
    craft(compose_run(folder, [*every4, "trainer.max_steps=2"]))
    before = (folder / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(RunFolderError, match=rf"^run folder {folder} holds checkpoints/last.ckpt \(iteration 2\) of an "
                                             r"earlier run: resume that run \(python -m advwm.run .*ckpt_path="):
        craft(compose_run(folder, [*COMMON, "seed=3"]))
    assert (folder / "checkpoints" / "last.ckpt").read_bytes() == before
    other = tmp_path / "other"
    craft(compose_run(other, [*COMMON, "trainer.max_steps=1"]))
    with pytest.raises(RunFolderError, match="holds checkpoints/last.ckpt"):  # a resume from elsewhere would overwrite
        craft(compose_run(folder, [*COMMON, f"ckpt_path={other / 'checkpoints' / 'last.ckpt'}"]))
    assert craft(compose_run(folder, [*every4, f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"]))["steps"] == 6
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["advwm_iteration"] == 6


@pytest.mark.slow
def test_the_cli_refuses_a_new_run_in_a_killed_runs_folder_before_writing(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    first = run_cli([*COMMON, "logger=csv", "metrics=fast", "trainer.max_steps=2", f"hydra.run.dir={folder}"])
    assert first.returncode == 0, first.stderr[-2000:]
    overrides = (folder / ".hydra" / "overrides.yaml").read_text()
    second = run_cli([*COMMON, "logger=csv", "metrics=fast", "seed=5", f"hydra.run.dir={folder}"])
    assert second.returncode == 1 and "Traceback" not in second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: run folder {folder} holds checkpoints/last.ckpt (iteration 2) of an earlier run: "
                           "resume that run (python -m advwm.run '+victims=[stargan]' weights=random ")
    assert f"trainer.max_steps=2 ckpt_path={folder}/checkpoints/last.ckpt hydra.run.dir={folder})" in line
    assert (folder / ".hydra" / "overrides.yaml").read_text() == overrides  # nothing of the new run written there
    assert "seed=5" not in (folder / "craft.log").read_text()
