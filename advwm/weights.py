"""The weights tool: where each victim's official checkpoint comes from, whether a file fits, and a fetcher.

    python -m advwm.weights list                       # every victim: source, file, container, size, default path
    python -m advwm.weights check                      # check the files present at their default paths
    python -m advwm.weights check stargan /data/G.ckpt # a victim's default file, or any file (victim guessed)
    python -m advwm.weights fetch stargan              # download, verify and move into place (direct URLs only)

Default paths follow `conf/paths/default.yaml`: `${paths.weights_dir}/<victim>/<file>` with
`weights_dir = ${ADVWM_ROOT:-.}/weights`; `--weights-dir` overrides it. Checks compare keys and shapes with
the full-size official network, built on the meta device (no memory, no time); `--arch key=value` changes
the architecture (values are YAML; `encoder.channels=[8,16]` sets a nested value). Files are read with the
runtime's safe loader (`torch.load(weights_only=True)`): a pickle that would run code is refused.
Exit status: 0 all good, 1 a problem (printed), 2 a usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from advwm.victims import checkpoints as ckpt
from advwm.victims.registry import SPECS, VICTIM_NAMES, VictimSpec, get_spec

PROG = "python -m advwm.weights"
_CHUNK = 1 << 20
_TRACKED = "num_batches_tracked"
_SHOW = 5

# How each official file holds the generator (the runtime loader unwraps these; see victims/checkpoints.py).
CONTAINERS: dict[str, str] = {
    "stargan": "bare state_dict",
    "attgan": "{'G': state_dict}",
    "aggan": "bare state_dict",
    "stgan": "{'state_dict': ..., 'optimizer': ...}, keys 'module.'-prefixed",
    "ugatit": "U-GAT-IT params {'genA2B', 'genB2A', discriminators}; genA2B is used by default",
    "hisd": "{'gen', 'gen_test'}; 'gen_test' is used",
}
# Container keys that each hold a generator of the victim's architecture, all checked when present.
GENERATOR_KEYS: dict[str, tuple[str, ...]] = {"ugatit": ("genA2B", "genB2A")}


class ToolError(Exception):
    """A one-line reason for a failed command (printed, exit status 1)."""


# ---- where files live ---------------------------------------------------------------------------------
def weights_dir(override: str | Path | None = None) -> Path:
    """`--weights-dir`, else `${ADVWM_ROOT:-.}/weights` as `paths.weights_dir` in conf/paths/default.yaml."""
    if override is not None:
        return Path(override).expanduser()
    return Path(os.environ.get("ADVWM_ROOT", ".")).expanduser() / "weights"


def default_path(name: str, root: str | Path | None = None) -> Path:
    """Where advwm looks for a victim's official file by default: `<weights_dir>/<victim>/<file>`."""
    return weights_dir(root) / name / get_spec(name).checkpoint_file


def container_text(spec: VictimSpec) -> str:
    if spec.name in CONTAINERS:
        return CONTAINERS[spec.name]
    if not spec.container_keys:
        return "bare state_dict"
    return "{" + ", ".join(repr(k) for k in spec.container_keys) + ": state_dict}"


# ---- the expected layout ------------------------------------------------------------------------------
def parse_arch(items: Sequence[str] | None) -> dict[str, Any]:
    """`['conv_dim=8', 'encoder.channels=[8,16]']` -> {'conv_dim': 8, 'encoder': {'channels': [8, 16]}}."""
    arch: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--arch expects key=value, got {item!r}")
        value = yaml.safe_load(text) if text.strip() else None
        parts = [p.strip() for p in key.split(".")]
        node = arch
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--arch {item!r}: {part!r} is already set to a value")
            node = child
        node[parts[-1]] = value
    return arch


def _accepts(spec: VictimSpec, arch: Mapping[str, Any]) -> bool:
    try:
        spec.arch(**arch)
    except TypeError:
        return False
    return True


@dataclass
class Layout:
    """The key -> shape layout of a victim's network, built on the meta device."""

    victim: str
    network: str
    arch: dict[str, Any]
    shapes: dict[str, torch.Size]
    parameters: frozenset[str]
    overridden: bool = False

    @property
    def n_parameters(self) -> int:
        return sum(self.shapes[k].numel() for k in self.parameters)

    @property
    def fp32_bytes(self) -> int:
        return 4 * sum(s.numel() for k, s in self.shapes.items() if k.rsplit(".", 1)[-1] != _TRACKED)

    def describe(self, extra: str = "") -> str:
        what = f"{'the' if self.overridden else 'the full-size'} {self.victim} generator ({self.network}"
        if self.overridden:
            what += ", arch " + ", ".join(f"{k}={v}" for k, v in self.arch.items())
        return what + (f"; {extra})" if extra else ")")


