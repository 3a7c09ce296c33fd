"""What `advwm.preflight` and `advwm.validation` decide before any work, piece by piece (test_cli.py runs the
commands): the choice lists against the code that reads them, types against the defaults, the objective, the study
a search may use, and every `python -m advwm.run` command of the README composes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from advwm import preflight as pre
from advwm import search, studies
from advwm.errors import ConfigError
from advwm.project import VICTIM_SIZES
from advwm.run_files import folder as run_folder
from advwm.validation import CHOICES, PRECISIONS, SUCCESS_KINDS, WEIGHT_MODES, objective_problem, type_problems

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_each_choice_list_is_the_one_the_code_accepts() -> None:
    from advwm.attacks.scopes import BATCH_REDUCTIONS, FUSED_STEPS
    from advwm.data.celeba import PARTITIONS, SAMPLES
    from advwm.metrics.success import SUCCESS_KINDS as COMPUTED
    from advwm.victims.execution import PRECISIONS as ACCEPTED
    from advwm.victims.hisd import MODES
    from advwm.victims.ugatit import DIRECTIONS

    assert CHOICES["scope.batch_reduction"] == BATCH_REDUCTIONS and CHOICES["scope.fused_step"] == FUSED_STEPS
    assert CHOICES["data.sample"] == SAMPLES and set(CHOICES["data.partition"]) == set(PARTITIONS)
    assert CHOICES["victims.hisd.options.mode"] == MODES and CHOICES["victims.ugatit.options.direction"] == DIRECTIONS
    assert PRECISIONS == ACCEPTED and SUCCESS_KINDS == COMPUTED
    assert CHOICES["weights"] == CHOICES["victims.*.weights"] == WEIGHT_MODES
    assert CHOICES["victim_size"] == VICTIM_SIZES
    from advwm.callbacks.evaluation import MetricSettings

    for value in CHOICES["metrics.fid_reference"]:
        MetricSettings(fid_reference=value)  # accepted
    with pytest.raises(ValueError):
        MetricSettings(fid_reference="elsewhere")


def test_types_are_judged_against_the_same_group_choices_defaults() -> None:
    reference = composed("+victims=[stargan]", "attack=mifgsm")
    person = composed("+victims=[stargan]", "attack=mifgsm", "attack.optimizer.decay=abc", "eps=1", "seed=3",
                      "metrics.fid=false", "victims.stargan.arch.conv_dim=16.0", "+victims.stargan.arch.extra=x",
                      "callbacks.snapshots=null", "ckpt_path=/some/file", "task_name=123")
    assert type_problems(person, reference) == ["attack.optimizer.decay=abc: choose a number",
                                                "victims.stargan.arch.conv_dim=16.0: choose a whole number"]
    assert type_problems(composed("+victims=[stargan]", "ckpt_path=[a]"), composed("+victims=[stargan]")) == [
        "ckpt_path=['a']: choose a text"]


@pytest.mark.parametrize(("objective", "ok"), [
    ("sr_mask/mean", True), ("avg_l/stargan", True), ("sr_mask/stargan/Male", True), ("robust/jpeg75/avg_l/mean", True),
    ("psnr", True), ("fid/stargan", True), ("avg_l/attgan", False), ("avgl/mean", False), ("sr_mask", False),
    ("robust/jpeg75/avgl/mean", False),
])
def test_the_objective_must_be_a_metric_the_run_computes(objective: str, ok: bool) -> None:
    problem = objective_problem(composed("+victims=[stargan]", f"objective={objective}"))
    assert (problem is None) == ok, problem


def test_a_basic_multirun_is_checked_job_by_job_with_the_presets_sweep() -> None:
    _, jobs = pre.jobs(["experiment=cdmaa_table4", "eps=0.05,0.1"], multirun=False)
    regularizers = sorted({o for job in jobs for o in job if o.startswith("regularizer=")})
    assert len(jobs) == 8 and regularizers == ["regularizer=l2", "regularizer=log", "regularizer=none",
                                               "regularizer=penalty"]
    with pytest.raises(ConfigError, match=r"^in the multirun's job .*eps=0: eps=0: choose a value in \(0, 1\]"):
        pre.preflight(["-m", "+victims=[stargan]", "weights=random", "aggregator=cmua,mgda", "eps=0.05,0"])


# ---- a search's study ------------------------------------------------------------------------------------------------

SMOKE_SEARCH = ["experiment=smoke", "hparams_search=cmua_step_sizes", "objective=avg_l/mean"]


def _study_with_signature(tmp_path: Path, *overrides: str) -> str:
    cfg = composed(*SMOKE_SEARCH, f"paths.log_dir={tmp_path}", *overrides)
    url = str(cfg.hparams_search_storage)
    study = optuna.create_study(study_name=str(cfg.study_name), storage=url, direction="maximize")
    search.record_signature(cfg, study)
    study.tell(study.ask(), 0.5)
    return url


def test_a_search_with_another_objective_victims_space_or_data_is_refused_naming_the_difference(
        tmp_path: Path) -> None:
    _study_with_signature(tmp_path)
    base = [*SMOKE_SEARCH, f"paths.log_dir={tmp_path}"]
    assert pre.preflight(base) is None  # the same settings resume the study
    assert pre.preflight([*base, "seed=7", "hydra.sweeper.n_trials=5", "trial_heartbeat.interval=5"]) is None
    cases = {
        "objective=sr_mask/mean": "scored with objective='avg_l/mean', this search has objective='sr_mask/mean'",
        "step_search.high=5.0": "scored with step_search.high=10.0, this search has step_search.high=5.0",
        "data.craft=[astronaut]": "scored with data.craft=['astronaut', 'astronaut@mirror'], this search has "
                                  "data.craft=['astronaut']",
        "attack.iterations=3": "scored with attack.iterations=2, this search has attack.iterations=3",
    }
    for override, words in cases.items():
        with pytest.raises(ConfigError) as caught:
            pre.preflight([*base, override])
        message = str(caught.value)
        assert message.startswith("study 'cmua_stargan-attgan' (sqlite:///") and words in message, message
        assert "holds 1 trial(s)" in message and "study_name=cmua_stargan-attgan-2" in message
    # another victim set gets its own study by default (cmua_stargan-attgan-hisd); named alike, it is refused
    assert pre.preflight([*base, "+victims=[hisd]"]) is None
    with pytest.raises(ConfigError, match=r"scored with victims\.hisd\.\S+='\(unset\)'"):
        pre.preflight([*base, "+victims=[hisd]", "study_name=cmua_stargan-attgan"])
    # the trial hook refuses too (a search started without advwm.run's check)
    cfg = composed(*base, "objective=sr_mask/mean")
    study = optuna.load_study(study_name="cmua_stargan-attgan", storage=str(cfg.hparams_search_storage))
    with pytest.raises(ConfigError, match="objective='avg_l/mean'"):
        search.record_signature(cfg, study)


def test_the_signature_covers_every_setting_but_the_listed_free_ones() -> None:
    signature = studies.study_signature(composed(*SMOKE_SEARCH))
    for key in ("objective", "hydra.sweeper.direction", "eps", "image_size", "attack.step_size",
                "victims.stargan.arch.conv_dim", "victims.attgan.weights", "data.evaluate", "aggregator._target_",
                "metrics.success_threshold", "step_search.low", "trainer.precision", "trainer.max_epochs"):
        assert key in signature, key
    for key in ("seed", "task_name", "paths.log_dir", "victims.stargan.step_scale", "study_name",
                "hparams_search_storage", "trainer.devices", "callbacks.checkpoint.dirpath",
                "victims.stargan.micro_batch"):
        assert key not in signature, key


def test_search_warnings_and_the_tie_warning() -> None:
    warnings = studies.search_warnings(composed("experiment=smoke", "hparams_search=cmua_step_sizes"))
    assert warnings and "objective=sr_mask/mean stays where it is" in warnings[0]
    assert "objective=avg_l/mean" in warnings[0]
    assert studies.search_warnings(composed(*SMOKE_SEARCH)) == []
    assert studies.tie_warning([0.0, 0.0, 0.0], "sr_mask/mean", True) == (
        "all 3 trials scored sr_mask/mean = 0: random victims leave sr_mask/mean where it is; search with "
        "objective=avg_l/mean")
    assert studies.tie_warning([0.1, 0.2], "avg_l/mean", True) is None
    assert studies.tie_warning([0.3], "avg_l/mean", True) is None  # one trial ties with nothing
    assert studies.tie_warning([0.5, 0.5, float("nan")], "sr_mask/mean", False).startswith("all 2 trials scored")


def test_storage_problems_name_the_key_and_what_is_wrong(tmp_path: Path) -> None:
    assert studies.storage_problem(f"sqlite:///{tmp_path / 'new.db'}") is None
    assert studies.storage_problem(f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}") == (
        f"hparams_search_storage=sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}: the folder {tmp_path / 'no' / 'such'} "
        "does not exist: create it or choose another")
    (tmp_path / "empty.db").write_bytes(b"")  # SQLite takes an empty file as an empty database
    assert studies.storage_problem(f"sqlite:///{tmp_path / 'empty.db'}") is None
    assert studies.storage_problem("postgresql://user:secret@host/db") is None  # checked by opening it (optuna)
    problem = studies.study_problem(composed(*SMOKE_SEARCH, "hparams_search_storage=postgresql+nosuchdriver://u:pw@h/d"))
    assert problem.startswith("hparams_search_storage=postgresql+nosuchdriver://u:***@h/d: cannot open it as a study "
                              "storage (")


# ---- the run folder a refused run leaves ----------------------------------------------------------------------

def test_only_an_untouched_folder_this_process_made_and_holds_is_discarded(tmp_path: Path) -> None:
    made = tmp_path / "made"
    assert run_folder.acquire(made)
    (made / ".hydra").mkdir()
    (made / "craft.log").write_text("...")
    (made / "config.yaml").write_text("...")
    kept = tmp_path / "worked"
    assert run_folder.acquire(kept)
    (kept / "metrics.json").write_text("{}")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    assert run_folder.acquire(theirs)
    try:
        assert not run_folder.discard_untouched(kept, "craft.log") and kept.is_dir()
        assert not run_folder.discard_untouched(theirs, "craft.log") and theirs.is_dir()  # existed before
        assert run_folder.discard_untouched(made, "craft.log") and not made.exists()
        free = tmp_path / "free"
        free.mkdir()
        assert not run_folder.discard_untouched(free, "craft.log")  # not held by this process
    finally:
        for folder in (made, kept, theirs):
            run_folder.release(folder)


# ---- the README stays true ----------------------------------------------------------------------------------------

def readme_commands() -> list[str]:
    """Every `python -m advwm.run ...` and `python experiments/cmua.py ...` command of README.md: code blocks
    (backslash continuations joined, comments dropped) and inline code; those with <placeholders> are left out, and
    so are table rows (the startup table times commands that are wrong on purpose)."""
    text = (REPO / "README.md").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for row in joined.splitlines():
        if row.lstrip().startswith("|"):
            continue
        for match in re.finditer(r"python (?:-m advwm\.run|experiments/cmua\.py)[^`\n]*", row):
            line = match.group(0).split(" #")[0].strip()
            if "<" not in line and "..." not in line:
                found.append(line)
    return sorted(set(found))


COMMANDS = readme_commands()


def test_the_readme_has_commands_to_check() -> None:
    assert len(COMMANDS) >= 10 and any("experiment=smoke" in c for c in COMMANDS)


@pytest.mark.parametrize("line", COMMANDS)
def test_every_readme_command_composes(line: str) -> None:
    words = shlex.split(line)[3:] if line.startswith("python -m") else shlex.split(line)[2:]
    words = [w for i, w in enumerate(words) if not w.startswith("--") and not (i and words[i - 1] == "--trials")]
    if any(w.startswith("-") and w not in pre.MULTIRUN_FLAGS for w in words):
        return
    if "experiments/cmua.py" in line:
        words = ["-m", "hparams_search=cmua_step_sizes", *words]
    from advwm.run import expand_home

    overrides = expand_home([w for w in words if w not in pre.MULTIRUN_FLAGS])
    base, jobs = pre.jobs(overrides, multirun="-m" in words)
    assert jobs
    for job in jobs:
        cfg = pre.compose_checked(job)
        OmegaConf.to_container(cfg, resolve=False)
