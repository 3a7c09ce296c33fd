"""Entry point: `python -m advwm.run +victims=[stargan,attgan] aggregator=mgda` (see conf/config.yaml).

Before Hydra sees the command line, things a person types are made to work or refused in one line: a value
starting with `~` (`data.root=~/my_photos`: the shell leaves it alone after `key=`, and Hydra's override grammar
has no `~` in values) is expanded to the home folder, a misspelled victim is one line listing the victims, and
`advwm.preflight` composes the config and checks every value (a misspelt key gets "did you mean"). All of that
runs before Hydra makes a run folder and before torch and Lightning load: this module imports them (through
`advwm.pipeline`) only when a run starts, so `--help` and every config error answer in a fraction of a second
(`experiments/startup.py`). Then the run's first lines say which victims are attacked and whether their weights are
the official ones. A run stopped by a user error before it did any work leaves no folder behind
(`advwm.run_files.folder.discard_untouched`): the report would count it as a failed run.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import hydra
from omegaconf import DictConfig

from advwm import resolvers  # noqa: F401  (registers the config resolvers)
from advwm.errors import ConfigError
from advwm.preflight import preflight, wants_hydra_itself
from advwm.run_files import folder as run_folder
from advwm.run_files.folder import DISK_FULL_ADVICE, RunFolderError
from advwm.run_files.io import DiskFullError, disk_full_message, is_disk_full
from advwm.validation import check_config

# Errors whose message already says what is wrong and what to do: shown as one line, no traceback
# (HYDRA_FULL_ERROR=1 shows the traceback, for debugging advwm itself). The ones below by (module, class) live in
# modules that load torch; an error of such a class can only exist once its module is loaded (see `user_error`).
USER_ERRORS = (ConfigError, RunFolderError, DiskFullError)
LOADED_USER_ERRORS = (("advwm.victims.checkpoints", "CheckpointError"),
                      ("advwm.victims.checkpoints", "CheckpointNotFoundError"),
                      ("advwm.data.base", "NoImagesError"), ("advwm.attacks.losses", "NonFiniteLossError"))
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Lightning's start-up lines that say nothing about an advwm run on a CPU.
NOISE_PREFIXES = ("\N{ELECTRIC LIGHT BULB} Tip:", "GPU available: False", "TPU available", "HPU available",
                  "`Trainer.fit` stopped", "Seed set to")
OVERRIDE = re.compile(r"^(?P<key>[+~]{0,2}[A-Za-z_][\w./@-]*)=(?P<value>.*)$", re.DOTALL)

log = logging.getLogger("advwm")


def quiet_third_party_noise() -> None:
    """Drop messages that say nothing about a run: Lightning's advert for its cloud logger, its device lines
    when there is no accelerator, its advice on checkpointing manual optimisation (a 17-line code sample) and a
    deprecation notice it triggers inside torch.utils._pytree."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # checkpoints of the perturbation *after* the step are what resuming needs; Lightning's advice does not apply
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
    # advwm's data modules resume where the run stopped (RepeatedBatchSampler.start), which Lightning cannot see
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed"):
        logging.getLogger(name).addFilter(lambda record: not str(record.getMessage()).startswith(NOISE_PREFIXES))


def expand_home(args: Sequence[str]) -> list[str]:
    """`key=~/photos` -> `key='/home/me/photos'` (quoted for Hydra), as a shell does for `~` at a word's start."""
    out = []
    for arg in args:
        match = OVERRIDE.match(arg)
        value = match.group("value") if match else ""
        if match and (value == "~" or value.startswith("~/")) and "," not in value:
            expanded = os.path.expanduser(value).replace("\\", "\\\\").replace("'", "\\'")
            arg = f"{match.group('key')}='{expanded}'"
        out.append(arg)
    return out


def known_victims() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "victims").glob("*.yaml"))