_LAYOUTS: dict[tuple[str, str], Layout] = {}


def layout(name: str, overrides: Mapping[str, Any] | None = None) -> Layout:
    """Keys and shapes of `name`'s network (official arch updated with `overrides`), without allocating it."""
    spec = get_spec(name)
    overrides = dict(overrides or {})
    cache_key = (name, repr(sorted(overrides.items())))
    if cache_key not in _LAYOUTS:
        try:
            arch = spec.arch(**overrides)
            with torch.device("meta"):
                network: nn.Module = spec.network_cls(**arch)
        except (TypeError, ValueError, KeyError) as err:  # unknown arch key, impossible value
            raise ToolError(f"{name}: cannot build the network with arch {overrides}: {_one_line(err)}") from err
        _LAYOUTS[cache_key] = Layout(
            victim=name,
            network=type(network).__name__,
            arch=overrides,
            shapes={k: v.shape for k, v in network.state_dict().items()},
            parameters=frozenset(k for k, _ in network.named_parameters()),
            overridden=bool(overrides),
        )
    return _LAYOUTS[cache_key]


# ---- comparing a file with a layout -------------------------------------------------------------------
@dataclass
class Comparison:
    victim: str
    container: str | None  # the container key the generator came from; None = a bare state_dict
    n_file: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshaped: list[str] = field(default_factory=list)
    matched_keys: int = 0
    matched_shapes: int = 0
    error: str | None = None  # the file holds nothing usable for this victim
    note: str | None = None  # a generator in the wrong container (the runtime would not find it)

    @property
    def ok(self) -> bool:
        return self.error is None and self.note is None and not (self.missing or self.unexpected or self.misshaped)

    def score(self, expected: int) -> float:
        """0..1: how much of the union of keys agrees (key present on both sides, then shape equal)."""
        if self.error is not None:
            return 0.0
        union = max(expected, 1) + len(self.unexpected)
        return (self.matched_keys + self.matched_shapes) / (2 * union) * (0.9 if self.note else 1.0)

    def problems(self) -> list[str]:
        if self.error is not None:
            return [self.error]
        where = f"[{self.container!r}] " if self.container else ""
        lines = [self.note] if self.note else []
        if self.missing:
            lines.append(f"{where}{len(self.missing)} missing keys: {_listing(self.missing)}")
        if self.unexpected:
            lines.append(f"{where}{len(self.unexpected)} unexpected keys: {_listing(self.unexpected)}")
        if self.misshaped:
            lines.append(f"{where}{len(self.misshaped)} mis-shaped keys: {_listing(self.misshaped)}")
        return lines


def _one_line(err: object) -> str:
    return " ".join(str(err).split())


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _compare_state(victim: str, lay: Layout, state: Mapping[str, torch.Tensor], container: str | None) -> Comparison:
    cmp = Comparison(victim=victim, container=container, n_file=len(state))
    for key, shape in lay.shapes.items():
        if key not in state:
            if key.rsplit(".", 1)[-1] != _TRACKED:  # absent from pre-0.4.1 files; the loader tolerates it
                cmp.missing.append(key)
            continue
        cmp.matched_keys += 1
        got = tuple(state[key].shape)
        if got == tuple(shape):
            cmp.matched_shapes += 1
        else:
            cmp.misshaped.append(f"{key} {list(got)} vs expected {list(shape)}")
    cmp.unexpected = [k for k in state if k not in lay.shapes]
    return cmp


