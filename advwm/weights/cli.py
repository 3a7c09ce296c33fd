"""`python -m advwm.weights list|check|fetch`: the command line.

`list` and `--help` answer from `advwm.weights.catalog` without loading torch; `check` and `fetch` import what
needs it (the networks' layouts, the safe loader) when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advwm.weights.catalog import FILES, NETWORKS, VICTIMS, official_file
from advwm.weights.errors import ToolError, one_line
from advwm.weights.paths import default_path, weights_dir

PROG = "python -m advwm.weights"


def arch_text(arch: Mapping[str, Any]) -> str:
    """`conv_dim=64, c_dim=5`: an architecture as `list` shows it (and `catalog.NETWORKS` records it)."""
    return ", ".join(f"{k}={v}" for k, v in arch.items())


def cmd_list(args: argparse.Namespace) -> int:
    root = weights_dir(args.weights_dir)
    if args.weights_dir:
        origin = "--weights-dir"
    else:
        origin = "$ADVWM_ROOT/weights" if "ADVWM_ROOT" in os.environ else "default: <project root>/weights"
    print(f"weights dir: {root} ({origin}; paths.weights_dir in conf/paths/default.yaml)")
    for name, entry in FILES.items():
        network = NETWORKS[name]
        path = default_path(name, args.weights_dir)
        state = "present" if path.is_file() else "absent"
        if entry.url:
            download = entry.url + (f" (archive member {entry.url_member})" if entry.url_member else "")
        else:
            download = "none: see source"
        print(f"\n{name}")
        print(f"  file:      {entry.checkpoint_file}")
        print(f"  container: {entry.container}")
        print(f"  default:   {path} [{state}]")
        print(
            f"  network:   {network.network}, {network.n_parameters:,} parameters, "
            f"{network.fp32_bytes / 2**20:.1f} MiB fp32 (full size: {network.arch_text})"
        )
        print(f"  download:  {download}")
        print(f"  source:    {entry.source}")
    print(f"\nVerify a file with `{PROG} check <victim|path>`; `{PROG} fetch <victim>` downloads direct URLs.")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from advwm.weights.check import check_file  # torch: only when checking

    targets = list(args.targets)
    skip_absent = not targets
    if skip_absent:
        targets = list(VICTIMS)
    failed = checked = 0
    for target in targets:
        as_path = Path(target).expanduser()
        if target in FILES and not as_path.is_file():
            path, victim = default_path(target, args.weights_dir), target
            if args.victim and args.victim != target:
                print(f"error: --victim {args.victim} contradicts the victim name {target}", file=sys.stderr)
                return 2
            if not path.is_file():
                if skip_absent:
                    print(f"absent {victim}: {path}")
                    continue
                print(f"FAIL {victim}: no file at {path}. {official_file(victim).source}")
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
    from advwm.weights.fetch import fetch  # torch: the download is checked against the network's layout

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
        epilog="Default file of a victim: <weights-dir>/<victim>/<file>, weights-dir = <project root>/weights "
        "(root: $ADVWM_ROOT, else the advwm checkout).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--weights-dir", help="where the victims' files live (default: <project root>/weights)")
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
    check.add_argument("--victim", choices=VICTIMS, help="the victim of the path(s) (default: guessed)")
    fetch_p = sub.add_parser(
        "fetch", parents=[common, arch], help="download, verify and install a victim's file (direct URLs only)",
        description="Download to a temporary file next to the destination, verify (sha256 if known, then keys and "
        "shapes), and move it into place. An existing file that verifies is kept unless --force.",
    )
    fetch_p.add_argument("victim_name", choices=VICTIMS, metavar="name", help=f"one of {', '.join(VICTIMS)}")
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
    if getattr(args, "arch", None) is not None:  # check and fetch (they load torch anyway)
        from advwm.weights.layout import parse_arch

        try:
            args.arch = parse_arch(args.arch)
        except ValueError as err:
            parser.error(str(err))
    commands = {"list": cmd_list, "check": cmd_check, "fetch": cmd_fetch}
    try:
        return commands[args.command](args)
    except ToolError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
