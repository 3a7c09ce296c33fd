"""Optuna (issue 9.7): a trial killed mid-run is marked FAIL when the study resumes, a live worker's trial never is,
and each trial's run folder carries its trial number (trial.json)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from omegaconf import OmegaConf
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from advwm.search import HeartbeatStorage, fail_stale_trials, start_heartbeat, suggest_step_sizes

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _age_heartbeat(url: str, trial_id: int, *modifiers: str) -> None:
    """Set a trial's heartbeat to the database's now moved by SQLite date modifiers ('-1 day', '-30 seconds')."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(
            f"UPDATE trial_heartbeats SET heartbeat = datetime('now', {', '.join(repr(m) for m in modifiers)}) "
            "WHERE trial_id = :id"), {"id": trial_id})
    engine.dispose()


def test_only_trials_whose_heartbeat_is_older_than_the_grace_period_are_failed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    silent, alive, killed_yesterday, killed, done = (study.ask() for _ in range(5))
    study.tell(done, 1.0)
    storage = HeartbeatStorage(url, heartbeat_interval=10, grace_period=60)
    for trial in (alive, killed_yesterday, killed):
        storage.record_heartbeat(trial._trial_id)
    _age_heartbeat(url, killed._trial_id, "-120 seconds")
    _age_heartbeat(url, killed_yesterday._trial_id, "-1 day", "-30 seconds")
    _age_heartbeat(url, alive._trial_id, "-30 seconds")  # three beats missed, within the grace period
    # optuna 2.10's own check reads timedelta.seconds, which wraps at a day: a day-old kill looks 30 s old
    plain = RDBStorage(url, heartbeat_interval=10, grace_period=60)
    assert plain._get_stale_trial_ids(study._study_id) == [killed._trial_id]
    assert sorted(fail_stale_trials(storage, "s")) == sorted([killed_yesterday.number, killed.number])
    states = {t.number: t.state for t in optuna.load_study(study_name="s", storage=url).trials}
    assert states == {silent.number: TrialState.RUNNING,  # no heartbeat ever: nothing proves its owner is gone
                      alive.number: TrialState.RUNNING, killed_yesterday.number: TrialState.FAIL,
                      killed.number: TrialState.FAIL, done.number: TrialState.COMPLETE}
    assert fail_stale_trials(storage, "s") == []


def test_a_heartbeat_beats_while_the_trial_runs_and_stops_when_it_is_finished(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    trial = study.ask()
    storage = HeartbeatStorage(url, heartbeat_interval=1, grace_period=3)
    thread = start_heartbeat(storage, trial._trial_id, interval=0.2)
    _age_heartbeat(url, trial._trial_id, "-1 hour")
    for _ in range(9000):  # wait for the next beat (up to 30 minutes on a very busy machine)
        if not _heartbeat_older_than(url, trial._trial_id, 600):
            break
        time.sleep(0.2)
    assert not _heartbeat_older_than(url, trial._trial_id, 600)  # the thread beat again over the aged value
    assert fail_stale_trials(storage, "s") == []
    study.tell(trial, 0.5)
    thread.join(timeout=1800)  # it sees the trial finished and ends
    assert not thread.is_alive()


def _heartbeat_older_than(url: str, trial_id: int, seconds: int) -> bool:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        old = connection.execute(sqlalchemy.text(
            "SELECT heartbeat < datetime('now', :age) FROM trial_heartbeats WHERE trial_id = :id"),
            {"age": f"-{seconds} seconds", "id": trial_id}).scalar()
    engine.dispose()
    return bool(old)


def test_each_trial_folder_gets_trial_json_and_the_trial_records_its_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    sweep = tmp_path / "multiruns" / "t"
    cfg = OmegaConf.create({"victims": {"stargan": {}}, "step_search": {"low": 1.0, "high": 2.0},
                            "trial_heartbeat": {"interval": 5, "grace_period": 30},
                            "hydra": {"sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"},
                                      "sweeper": {"storage": url}, "job": {"num": 0}}})
    study = optuna.create_study(study_name="cmua_stargan", storage=url)
    study.tell(study.ask(), 0.1)  # trial 0, from an earlier invocation
    for expected_number, job in ((1, 0), (2, 1)):  # this invocation's jobs 0, 1 are the study's trials 1, 2
        trial = study.ask()
        suggest_step_sizes(cfg, trial)
        record = json.loads((sweep / str(job) / "trial.json").read_text())
        assert record == {"trial": expected_number, "study": "cmua_stargan", "storage": url,
                          "params": {"victims.stargan.step_scale": trial.params["victims.stargan.step_scale"]}}
        stored = optuna.load_study(study_name="cmua_stargan", storage=url).trials[expected_number]
        assert stored.user_attrs["run_folder"] == str((sweep / str(job)).resolve())
        assert 1.0 <= stored.params["victims.stargan.step_scale"] <= 2.0
        study.tell(trial, 0.2)


@pytest.mark.slow
def test_a_trial_killed_mid_run_is_failed_when_the_study_resumes(tmp_path: Path) -> None:
    search = ["-m", "hparams_search=cmua_step_sizes", "hydra.sweeper.n_trials=1", "+victims=[stargan]",
              "weights=random", "logger=csv", "metrics=fast", "image_size=32", "victims.stargan.arch.conv_dim=8",
              "victims.stargan.arch.repeat_num=1", "attack.iterations=1", "data.craft=[astronaut]",
              "data.evaluate=[grace_hopper]", "checkpoint_every=1", "trial_heartbeat.interval=1",
              "trial_heartbeat.grace_period=2", f"paths.log_dir={tmp_path}",
              # long enough to be killed mid-run, short enough to finish when resumed; the same in both invocations
              # (a study refuses trials scored with other settings: advwm.search.study_signature)
              "trainer.max_epochs=100000", "trainer.max_steps=100"]
    url = f"sqlite:///{tmp_path / 'optuna' / 'cmua_stargan.db'}"
    env = {**os.environ, "WANDB_MODE": "offline"}
    log = tmp_path / "first.txt"
    with log.open("w") as output:  # a trial of 100 iterations, killed after its first
        first = subprocess.Popen([sys.executable, "-m", "advwm.run", *search], cwd=REPO,
                                 env=env, stdout=output, stderr=output)
    try:
        while not list(tmp_path.glob("craft/multiruns/*/0/checkpoints/last.ckpt")):  # mid-run (no time limit)
            assert first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=1800)
    killed_folder = next(tmp_path.glob("craft/multiruns/*/0"))
    trial = optuna.load_study(study_name="cmua_stargan", storage=url).trials[0]
    assert trial.state == TrialState.RUNNING  # what optuna alone leaves behind, forever
    time.sleep(2 + 2)  # the grace period, and a beat more: nothing beats for the killed trial any more

    resumed = subprocess.run([sys.executable, "-m", "advwm.run", *search], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = optuna.load_study(study_name="cmua_stargan", storage=url).trials
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.COMPLETE)]
    assert "trial 0 of study cmua_stargan stopped sending heartbeats" in resumed.stdout + resumed.stderr
    # each trial's folder says which trial it was (the second invocation's job 0 is trial 1)
    assert json.loads((killed_folder / "trial.json").read_text())["trial"] == 0
    folders = [Path(t.user_attrs["run_folder"]) for t in trials]
    assert folders[0] == killed_folder.resolve() and folders[1] != folders[0] and folders[1].name == "0"
    assert json.loads((folders[1] / "trial.json").read_text())["trial"] == 1
    assert json.loads((folders[1] / "metrics.json").read_text())["sr_mask/mean"] == trials[1].value