def unknown_victim_error(args: Sequence[str]) -> str | None:
    """One line for a misspelled victim in `+victims=[...]` (Hydra would say "Could not load 'victims/x'")."""
    known = known_victims()
    for arg in args:
        match = OVERRIDE.match(arg)
        if not match or match.group("key").lstrip("+~") != "victims":
            continue
        names = [n.strip().strip("'\"") for n in re.split(r"[\[\],]", match.group("value")) if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            return (f"unknown victim(s) {', '.join(unknown)} in {arg}; choose from: {', '.join(known)} "
                    f"(e.g. +victims=[stargan,attgan])")
    return None


def user_error(error: BaseException) -> bool:
    """True for an error whose message is the whole story (USER_ERRORS and LOADED_USER_ERRORS)."""
    if isinstance(error, USER_ERRORS):
        return True
    for module, name in LOADED_USER_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(error, getattr(loaded, name)):
            return True
    return False


def weights_banner(cfg: DictConfig) -> str:
    """The run's first lines: the victims attacked, and whether they are the official networks or random."""
    from advwm.pipeline import check_weights

    weights = check_weights(cfg)  # a missing official file stops the run here, all of them named at once
    names = list(weights)
    lines = [f"advwm: attacking {', '.join(names) or 'no victim'} ({cfg.get('task_name')})"]
    random = [n for n, (_, kind) in weights.items() if kind == "random"]
    if random:
        lines.append(f"NOTE: {', '.join(random)} {'is' if len(random) == 1 else 'are'} RANDOMLY INITIALISED (no "
                     "official weight file): the numbers of this run show the machinery only, not protection.")
        lines.append("      Get the official files: `python -m advwm.weights list` (where each goes, where to get it); "
                     "`python -m advwm.weights fetch stargan` downloads StarGAN.")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Craft, judge and save a watermark; return the sweep objective (mean SR_mask over victims)."""
    quiet_third_party_noise()
    try:
        return run(cfg)
    except BaseException as error:
        signals = sys.modules.get("advwm.run_files.signals")  # loaded by the run; a stop exists only then
        if signals is not None and isinstance(error, signals.RunStopped):  # one line, status 128 + the signal
            signals.exit_stopped(error)
        if not isinstance(error, Exception):
            raise
        if user_error(error):
            stop(f"error: {error}" + (f": {DISK_FULL_ADVICE}" if isinstance(error, DiskFullError) else ""), error)
        if not is_disk_full(error):
            raise
        where = getattr(error, "filename", None) or cfg.paths.output_dir  # a write advwm does not own (CSV log, W&B)
        stop(f"error: {disk_full_message(where)}: {DISK_FULL_ADVICE}", error)


def run(cfg: DictConfig) -> float:
    """Check, say which victims, craft; a user error before any work removes the run folder this process made."""
    folder = Path(str(cfg.paths.output_dir))
    with run_folder.exclusive(folder):  # held while the folder is judged and removed: no other run is in it
        try:
            check_config(cfg)  # before the first lines: a bad value is all the run says
            if cfg.get("victims"):
                banner = weights_banner(cfg)
                print(banner, flush=True)
                log_only(banner)
            from advwm.pipeline import craft, objective  # torch and Lightning: only now

            return objective(cfg, craft(cfg))
        except Exception as error:
            if user_error(error) and not isinstance(error, RunFolderError):
                run_folder.discard_untouched(folder, f"{cfg.get('task_name')}.log")
            raise


def log_only(text: str, level: int = logging.INFO) -> None:
    """The run's log file keeps `text` (the console shows it in its own form).

    What `advwm.run_files.loggers.to_log_file` does, here because that module loads Lightning (seconds), which an
    error found before any work must not wait for."""
    record = log.makeRecord(log.name, level, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def stop(line: str, error: BaseException) -> NoReturn:
    """End the run with one line on stderr (kept in the log file too); HYDRA_FULL_ERROR=1 shows the traceback."""
    log_only(line, logging.ERROR)  # the log keeps it; the console shows it once
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    raise SystemExit(line) from None


def cli(argv: Sequence[str] | None = None) -> None:
    """`python -m advwm.run`: check and tidy the overrides, then hand them to Hydra."""
    args = list(sys.argv[1:] if argv is None else argv)
    problem = unknown_victim_error(args)
    if problem:
        raise SystemExit(f"error: {problem}")
    args = expand_home(args)
    try:
        preflight(args)  # composed and checked: no run folder, no torch yet
    except ConfigError as error:  # PreflightError, ConfigValueError: one line each
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {error}") from None
    sys.argv = [sys.argv[0], *args]
    if wants_hydra_itself(args):  # --help, --cfg, ...: Hydra answers, nothing runs, nothing loads Lightning
        main()
        return
    from advwm.run_files import signals  # Lightning: a run starts

    with signals.ending_cleanly("starting or between runs"):  # SIGTERM/SIGINT: one line, status 128 + n
        main()


if __name__ == "__main__":
    cli()
