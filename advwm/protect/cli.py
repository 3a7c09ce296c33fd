"""Protect your own photos: `python -m advwm.protect`.

    python -m advwm.protect photos/ --craft --victims stargan,attgan --out protected/    per-image (strongest)
    python -m advwm.protect <run>/watermark.pt photo.jpg more_photos/ --out protected/  a universal watermark
    python -m advwm.protect <run>/generator.pt photos/ --out protected/   amortized: one forward pass per face

Each photo is read as a person sees it (upright, full bit depth, transparency kept; `advwm.data.decode`). Every
face found in it (`advwm.protect.faces`: OpenCV's Haar cascades, framed like CelebA's aligned crops) is cropped,
resized to the victims' size, given its perturbation (`--craft`: crafted for that face by a per-image run; a
generator.pt: its forward pass for that face, `advwm.protect.generator`; otherwise the universal watermark) and
pasted back at the photo's own resolution (`advwm.protect.paste`): nothing outside the face squares changes and no
pixel moves by more than eps. A photo with no face is written
back unchanged and named. `--no-detect` protects each photo's largest central square instead (or the centre
`--center-crop` px, for aligned CelebA-style faces).

Output in `--out`: `<photo path relative to the inputs' common folder>.png` (`face.jpg` -> `face.jpg.png`, so
`face.jpg` and `face.png` never share an output), PNG (see `advwm.protect.photos`: why not JPEG), 16-bit when
the photo had more than 8 bits, with its alpha channel; `protection.csv` (how protected each photo is) and
`index.html` (a contact sheet). A rerun skips photos already protected there with the same settings.

Exit status: 0 when every photo was protected, skipped as done, or had no face; 1 when a photo was refused or
could not be written, or no photo was protected at all. Each refusal is one line on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch

from advwm.data.decode import IMAGE_SUFFIXES, PhotoError, list_photos, open_photo
from advwm.protect import ledger
from advwm.protect.generator import TrainedGenerator, generator_eps
from advwm.protect.paste import face_squares
from advwm.protect.photos import CENTRAL, DETECTED, PhotoFolder, output_name
from advwm.protect.protectors import Protector, UniversalWatermark
from advwm.report.text import console_text
from advwm.run_files.generator_file import GeneratorError, GeneratorFile, holds_generator, load_generator
from advwm.run_files.watermark_file import EPS_TOLERANCE, WatermarkError, WatermarkFile, load_watermark

DEFAULT_EPS = 0.05  # conf/config.yaml's eps: what a watermark file without metadata is checked against

RANDOM_VICTIMS_WARNING = (
    "WARNING: THIS {what} WAS {made} AGAINST RANDOMLY INITIALISED VICTIMS ({names}), NOT THE REAL MODELS: "
    "it does NOT protect these photos against real face editing. Make one with the official weights "
    "(README, 'Victims and the official weights')."
)


class InputError(ValueError):
    """The inputs or --out cannot be used; the message (one line) says what to change."""


@dataclass(frozen=True)
class Job:
    """One photo to protect: the file, its name (path relative to the inputs' common folder), its output."""

    source: Path
    target: Path
    name: str = ""


# ---- which photos, written where -----------------------------------------------------------------------

def plan(inputs: Sequence[str], out: Path, report=print) -> tuple[Path, list[Job]]:
    """(the inputs' common folder, the photos named by `inputs` with their output paths).

    Files, or folders searched recursively. Outputs keep the photos' paths relative to the deepest folder
    holding all inputs, with `.png` appended to the full original name, so two photos never share an output.
    """
    sources: list[Path] = []
    roots: list[Path] = []
    for entry in inputs:
        path = Path(os.path.abspath(Path(entry).expanduser()))
        if not path.exists():
            raise InputError(f"{entry} does not exist: name photos or folders of photos")
        if path.is_dir():
            listing = list_photos(path, exclude=[out])
            for skipped, reason in listing.skipped:
                report(f"skipped {skipped}: {reason}", file=sys.stderr)
            if not listing.files:
                raise InputError(f"{entry} holds no photo ({', '.join(IMAGE_SUFFIXES)}): name a folder with photos")
            sources += listing.files
            roots.append(path)
        else:
            sources.append(path)
            roots.append(path.parent)
    base = Path(os.path.commonpath([str(r) for r in roots]))
    unique = list(dict.fromkeys(sources))  # a photo named twice (as a file and inside a folder) once
    jobs = []
    for source in unique:
        name = source.relative_to(base).as_posix()
        jobs.append(Job(source, out / output_name(name), name))
    return base, jobs


def refuse_collisions(jobs: Sequence[Job], report=print) -> tuple[list[Job], int]:
    """Drop jobs whose output would overwrite another's (e.g. on a case-insensitive disk) or an input photo."""
    sources = {os.path.normcase(str(j.source)) for j in jobs}
    taken: dict[str, Path] = {}
    kept: list[Job] = []
    refused = 0
    for job in jobs:
        key = str(job.target).casefold()
        if key in taken or os.path.normcase(str(job.target)) in sources:
            other = taken.get(key, job.target)
            report(f"refused {job.source}: its output {job.target} would overwrite {other}; "
                   "rename the photo or use another --out", file=sys.stderr)
            refused += 1
            continue
        taken[key] = job.source
        kept.append(job)
    return kept, refused


# ---- one photo -------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """`kind`: protected | no face | skipped | refused; `line`: what to tell the person; the decoder's warnings."""

    kind: str
    line: str
    warnings: list[str] = field(default_factory=list)


def protect_one(job: Job, folder: PhotoFolder, protector: Protector, detect: bool, center_crop: int | None,
                labels: torch.Tensor | None = None) -> Outcome:
    """Protect and write one photo through the crop -> protect -> paste path."""
    name = job.name or job.source.name
    try:
        digest = ledger.file_digest(job.source) if job.source.is_file() else ""
        if digest and folder.done(name, digest):
            return Outcome("skipped", f"{job.source}: done before with these settings ({job.target})")
        photo = open_photo(job.source)
    except (PhotoError, OSError) as error:
        return Outcome("refused", f"refused {job.source}: {error}")
    warnings = [f"warning: {job.source}: {note}" for note in photo.warnings]
    squares = face_squares(photo, detect, center_crop)
    face_names = [f"{name}#{k}" for k in range(1, len(squares) + 1)]
    face_labels = None if labels is None else labels.expand(len(squares), -1)
    try:
        folder.protect(name, job.source, photo, squares, protector, face_names, face_labels,
                       DETECTED if detect and center_crop is None else CENTRAL, digest)
    except OSError as error:
        return Outcome("refused", f"refused {job.source}: cannot write {job.target} ({error.strerror or error})")
    if not squares:
        return Outcome("no face", f"warning: no face found in {job.source}: written back unchanged to {job.target} "
                       "(--no-detect protects its centre)", warnings)
    return Outcome("protected", f"{job.source} -> {job.target} ({len(squares)} face(s))", warnings)


# ---- the command ------------------------------------------------------------------------------------------

class OneLineParser(argparse.ArgumentParser):
    """argparse, but a wrong option is one line (argparse prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (python -m advwm.protect --help)\n")


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1] (1 = as crafted; more would exceed the watermark's "
                                         f"eps), got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, got {text}")
    return value


def _eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1] (image units in [-1, 1]), got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m advwm.protect", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="[WATERMARK.pt|GENERATOR.pt] PHOTO",
                        help="a universal run's watermark.pt or an amortized run's generator.pt, then photos or "
                             "folders (with --craft: photos only)")
    parser.add_argument("--out", required=True, help="folder for the protected PNGs, protection.csv and index.html")
    parser.add_argument("--craft", action="store_true",
                        help="craft a perturbation for every face (per-image, CDMAA-style) instead of a watermark")
    parser.add_argument("--victims", help="--craft: the victims to protect against, e.g. stargan,attgan")
    parser.add_argument("--weights", choices=("checkpoint", "random"), default="checkpoint",
                        help="--craft: the victims' official files (default) or random networks (a smoke test)")
    parser.add_argument("--iterations", type=_positive_int, default=80, help="--craft: attack iterations per face")
    parser.add_argument("--image-size", type=_positive_int, default=256, help="--craft: the victims' resolution")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="--craft: any other run setting as a Hydra override (e.g. --set eot=sharing)")
    parser.add_argument("--no-detect", action="store_true",
                        help="no face detection: protect the largest central square of each photo")
    parser.add_argument("--center-crop", type=_positive_int, default=None,
                        help="with --no-detect (implied): side of the centre square (170 for aligned CelebA)")
    parser.add_argument("--strength", type=_strength, default=1.0,
                        help="scale of the watermark in [0, 1] (1 = as crafted; the change never exceeds eps)")
    parser.add_argument("--eps", type=_eps, default=None,
                        help=f"--craft: the budget (default {DEFAULT_EPS}); a watermark file without metadata: "
                             f"the eps it is checked against (default {DEFAULT_EPS})")
    parser.add_argument("--measure", action=argparse.BooleanOptionalAction, default=None,
                        help="score each photo against the watermark's victims (protection.csv); default: on when "
                             "their official weight files are present")
    parser.add_argument("--labels", default="Young",
                        help="CelebA attributes (comma-separated) every face is taken to have; the victims' edits "
                             "are built from them (default Young)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).expanduser()
    if args.craft:
        return _craft(args, out)
    if args.victims:
        return _fail("--victims is for --craft; a universal watermark already names its victims")
    if len(args.paths) < 2:
        return _fail("name the watermark.pt of a universal run or the generator.pt of an amortized run, then photos "
                     "or folders (or use --craft)")
    try:
        if holds_generator(args.paths[0]):  # scope=amortized: advwm.protect.generator
            watermark = load_generator(args.paths[0])
            eps = generator_eps(watermark, args.eps)
        else:
            watermark = load_watermark(args.paths[0], scope="universal")
            eps = watermark_eps(watermark, args.eps)
    except (WatermarkError, GeneratorError) as error:
        return _fail(str(error))
    for warning in getattr(watermark, "warnings", []):
        print(console_text(f"warning: {warning}"), file=sys.stderr)
    if watermark.random_victims:
        what, made = ("GENERATOR", "TRAINED") if isinstance(watermark, GeneratorFile) else ("WATERMARK", "CRAFTED")
        print(RANDOM_VICTIMS_WARNING.format(what=what, made=made, names=", ".join(watermark.random_victims)),
              file=sys.stderr)
    try:
        labels = _labels(args.labels)
        _, jobs = plan(args.paths[1:], out)
        jobs, refused = refuse_collisions(jobs)
        scorer, victims = scorer_for(watermark, args.measure)
    except (InputError, ValueError) as error:
        return _fail(str(error))
    detect = not args.no_detect and args.center_crop is None
    if not detect:
        print("face detection off: each photo's " + ("largest central square" if args.center_crop is None else
                                                     f"centre {args.center_crop} px square") + " is protected")
    settings = ledger.digest({"watermark": ledger.file_digest(watermark.path), "strength": args.strength,
                              "detect": detect, "center_crop": args.center_crop, "eps": eps})
    folder = PhotoFolder(out, eps=eps, settings=settings, victims=victims, scorer=scorer)
    protector = (TrainedGenerator(watermark, args.strength) if isinstance(watermark, GeneratorFile)
                 else UniversalWatermark(watermark.tensor, eps, args.strength))
    counts = {"protected": 0, "no face": 0, "skipped": 0, "refused": refused}
    for job in _progress(jobs):
        outcome = protect_one(job, folder, protector, detect, args.center_crop, labels)
        counts[outcome.kind] += 1
        for warning in outcome.warnings:
            _say(warning, error=True)
        _say(outcome.line, error=outcome.kind in ("refused", "no face"))
    _say(f"protected {counts['protected']} photo(s) into {out}; {counts['refused']} refused, {counts['no face']} "
         f"without a face (written back unchanged), {counts['skipped']} already protected (skipped); "
         f"table: {out / ledger.TABLE}, contact sheet: {out / 'index.html'}")
    return 1 if counts["refused"] or not (counts["protected"] or counts["skipped"]) else 0


def watermark_eps(watermark: WatermarkFile, given: float | None) -> float:
    """The eps the applied change is bounded by: the file's own, or for a file without metadata `--eps` (default
    DEFAULT_EPS), which the watermark must then respect (a bare tensor 20x over eps is refused)."""
    if watermark.eps is not None:
        if given is not None and not math.isclose(given, watermark.eps):
            raise WatermarkError(f"--eps {given:g} differs from the eps {watermark.eps:g} {watermark.path} was crafted "
                                 "with; --eps is only for watermark files without metadata")
        return float(watermark.eps)
    eps = DEFAULT_EPS if given is None else float(given)
    largest = float(watermark.tensor.abs().max()) if watermark.tensor.numel() else 0.0
    if largest > eps + EPS_TOLERANCE:
        raise WatermarkError(f"{watermark.path} has no metadata and |delta| reaches {largest:.6g}, above eps {eps:g} "
                             f"({'--eps' if given is not None else 'the default for a file without metadata'}); pass "
                             "--eps with the eps it was crafted with, if it really was")
    return eps


def scorer_for(watermark: WatermarkFile, measure: bool | None):
    """(the scorer protection.csv uses or None, the victims' weights {name: official|random}) for a watermark.

    Measuring needs the victims the watermark was crafted against, built from the run's config in the file. By
    default only when every one was official and its weight file is here; `--measure` also with random ones
    (fresh random networks, not the run's: the table then says `random`); `--no-measure` never.
    """
    victims_info = dict(watermark.victims)
    if measure is False:
        return None, victims_info
    config = watermark.config
    if not isinstance(config, str) or "victims" not in config:
        if measure:
            raise ValueError(f"--measure: {watermark.path} names no victims (a file without metadata); "
                             "leave --measure out")
        print("note: not measured (the watermark file names no victims)")
        return None, victims_info
    import yaml
    from omegaconf import OmegaConf

    from advwm.pipeline import build_victims, check_weights
    from advwm.victims import CheckpointNotFoundError

    cfg = OmegaConf.create(yaml.safe_load(config))
    try:
        weights = check_weights(cfg)
    except CheckpointNotFoundError as error:
        if measure:
            raise ValueError(f"--measure: {error}") from None
        print("note: not measured (the victims' official weight files are not here; --measure with them, or "
              "--no-measure to silence this)")
        return None, victims_info
    if measure is None and any(kind != "official" for _, kind in weights.values()):
        print("note: not measured (the watermark was crafted against random victims; --measure scores it against "
              "fresh random ones)")
        return None, victims_info
    victims = [r.victim for r in build_victims(cfg)]
    victims_info = {r: kind for r, (_, kind) in weights.items()}
    thresholds = _thresholds(cfg)

    def score(crops: torch.Tensor, protected: torch.Tensor, labels: torch.Tensor):
        from advwm.protect.measure import score_victims

        return score_victims(victims, crops, protected, labels, thresholds)

    return score, victims_info


def _thresholds(cfg):
    from advwm.callbacks.evaluation import MetricSettings

    metrics = cfg.get("metrics") or {}
    keys = ("success_threshold", "mask_threshold", "ruiz_threshold", "tau")
    return MetricSettings(**{k: float(metrics[k]) for k in keys if k in metrics}, robustness=[])


def _labels(text: str) -> torch.Tensor:
    from advwm.data.labels import label_vector

    return label_vector([n.strip() for n in text.split(",") if n.strip()])[None]


def _craft(args: argparse.Namespace, out: Path) -> int:
    from advwm.protect.craft import CraftSettings, craft_photos
    from advwm.run import known_victims

    if not args.victims:
        return _fail("--craft needs --victims, e.g. --victims stargan,attgan")
    victims = [v.strip() for v in args.victims.split(",") if v.strip()]
    unknown = [v for v in victims if v not in known_victims()]
    if unknown:
        return _fail(f"unknown victim(s) {', '.join(unknown)}; choose from: {', '.join(known_victims())}")
    if args.strength != 1.0:
        return _fail("--strength is for a universal watermark; --craft crafts each face's perturbation within --eps")
    if any(str(p).endswith(".pt") for p in args.paths):
        return _fail("--craft crafts for your photos: name photos or folders only, not a watermark.pt or "
                     "generator.pt")
    if args.measure is False:
        args.set.append("callbacks.export.measure=false")
    try:
        labels = [n.strip() for n in args.labels.split(",") if n.strip()]
        _labels(args.labels)
        root, jobs = plan(args.paths, out)
        jobs, refused = refuse_collisions(jobs)
    except (InputError, ValueError) as error:
        return _fail(str(error))
    settings = CraftSettings(victims=victims, weights=args.weights, iterations=args.iterations,
                             eps=DEFAULT_EPS if args.eps is None else args.eps, image_size=args.image_size,
                             detect=not args.no_detect and args.center_crop is None, center_crop=args.center_crop,
                             labels=labels, overrides=list(args.set))
    status = craft_photos(settings, root, [j.name for j in jobs], [j.source for j in jobs], out)
    return 1 if refused else status


def _progress(jobs: Sequence[Job]):
    """A bar over the photos with the time left (on a terminal; quiet when stderr is a file or a pipe)."""
    from tqdm.auto import tqdm

    return tqdm(jobs, desc="protecting", unit="photo", file=sys.stderr, disable=None, dynamic_ncols=True)


def _say(line: str, error: bool = False) -> None:
    """One line to the terminal, with photo names' control and bidi characters shown as escapes (a file named
    with an escape sequence must not recolour, move or reorder what the person reads)."""
    from tqdm.auto import tqdm

    tqdm.write(console_text(line), file=sys.stderr if error else sys.stdout)


def _fail(message: str) -> int:
    print(console_text(f"error: {message}"), file=sys.stderr)
    return 1
