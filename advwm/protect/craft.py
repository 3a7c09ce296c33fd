"""`python -m advwm.protect photos/ --craft --victims stargan,attgan --out protected/`: per-image protection for
people who never heard of Hydra.

It composes the same Hydra config a person would type (`scope=per_image data=folder aggregator=mgda
regularizer=penalty attack=ifgsm attack.iterations=80 metrics=fast`, README *Protect your photos*) and calls
the same pipeline (`advwm.pipeline.craft`). Why not a separate attack loop: one code path means the same
checks before any work, checkpoints, metrics, run folder and per-photo export as `python -m advwm.run`, so the
short command can never drift from the documented one. What it adds: the photos go straight into `--out`
(`<photo>.png`, `protection.csv`, `index.html`; the run's own files in `<out>/runs/<time>/`), the photo list is
given to the data module (files and folders, like the universal path), and a rerun skips every photo
`protection.csv` lists as protected from the same file with the same settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from advwm.protect import ledger
from advwm.protect.photos import output_name
from advwm.report.text import console_text

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
RECIPE = ("scope=per_image", "data=folder", "aggregator=mgda", "regularizer=penalty", "attack=ifgsm",
          "metrics=fast", "logger=csv")


@dataclass
class CraftSettings:
    """What the short command lets a person choose (everything else: the README's per-image recipe)."""

    victims: list[str]
    weights: str = "checkpoint"
    iterations: int = 80
    eps: float = 0.05
    image_size: int = 256
    detect: bool = True
    center_crop: int | None = None
    labels: Sequence[str] = ("Young",)
    overrides: Sequence[str] = ()


def compose(settings: CraftSettings, root: Path, files: Sequence[str], out: Path, run_dir: Path) -> DictConfig:
    """The run's config: the recipe, the person's choices, the photos and where everything goes."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import advwm  # noqa: F401  (registers the resolvers)
    from advwm import resolvers  # noqa: F401

    overrides = [f"+victims=[{','.join(settings.victims)}]", *RECIPE, f"weights={settings.weights}",
                 f"attack.iterations={settings.iterations}", f"eps={settings.eps}",
                 f"image_size={settings.image_size}",
                 f"data.detect={str(settings.detect).lower()}", f"data.labels=[{','.join(settings.labels)}]",
                 *settings.overrides]
    if settings.center_crop is not None:
        overrides.append(f"data.center_crop={settings.center_crop}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.task_name = "protect"
        cfg.paths.output_dir = str(run_dir)
        cfg.data.root = str(root)
        cfg.data.files = list(files)
        cfg.data.n_craft = max(1, len(files))
        cfg.callbacks.export.protected_dir = str(out)
    return cfg


def settings_of(cfg: DictConfig) -> str:
    """protection.csv's `settings` digest of this config (the same the run's export writes)."""
    from advwm.protect.run_photos import settings_digest

    return settings_digest(OmegaConf.to_yaml(cfg, resolve=True))


def to_do(names: Sequence[str], sources: Sequence[Path], out: Path, settings: str) -> tuple[list[str], list[str]]:
    """(photos still to protect, photos already protected here with these settings from the same file)."""
    rows = ledger.read(out)
    todo, done = [], []
    for name, source in zip(names, sources, strict=True):
        try:
            same = ledger.already_done(rows.get(name), out, settings, ledger.file_digest(source))
        except OSError:
            same = False  # unreadable: the data module names it
        (done if same else todo).append(name)
    return todo, done


def run_folder(out: Path) -> Path:
    """`<out>/runs/<date>_<time>` (a second, `_2`, ... when one started in the same second)."""
    base = out / "runs" / time.strftime("%Y-%m-%d_%H-%M-%S")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}_{n}")
    return folder


def add_log_file(run_dir: Path) -> logging.Handler:
    """The run's log file `<run>/protect.log` (what Hydra's job logging gives `python -m advwm.run`)."""
    from advwm.run_files.io import RunLogHandler

    run_dir.mkdir(parents=True, exist_ok=True)
    handler = RunLogHandler(run_dir / "protect.log", delay=True)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(console)
    return handler


def in_protect_words(message: str) -> str:
    """A run's one-line error with its overrides said as protect's options (`--weights random`, `--set k=v`)."""
    from advwm.validation import CHECKPOINT_HINT, RANDOM_WEIGHTS_HINT

    return (message.replace(RANDOM_WEIGHTS_HINT, "add --weights random for a smoke run with random victims")
            .replace(CHECKPOINT_HINT, "pass --set victims.<name>.checkpoint"))


def craft_photos(settings: CraftSettings, root: Path, names: Sequence[str], sources: Sequence[Path],
                 out: Path) -> int:
    """Protect the photos `names` (relative to `root`) into `out`; the exit status (0 when all are protected)."""
    import sys

    from advwm.pipeline import craft
    from advwm.run import quiet_third_party_noise, user_error, weights_banner
    from advwm.validation import check_config

    run_dir = run_folder(out)
    try:
        cfg = compose(settings, root, names, out, run_dir)
        digest = settings_of(cfg)
        todo, done = to_do(names, sources, out, digest)
        if done:
            print(console_text(f"{len(done)} photo(s) already protected in {out} with these settings: skipped"))
        if not todo:
            print(console_text(f"nothing to do: every photo is protected in {out} (protection.csv)"))
            return 0
        cfg = compose(settings, root, todo, out, run_dir)
        quiet_third_party_noise()
        check_config(cfg)
        print(weights_banner(cfg), flush=True)
        handler = add_log_file(run_dir)
        try:
            craft(cfg)
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
    except Exception as error:
        if not user_error(error):  # a bug: its traceback
            raise
        print(console_text(f"error: {in_protect_words(str(error))}"), file=sys.stderr)
        return 1
    rows = ledger.read(out)
    missing = [n for n in todo if n not in rows or not (out / output_name(n)).is_file()]
    faceless = [n for n in todo if rows.get(n, {}).get("status") == ledger.NO_FACE]
    print(console_text(f"protected {len(todo) - len(missing) - len(faceless)} photo(s) into {out} (table: "
                       f"{out / ledger.TABLE}, contact sheet: {out / 'index.html'}); {len(faceless)} without a face "
                       f"(written back unchanged), {len(done)} skipped (done before), {len(missing)} not protected"))
    for name in missing:
        print(console_text(f"not protected: {root / name} (unreadable: see the warnings above)"), file=sys.stderr)
    return 1 if missing else 0
