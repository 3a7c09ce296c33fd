"""Fetching a victim's official file: download, verify (sha256, keys and shapes) and move into place atomically.

The download, the sha256 check and the archive extraction are pooch's (`pooch.retrieve`, `pooch.Unzip`,
`pooch.Untar`): a well-kept library that handles redirects, streaming, progress bars and hash checks. What
stays here is advwm's own policy: everything happens in a private temporary folder next to the destination,
the checkpoint is checked against the victim's layout before it replaces anything, and every failure is
one line (a ToolError) that leaves no file behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pooch

from advwm.victims.registry import get_spec
from advwm.weights.check import check_file
from advwm.weights.errors import ToolError, listing, one_line
from advwm.weights.paths import default_path

USER_AGENT = "advwm-weights/0.1"
_DOWNLOAD_NAME = "download"


def _copy_local(url: str, output_file: str, _pooch: Any) -> None:
    """A pooch downloader for `file://` URLs (pooch has none): a plain copy."""
    source = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    try:
        shutil.copyfile(source, output_file)
    except OSError as err:
        raise ToolError(f"cannot read {url}: {one_line(err)}") from err


def _downloader(url: str, timeout: float, quiet: bool) -> Any:
    """The pooch downloader for the URL's scheme (http, https, ftp, or a local file)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("http", "https"):
        return pooch.HTTPDownloader(progressbar=not quiet, timeout=timeout, headers={"User-Agent": USER_AGENT})
    if scheme == "ftp":
        return pooch.FTPDownloader(progressbar=not quiet, timeout=timeout)
    if scheme == "file":
        return _copy_local
    raise ToolError(f"unsupported URL scheme {scheme!r} in {url} (http, https, ftp or file)")


def download(url: str, folder: Path, expected_sha: str | None, timeout: float, quiet: bool) -> Path:
    """`url` into `folder` via pooch, its sha256 checked when known; a ToolError (one line) on any failure."""
    import requests

    pooch.get_logger().setLevel(logging.WARNING)  # pooch logs each download and the hash at INFO
    try:
        path = Path(pooch.retrieve(url, known_hash=f"sha256:{expected_sha}" if expected_sha else None,
                                   fname=_DOWNLOAD_NAME, path=folder, downloader=_downloader(url, timeout, quiet)))
    except requests.HTTPError as err:
        response = err.response
        status = f"{response.status_code} {response.reason}" if response is not None else one_line(err)
        raise ToolError(f"HTTP {status} for {url}") from err
    except requests.RequestException as err:  # refused, timed out, reset, truncated
        raise ToolError(f"cannot download {url}: {type(err).__name__}: {one_line(err)}") from err
    except ValueError as err:
        got = re.search(r"but got ([0-9a-f]+)", str(err))
        if "does not match the known hash" in str(err):
            raise ToolError(f"sha256 mismatch for {url}: expected {expected_sha}, got "
                            f"{got.group(1) if got else '?'}") from err
        raise ToolError(f"download of {url} failed: {one_line(err)}") from err
    except OSError as err:
        raise ToolError(f"download of {url} failed: {type(err).__name__}: {one_line(err)}") from err
    if path.stat().st_size == 0:
        raise ToolError(f"empty download from {url}")
    return path


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
    raise ToolError(f"the {archive} has {what} named {member!r} (entries: {listing(list(names))}); use --member")


def extract(archive: Path, member: str, folder: Path) -> tuple[Path, str]:
    """`member` of a zip or tar archive, extracted by pooch into `folder`; (its path, its name in the archive).

    The member is chosen from the archive's listing and extracted alone; a name that would leave `folder`
    (absolute, or with `..`) is refused, so an archive cannot write elsewhere."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = [i.filename for i in zf.infolist() if not i.is_dir()]
            kind, processor = "zip archive", pooch.Unzip
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                names = [m.name for m in tf.getmembers() if m.isfile()]
            kind, processor = "tar archive", pooch.Untar
        else:
            raise ToolError(f"expected a zip or tar archive holding {member!r}, got something else (an HTML page?)")
        name = _pick(names, member, kind)
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ToolError(f"the {kind} names its member {name!r} outside the archive; refused")
        extracted = processor(members=[name], extract_dir=str(folder))(str(archive), "download", None)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise ToolError(f"corrupt archive: {type(err).__name__}: {err}") from err
    wanted = os.path.normpath(folder / name)
    matches = [Path(p) for p in extracted if os.path.normpath(p) == wanted]
    if not matches:
        raise ToolError(f"the {kind} member {name!r} could not be extracted")
    return matches[0], name


def _valid_sha(sha256: str | None) -> str | None:
    expected = sha256.strip().lower() if sha256 else None
    if expected is not None and (len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)):
        raise ToolError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    return expected


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
    expected_sha = _valid_sha(sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # a private folder next to the destination: the final os.replace stays on one file system (atomic)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
            candidate = download(url, Path(scratch), expected_sha, timeout, quiet)
            size, digest = candidate.stat().st_size, pooch.file_hash(str(candidate), alg="sha256")
            source = url
            if member:
                candidate, inside = extract(candidate, member, Path(scratch) / "extracted")
                source = f"{url} [{inside}]"
            verdict = check_file(candidate, name, arch)
            if not verdict.ok:
                reasons = "; ".join(line.strip() for line in verdict.lines).replace(str(candidate), "it")
                raise ToolError(f"the download does not verify: {reasons}")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(candidate, 0o666 & ~umask)  # temporary files are private; the result is an ordinary file
            os.replace(candidate, target)
    except KeyboardInterrupt as err:
        raise ToolError("interrupted") from err
    sha_note = "matches the expected sha256" if expected_sha else f"sha256 {digest}"
    lines.append(f"fetched {name}: {source} -> {target} ({size:,} bytes downloaded, {sha_note})")
    lines.append(verdict.lines[-1].replace(str(candidate), str(target)))
    return lines
