"""The command line answers at once (issue 19): --help, `weights list` and every config error that needs no network
answer without torch or Lightning, a misspelt key gets "did you mean", a refused command leaves no run folder, and
every value is checked by type before any work (issue 17.4).

Every test here runs the commands as a person does (subprocesses) and imports nothing of advwm, so the file also
runs against an older checkout (PYTHONPATH=<checkout>) to show what it catches there.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning")
STARGAN = ["+victims=[stargan]", "weights=random"]


def command(module: str, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
            importtime: bool = False) -> subprocess.CompletedProcess:
    environment = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", **(env or {})}
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", module, *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=1800)


def imported(stderr: str) -> set[str]:
    """Top-level packages `-X importtime` reports as imported (its lines: `import time: self | cumulative | name`)."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(lines) == 1, lines  # one line, nothing else
    return lines[0]


# ---- 1. answers without torch or Lightning ----------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("advwm.run", "--help"),
    ("advwm.weights", "list"),
    ("advwm.weights", "--help"),
    ("advwm.run", "+victims=[stargan,attgan]", "eps=0"),
    ("advwm.run", "+victims=[stargan]", "seed=abc"),
    ("advwm.run", "+victims=[stargan]", "attack.iteration=2"),
    ("advwm.run", "+victims=[stargan,attgan]"),  # no weight files: named before torch loads
    ("advwm.run", "-m", *STARGAN, "aggregator=cmua,mgda", "eps=0.05,0"),
], ids=lambda a: " ".join(a))
def test_help_weights_list_and_config_errors_do_not_load_torch_or_lightning(args: tuple[str, ...],
                                                                           tmp_path: Path) -> None:
    result = command(args[0], *args[1:], importtime=True, env={"ADVWM_ROOT": str(tmp_path)})
    assert result.returncode in (0, 1), result.stderr[-3000:]
    loaded = imported(result.stderr)
    assert "hydra" in loaded or args[0] == "advwm.weights"  # -X importtime did report
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    if args[0] == "advwm.run" and "--help" not in args:
        assert error_line(result).startswith("error: ")


# ---- 2. did you mean ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "expected"), [
    ("attack.iteration=2", "error: attack.iteration is not a key of this config: did you mean attack.iterations? "
                           "(attack.iterations=2)"),
    ("seeed=3", "error: seeed is not a key of this config: did you mean seed? (seed=3)"),
    ("victims.stargan.archh.conv_dim=8", "error: victims.stargan.archh.conv_dim is not a key of this config: did you "
                                         "mean victims.stargan.arch.conv_dim? (victims.stargan.arch.conv_dim=8)"),
    ("attack=pgdd", "error: attack=pgdd: no such choice; did you mean attack=pgd? (attack: adam, apgd, di2fgsm, ifgsm, "
                    "mdi2fgsm, mifgsm, pgd)"),
    ("attack.optimizer.decay=0.5", "error: attack.optimizer.decay is a key of attack=mdi2fgsm | mifgsm, not of "
                                   "attack=pgd: choose attack=mdi2fgsm to set it"),
    ("+attack.iterations=3", "error: attack.iterations is already a key: set it without +: attack.iterations=3"),
    ("weights=randm", "error: weights=randm: choose checkpoint | random | auto (did you mean weights=random?)"),
    ("objective=avgl/mean", "error: objective=avgl/mean: not a metric this run computes: choose <metric>/mean or "
                            "<metric>/<victim> with <metric> one of sr_mask, l2_mask, ruiz, avg_l, attack_rate (did "
                            "you mean objective=avg_l/mean?)"),
], ids=lambda v: v if "=" in v and not v.startswith("error") else "")
def test_a_misspelt_key_choice_or_value_gets_did_you_mean_in_one_line(override: str, expected: str) -> None:
    assert error_line(command("advwm.run", *STARGAN, override)) == expected


def test_trainer_max_steps_works_without_plus_as_the_readme_writes_it(tmp_path: Path) -> None:
    result = command("advwm.run", *STARGAN, "trainer.max_steps=0", f"paths.log_dir={tmp_path}")
    assert error_line(result) == "error: trainer.max_steps=0: choose a whole number >= 1, or -1 for no limit"
    result = command("advwm.run", *STARGAN, "trainer.max_steps=1", "--cfg", "job")
    assert result.returncode == 0 and "max_steps: 1" in result.stdout, result.stderr[-2000:]


# ---- 3. a refused command leaves no run folder ----------------------------------------------------------------

def folders_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