def compare(victim: str, lay: Layout, obj: object, path: Path) -> list[Comparison]:
    """Compare every generator the file holds for `victim` (as the runtime would unwrap it) with `lay`."""
    spec = get_spec(victim)
    keys = GENERATOR_KEYS.get(victim, spec.container_keys)
    present = [k for k in keys if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
    results = []
    for container in present or [None]:
        try:
            state = ckpt.unwrap_state_dict(victim, obj, path, (container,) if container else spec.container_keys)
        except ckpt.CheckpointError as err:
            results.extend(_misplaced(victim, lay, obj, path) or [Comparison(victim, container, 0, error=str(err))])
            continue
        results.append(_compare_state(victim, lay, state, container))
    return results


def _misplaced(victim: str, lay: Layout, obj: object, path: Path) -> list[Comparison]:
    """State dicts under container keys this victim does not use (another victim's file), compared anyway."""
    if not isinstance(obj, Mapping):
        return []
    results = []
    for key, value in obj.items():
        if isinstance(value, Mapping) and value and all(torch.is_tensor(v) for v in value.values()):
            state = ckpt.unwrap_state_dict(victim, obj, path, (key,))
            cmp = _compare_state(victim, lay, state, str(key))
            cmp.note = f"the file holds a state_dict under {key!r}; {victim} expects {container_text(get_spec(victim))}"
            results.append(cmp)
    return results


@dataclass
class CheckResult:
    path: Path
    victim: str | None
    ok: bool
    lines: list[str]


def _read(path: Path) -> object:
    """The project's safe loader (weights_only=True); a ToolError with a one-line reason otherwise."""
    try:
        return ckpt._read("file", path)
    except ckpt.CheckpointError as err:
        text = str(err)
        prefix = f"file: cannot load checkpoint {path}: "
        raise ToolError(text[len(prefix) :] if text.startswith(prefix) else text) from err


def check_file(
    path: str | Path, victim: str | None = None, arch: Mapping[str, Any] | None = None
) -> CheckResult:
    """Check one file against a victim's layout (or the best-matching victim when `victim` is None)."""
    path = Path(path).expanduser()
    arch = dict(arch or {})
    if not path.exists():
        return CheckResult(path, victim, False, [f"FAIL {victim or '?'}: no file at {path}"])
    if not path.is_file():
        return CheckResult(path, victim, False, [f"FAIL {victim or '?'}: {path} is not a file"])
    try:
        obj = _read(path)
    except ToolError as err:
        return CheckResult(path, victim, False, [f"FAIL {victim or '?'}: {path}: {err}"])
    lines: list[str] = []
    if victim is None:
        candidates = []
        for name in VICTIM_NAMES:
            try:
                lay = layout(name, arch if arch and _accepts(get_spec(name), arch) else None)
            except ToolError:  # the overrides fit this victim's arguments but not its network: not this one
                continue
            results = compare(name, lay, obj, path)
            candidates.append((min(r.score(len(lay.shapes)) for r in results), name, lay, results))
        score, victim, lay, results = max(candidates, key=lambda c: c[0], default=(0.0, None, None, []))
        if score == 0.0 or victim is None or lay is None:
            top = list(obj.keys())[:_SHOW] if isinstance(obj, Mapping) else type(obj).__name__
            return CheckResult(path, None, False, [f"FAIL ?: {path} matches no victim (top level: {top})"])
        lines.append(f"{path}: best match {victim} ({score:.0%} of keys and shapes agree)")
    else:
        lay = layout(victim, arch)
        results = compare(victim, lay, obj, path)
    if all(r.ok for r in results):
        where = ", ".join(f"[{r.container!r}]" for r in results if r.container)
        n_params = lay.n_parameters
        lines.append(
            f"OK {victim}: {path}{' ' + where if where else ''} matches {lay.describe()}: "
            f"{len(lay.shapes)} keys, {n_params:,} parameters"
        )
        return CheckResult(path, victim, True, lines)
    n_file = max(r.n_file for r in results)
    lines.append(
        f"FAIL {victim}: {path} does not match {lay.describe(f'{len(lay.shapes)} keys, file has {n_file}')}:"
    )
    lines.extend("  " + line for r in results for line in r.problems())
    return CheckResult(path, victim, False, lines)


# ---- downloading ----------------------------------------------------------------------------------------
def _download(url: str, out: Any, timeout: float, label: str, quiet: bool) -> tuple[str, int]:
    """Stream `url` into the open binary file `out`; (sha256 hex, bytes). A ToolError on any failure."""
    from tqdm import tqdm

    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ToolError(f"unsupported URL scheme {scheme!r} in {url} (http, https or file)")
    request = urllib.request.Request(url, headers={"User-Agent": "advwm-weights/0.1"})
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=quiet) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise ToolError(f"HTTP {err.code} {err.reason} for {url}") from err
    except urllib.error.URLError as err:
        raise ToolError(f"cannot download {url}: {_one_line(err.reason)}") from err
    except (OSError, ValueError) as err:  # timeouts, resets, a bad URL
        raise ToolError(f"download of {url} failed: {type(err).__name__}: {_one_line(err)}") from err
    if total is not None and received != total:
        raise ToolError(f"truncated download from {url}: got {received} of {total} bytes")
    if received == 0:
        raise ToolError(f"empty download from {url}")
    return digest.hexdigest(), received


