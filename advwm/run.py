"""Entry point: `python -m advwm.run +victims=[stargan,attgan] aggregator=mgda` (see conf/config.yaml).

Before Hydra sees the command line, two things a person types are made to work: a value starting with `~`
(`data.root=~/my_photos`: the shell leaves it alone after `key=`, and Hydra's override grammar has no `~`
in values) is expanded to the home folder, and a misspelled victim is one line listing the victims.
Then the run's first lines say which victims are attacked and whether their weights are the official ones.
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
from advwm.attacks.module import NonFiniteLossError
from advwm.data import NoImagesError
from advwm.pipeline import ConfigError, check_weights, craft, objective
from advwm.run_files import signals
from advwm.run_files.folder import DISK_FULL_ADVICE, RunFolderError
from advwm.run_files.io import DiskFullError, disk_full_message, is_disk_full
from advwm.run_files.loggers import to_log_file
from advwm.validation import ConfigValueError, check_config
from advwm.victims import CheckpointError, CheckpointNotFoundError

# Errors whose message already says what is wrong and what to do: shown as one line, no traceback
# (HYDRA_FULL_ERROR=1 shows the traceback, for debugging advwm itself).
USER_ERRORS = (ConfigError, ConfigValueError, CheckpointError, CheckpointNotFoundError, NoImagesError,
               NonFiniteLossError, RunFolderError, DiskFullError)
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


def weights_banner(cfg: DictConfig) -> str:
    """The run's first lines: the victims attacked, and whether they are the official networks or random."""
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
        check_config(cfg)  # before the first lines: a bad value is all the run says
        if cfg.get("victims"):
            banner = weights_banner(cfg)
            print(banner, flush=True)
            to_log_file(banner)
        return objective(cfg, craft(cfg))
    except signals.RunStopped as stopped:  # one line, exit status 128 + the signal's number (a submitit job too)
        signals.exit_stopped(stopped)
    except USER_ERRORS as error:
        stop(f"error: {error}" + (f": {DISK_FULL_ADVICE}" if isinstance(error, DiskFullError) else ""), error)
    except Exception as error:
        if not is_disk_full(error):
            raise
        where = getattr(error, "filename", None) or cfg.paths.output_dir  # a write advwm does not own (CSV log, W&B)
        stop(f"error: {disk_full_message(where)}: {DISK_FULL_ADVICE}", error)


def stop(line: str, error: BaseException) -> NoReturn:
    """End the run with one line on stderr (kept in the log file too); HYDRA_FULL_ERROR=1 shows the traceback."""
    to_log_file(line, logging.ERROR)  # the log keeps it; the console shows it once
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    raise SystemExit(line) from None


def cli(argv: Sequence[str] | None = None) -> None:
    """`python -m advwm.run`: check and tidy the overrides, then hand them to Hydra."""
    args = list(sys.argv[1:] if argv is None else argv)
    problem = unknown_victim_error(args)
    if problem:
        raise SystemExit(f"error: {problem}")
    sys.argv = [sys.argv[0], *expand_home(args)]
    with signals.ending_cleanly("starting or between runs"):  # SIGTERM/SIGINT: one line, status 128 + n
        main()


if __name__ == "__main__":
    cli()