def test_a_config_error_leaves_no_run_folder_for_a_run_or_a_multirun(tmp_path: Path) -> None:
    for args in ([*STARGAN, "eps=0"], ["-m", *STARGAN, "eps=0.05,0"], [*STARGAN, "attack.iteration=2"]):
        error_line(command("advwm.run", *args, f"paths.log_dir={tmp_path}"))
    assert folders_under(tmp_path) == []


def test_an_error_found_in_the_run_before_any_work_removes_the_folder_the_run_made(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")  # found only by loading it (torch): inside the run, after Hydra's folder
    logs = tmp_path / "outputs"
    line = error_line(command("advwm.run", *STARGAN, f"ckpt_path={notes}", f"paths.log_dir={logs}"))
    assert line.startswith(f"error: ckpt_path={notes} is not a checkpoint of an advwm run")
    assert folders_under(logs) == ["craft", "craft/runs"]  # the run's own folder is gone
    line = error_line(command("advwm.run", "-m", *STARGAN, f"ckpt_path={notes}", "eps=0.05,0.06",
                              f"paths.log_dir={logs}"))
    assert line.startswith(f"error: ckpt_path={notes} is not a checkpoint of an advwm run")
    assert folders_under(logs) == ["craft", "craft/multiruns", "craft/runs"]  # neither the job's nor the multirun's
    assert [p for p in logs.rglob("*") if p.is_file()] == []
    # a folder the person named is theirs: kept, whatever happened
    mine = tmp_path / "mine"
    mine.mkdir()
    error_line(command("advwm.run", *STARGAN, f"ckpt_path={notes}", f"hydra.run.dir={mine}"))
    assert mine.is_dir() and (mine / "craft.log").is_file()


# ---- 6. every value by type; study storages; a lock that is a folder -------------------------------------------

@pytest.mark.parametrize(("override", "expected"), [
    ("seed=abc", "error: seed=abc: choose a whole number >= 0 and <= 4294967295"),
    ("seed=1.5", "error: seed=1.5: choose a whole number >= 0 and <= 4294967295"),
    ("metrics.fid=yes", "error: metrics.fid=yes: choose true or false"),
    ("metrics.tau=abc", "error: metrics.tau=abc: choose a number"),
    ("aggregator.alpha=[1,2]", "error: aggregator.alpha=[1, 2]: choose a number"),
    ("data.craft=astronaut", "error: data.craft=astronaut: choose a list, e.g. [a,b]"),
    ("victims.stargan.arch.conv_dim=8.5", "error: victims.stargan.arch.conv_dim=8.5: choose a whole number"),
    ("scope.fused_step=signs",
     "error: scope.fused_step=signs: choose mean | sign (did you mean scope.fused_step=sign?)"),
    ("attack.optimizer=3", "error: attack.optimizer=3: choose its keys (key.subkey=value), not one value"),
])
def test_every_value_is_checked_by_type_before_any_work(override: str, expected: str, tmp_path: Path) -> None:
    assert error_line(command("advwm.run", *STARGAN, override, f"paths.log_dir={tmp_path}")) == expected
    assert folders_under(tmp_path) == []


def _search(tmp_path: Path, storage: str) -> subprocess.CompletedProcess:
    return command("advwm.run", "experiment=smoke", "hparams_search=cmua_step_sizes", "objective=avg_l/mean",
                   f"hparams_search_storage={storage}", f"paths.log_dir={tmp_path / 'outputs'}")


def test_a_study_storage_that_is_not_a_database_is_one_line_naming_the_key(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("just some notes\n" * 100)
    folder = tmp_path / "folder.db"
    folder.mkdir()
    broken = tmp_path / "broken.db"
    connection = sqlite3.connect(broken)
    connection.executescript("CREATE TABLE t (x); " + "".join(f"INSERT INTO t VALUES ({i});" for i in range(2000)))
    connection.commit()
    connection.close()
    data = bytearray(broken.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # a page of the table overwritten: the header still says SQLite
    broken.write_bytes(bytes(data))
    expected = {text: "is not an SQLite database", folder: "is a folder, not an SQLite file",
                broken: "is a damaged SQLite database"}
    for path, words in expected.items():
        line = error_line(_search(tmp_path, f"sqlite:///{path}"))
        assert line.startswith(f"error: hparams_search_storage=sqlite:///{path}: {path} {words}"), line
    assert not (tmp_path / "outputs").exists()


def test_a_lock_file_that_is_a_folder_is_named(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".advwm.lock").mkdir(parents=True)
    line = error_line(command("advwm.run", "experiment=smoke", f"hydra.run.dir={run}"))
    assert line == (f"error: the run folder's lock file {run / '.advwm.lock'} is a folder, not advwm's lock file: "
                    "remove it (it holds nothing a run needs) or choose another run folder with hydra.run.dir=<folder>")