def _pick(names: Sequence[str], member: str, archive: str) -> str:
    """The archive member named `member`: an exact path, else the only entry with that file name."""
    wanted = member.strip("/")
    exact = [n for n in names if n.strip("/").removeprefix("./") == wanted.removeprefix("./")]
    if exact:
        return exact[0]
    by_name = [n for n in names if Path(n).name == Path(wanted).name]
    if len(by_name) == 1:
        return by_name[0]
    what = "several entries" if by_name else "no entry"
    raise ToolError(f"the {archive} has {what} named {member!r} (entries: {_listing(list(names))}); use --member")


def _extract(archive: Path, member: str, out: Any) -> str:
    """Copy `member` of a zip or tar archive into the open binary file `out`; returns the member's path.

    Only the member's bytes are read (never extracted by its own name), so archive paths cannot escape."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = [i.filename for i in zf.infolist() if not i.is_dir()]
                name = _pick(names, member, "zip archive")
                with zf.open(name) as src:
                    shutil.copyfileobj(src, out, _CHUNK)
                return name
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                files = {m.name: m for m in tf.getmembers() if m.isfile()}
                name = _pick(list(files), member, "tar archive")
                src = tf.extractfile(files[name])
                if src is None:
                    raise ToolError(f"tar member {name!r} cannot be read")
                with src:
                    shutil.copyfileobj(src, out, _CHUNK)
                return name
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise ToolError(f"corrupt archive: {type(err).__name__}: {err}") from err
    raise ToolError(f"expected a zip or tar archive holding {member!r}, got something else (an HTML page?)")


def fetch(
    name: str,
    *,
    url: str | None = None,
    dest: str | Path | None = None,
    sha256: str | None = None,
    member: str | None = None,
    arch: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    force: bool = False,
    timeout: float = 60.0,
    quiet: bool = False,
) -> list[str]:
    """Download `name`'s official file, verify it (sha256, keys/shapes) and move it into place atomically.

    Returns the lines to print; raises ToolError (one line) on any failure, leaving no file behind."""
    spec = get_spec(name)
    if url is None:
        if spec.url is None:
            raise ToolError(f"{name}: no direct download URL is known; get it manually: {spec.source}")
        url = spec.url
        member = member if member is not None else spec.url_member
        sha256 = sha256 if sha256 is not None else spec.sha256
    target = Path(dest).expanduser() if dest is not None else default_path(name, root)
    if target.is_dir():
        target = target / spec.checkpoint_file
    lines: list[str] = []
    if target.exists() and not force:
        existing = check_file(target, name, arch)
        if existing.ok:
            return [f"{name}: {target} is already present and verifies; nothing to do (--force downloads again)"]
        lines.append(f"{name}: replacing {target}, which does not verify ({existing.lines[0]})")
    expected_sha = sha256.strip().lower() if sha256 else None
    if expected_sha is not None and (len(expected_sha) != 64 or any(c not in "0123456789abcdef" for c in expected_sha)):
        raise ToolError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []

    def temp_file(suffix: str) -> Any:
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=suffix, delete=False)
        temps.append(Path(handle.name))
        return handle

    try:
        with temp_file(".download") as out:
            digest, size = _download(url, out, timeout, target.name, quiet)
        if expected_sha is not None and digest != expected_sha:
            raise ToolError(f"sha256 mismatch for {url}: expected {expected_sha}, got {digest}")
        candidate = temps[-1]
        source = url
        if member:
            with temp_file(".member") as out:
                source = f"{url} [{_extract(candidate, member, out)}]"
            candidate = temps[-1]
        verdict = check_file(candidate, name, arch)
        if not verdict.ok:
            reasons = "; ".join(line.strip() for line in verdict.lines).replace(str(candidate), "it")
            raise ToolError(f"the download does not verify: {reasons}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(candidate, 0o666 & ~umask)  # temporary files are private (0600); the result is an ordinary file
        os.replace(candidate, target)
    except KeyboardInterrupt as err:
        raise ToolError("interrupted") from err
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    sha_note = "matches the expected sha256" if expected_sha else f"sha256 {digest}"
    lines.append(f"fetched {name}: {source} -> {target} ({size:,} bytes downloaded, {sha_note})")
    lines.append(verdict.lines[-1].replace(str(candidate), str(target)))
    return lines


# ---- the commands -------------------------------------------------------------------------------------
def _arch_text(arch: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in arch.items())


def cmd_list(args: argparse.Namespace) -> int:
    root = weights_dir(args.weights_dir)
    if args.weights_dir:
        origin = "--weights-dir"
    else:
        origin = "$ADVWM_ROOT/weights" if "ADVWM_ROOT" in os.environ else "default: ./weights"
    print(f"weights dir: {root} ({origin}; paths.weights_dir in conf/paths/default.yaml)")
    for name, spec in SPECS.items():
        lay = layout(name)
        path = default_path(name, args.weights_dir)
        state = "present" if path.is_file() else "absent"
        if spec.url:
            download = spec.url + (f" (archive member {spec.url_member})" if spec.url_member else "")
        else:
            download = "none: see source"
        print(f"\n{name}")
        print(f"  file:      {spec.checkpoint_file}")
        print(f"  container: {container_text(spec)}")
        print(f"  default:   {path} [{state}]")
        print(
            f"  network:   {lay.network}, {lay.n_parameters:,} parameters, {lay.fp32_bytes / 2**20:.1f} MiB fp32 "
            f"(full size: {_arch_text(spec.default_arch)})"
        )
        print(f"  download:  {download}")
        print(f"  source:    {spec.source}")
    print(f"\nVerify a file with `{PROG} check <victim|path>`; `{PROG} fetch <victim>` downloads direct URLs.")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    targets = list(args.targets)
    skip_absent = not targets
    if skip_absent:
        targets = list(VICTIM_NAMES)
    failed = checked = 0
    for target in targets:
        as_path = Path(target).expanduser()
        if target in SPECS and not as_path.is_file():
            path, victim = default_path(target, args.weights_dir), target
            if args.victim and args.victim != target:
                print(f"error: --victim {args.victim} contradicts the victim name {target}", file=sys.stderr)
                return 2
            if not path.is_file():
                if skip_absent:
                    print(f"absent {victim}: {path}")
                    continue
                print(f"FAIL {victim}: no file at {path}. {get_spec(victim).source}")
                failed += 1
                continue
        else:
            path, victim = as_path, args.victim
        result = check_file(path, victim, args.arch)
        checked += 1
        failed += not result.ok
        print("\n".join(result.lines))
    if skip_absent and checked == 0:
        print(f"no victim's file is present under {weights_dir(args.weights_dir)}")
    return 1 if failed else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    lines = fetch(
        args.victim_name,
        url=args.url,
        dest=args.dest,
        sha256=args.sha256,
        member=args.member,
        arch=args.arch,
        root=args.weights_dir,
        force=args.force,
        timeout=args.timeout,
        quiet=args.quiet,
    )
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="List, check and fetch the official checkpoints of advwm's victims.",
        epilog="Default file of a victim: <weights-dir>/<victim>/<file>, weights-dir = ${ADVWM_ROOT:-.}/weights.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--weights-dir", help="where the victims' files live (default: ${ADVWM_ROOT:-.}/weights)")
    arch = argparse.ArgumentParser(add_help=False)
    arch.add_argument(
        "--arch", action="append", default=[], metavar="KEY=VALUE",
        help="architecture override, repeatable (YAML values; dotted keys nest); default: the full-size official one",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,check,fetch}")
    sub.add_parser("list", parents=[common], help="every victim: source, file, container, size, default path")
    check = sub.add_parser(
        "check", parents=[common, arch],
        help="check victims' files (names: default path; paths: victim guessed from the keys)",
        description="Check files against the victims' layouts. No target: every victim's file that is present.",
    )
    check.add_argument("targets", nargs="*", metavar="name|path")
    check.add_argument("--victim", choices=VICTIM_NAMES, help="the victim of the path(s) (default: guessed)")
    fetch_p = sub.add_parser(
        "fetch", parents=[common, arch], help="download, verify and install a victim's file (direct URLs only)",
        description="Download to a temporary file next to the destination, verify (sha256 if known, then keys and "
        "shapes), and move it into place. An existing file that verifies is kept unless --force.",
    )
    fetch_p.add_argument("victim_name", choices=VICTIM_NAMES, metavar="name", help=f"one of {', '.join(VICTIM_NAMES)}")
    fetch_p.add_argument("--url", help="download from here instead of the registry's URL")
    fetch_p.add_argument("--dest", help="destination file or folder (default: the victim's default path)")
    fetch_p.add_argument("--sha256", help="expected sha256 of the downloaded bytes (the archive, if any)")
    fetch_p.add_argument("--member", help="the checkpoint inside a zip/tar download (path, or file name if unique)")
    fetch_p.add_argument("--force", action="store_true", help="download even if a good file is already there")
    fetch_p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    fetch_p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.arch = parse_arch(getattr(args, "arch", None))
    except ValueError as err:
        parser.error(str(err))
    commands = {"list": cmd_list, "check": cmd_check, "fetch": cmd_fetch}
    try:
        return commands[args.command](args)
    except ToolError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... | head`: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
