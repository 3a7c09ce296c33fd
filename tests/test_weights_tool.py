"""`python -m advwm.weights`: list, check and fetch, driven through `main(argv)` (no real internet anywhere).

Files are small networks built with `load_generator(name, **small_arch)`; `check` compares with the full-size
layout unless `--arch` says otherwise, so the tests pass the small arch. `fetch` talks to a local HTTP server.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shlex
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

from advwm.victims import VICTIM_NAMES, get_spec, load_generator
from advwm.weights import main

SMALL_STARGAN = {"conv_dim": 8, "repeat_num": 2}
SMALL_ATTGAN = {"enc_dim": 8, "enc_layers": 4, "dec_dim": 8, "dec_layers": 4, "img_size": 32}


def _arch_args(arch: dict[str, object]) -> list[str]:
    return [arg for key, value in arch.items() for arg in ("--arch", f"{key}={value}")]


STARGAN_ARGS = _arch_args(SMALL_STARGAN)
ATTGAN_ARGS = _arch_args(SMALL_ATTGAN)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _no_advwm_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADVWM_ROOT", raising=False)


def _stargan_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return load_generator("stargan", **SMALL_STARGAN)


def _save_stargan(path: Path) -> torch.nn.Module:
    net = _stargan_net()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


def _save_attgan(path: Path) -> None:
    torch.manual_seed(0)
    net = load_generator("attgan", **SMALL_ATTGAN)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"G": net.state_dict()}, path)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---- list ---------------------------------------------------------------------------------------------
def test_list_names_every_victim_file_and_default_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "w"
    present = root / "stargan" / get_spec("stargan").checkpoint_file
    present.parent.mkdir(parents=True)
    present.write_bytes(b"placeholder")
    code, out, _ = _run(capsys, "list", "--weights-dir", str(root))
    assert code == 0
    for name in VICTIM_NAMES:
        spec = get_spec(name)
        path = root / name / spec.checkpoint_file
        assert f"\n{name}\n" in out
        assert spec.checkpoint_file in out
        assert spec.source in out
        (line,) = [ln for ln in out.splitlines() if str(path) in ln]
        assert line.endswith("[present]" if name == "stargan" else "[absent]"), line
    assert "8,430,528 parameters" in out  # the official StarGAN generator's count


def test_list_as_a_module_uses_advwm_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    present = root / "weights" / "attgan" / get_spec("attgan").checkpoint_file
    present.parent.mkdir(parents=True)
    present.write_bytes(b"placeholder")
    env = {**os.environ, "ADVWM_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "advwm.weights", "list"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{present} [present]" in done.stdout
    assert f"{root / 'weights' / 'stargan' / '200000-G.ckpt'} [absent]" in done.stdout
    assert all(f"\n{name}\n" in done.stdout for name in VICTIM_NAMES)


# ---- check --------------------------------------------------------------------------------------------
def test_check_victim_name_at_default_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "w"
    net = _save_stargan(root / "stargan" / "200000-G.ckpt")
    code, out, _ = _run(capsys, "check", "stargan", "--weights-dir", str(root), *STARGAN_ARGS)
    assert code == 0, out
    assert out.startswith("OK stargan:")
    assert f"{_n_params(net):,} parameters" in out
    # the same file against the full-size layout (no --arch): every weight is mis-shaped
    code, out, _ = _run(capsys, "check", "stargan", "--weights-dir", str(root))
    assert code == 1
    assert "FAIL stargan" in out and "mis-shaped keys" in out and "full-size" in out
    # no target: every present file is checked, absent ones are only listed
    code, out, _ = _run(capsys, "check", "--weights-dir", str(root), *STARGAN_ARGS)
    assert code == 0, out
    assert "OK stargan" in out and "absent attgan" in out
    # an explicitly named victim without a file is a failure that says where to get it
    code, out, _ = _run(capsys, "check", "hisd", "--weights-dir", str(root))
    assert code == 1 and "no file at" in out and get_spec("hisd").source in out


def test_the_catalog_that_list_reads_without_torch_equals_the_networks_built_on_meta() -> None:
    from advwm.weights.catalog import NETWORKS, VICTIMS
    from advwm.weights.cli import arch_text
    from advwm.weights.layout import layout

    assert VICTIMS == VICTIM_NAMES
    for name in VICTIM_NAMES:
        built = layout(name)  # the registry's default arch on the meta device
        recorded = NETWORKS[name]
        assert (recorded.network, recorded.n_parameters, recorded.fp32_bytes) == (
            built.network, built.n_parameters, built.fp32_bytes), name
        assert recorded.arch_text == arch_text(get_spec(name).default_arch), name
        brute = load_generator(name) if name == "stargan" else None  # one real allocation, counted by hand
        if brute is not None:
            assert recorded.n_parameters == sum(p.numel() for p in brute.parameters())


def test_check_fails_a_file_whose_weights_are_not_finite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "200000-G.ckpt"
    net = _save_stargan(path)
    state = net.state_dict()
    state["main.0.weight"] = torch.full_like(state["main.0.weight"], float("nan"))
    state["main.1.weight"][0] = float("inf")
    torch.save(state, path)
    code, out, _ = _run(capsys, "check", str(path), "--victim", "stargan", *STARGAN_ARGS)
    assert code == 1, out
    assert out.startswith("FAIL stargan")
    n_first = state["main.0.weight"].numel()
    assert (f"2 keys hold values that are not finite (NaN or inf): main.0.weight ({n_first} of {n_first}), "
            f"main.1.weight (1 of {state['main.1.weight'].numel()})") in out
    # every weight NaN: still recognised as StarGAN's layout (keys and shapes), and still refused
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, path)
    code, out, _ = _run(capsys, "check", str(path), *STARGAN_ARGS)
    assert code == 1 and "best match stargan" in out and "FAIL stargan" in out and "not finite" in out


def test_check_path_guesses_the_victim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stargan_file = tmp_path / "some_generator.pt"
    _save_stargan(stargan_file)
    code, out, _ = _run(capsys, "check", str(stargan_file), *STARGAN_ARGS)
    assert code == 0, out
    assert "best match stargan" in out and "OK stargan" in out
    # pre-0.4.1 files lack num_batches_tracked; the runtime loader tolerates that, so does check
    state = {k: v for k, v in torch.load(stargan_file, weights_only=True).items() if "num_batches_tracked" not in k}
    torch.save(state, stargan_file)
    code, out, _ = _run(capsys, "check", str(stargan_file), "--victim", "stargan", *STARGAN_ARGS)
    assert code == 0, out
    attgan_file = tmp_path / "weights.199.pth"
    _save_attgan(attgan_file)
    code, out, _ = _run(capsys, "check", str(attgan_file), *ATTGAN_ARGS)
    assert code == 0, out
    assert "best match attgan" in out and "OK attgan" in out and "['G']" in out


def test_check_wrong_victim_names_missing_and_unexpected_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    attgan_file = tmp_path / "attgan.pth"
    _save_attgan(attgan_file)
    code, out, _ = _run(capsys, "check", str(attgan_file), "--victim", "stargan", *STARGAN_ARGS)
    assert code == 1
    assert "FAIL stargan" in out
    assert "a state_dict under 'G'; stargan expects bare state_dict" in out
    assert "missing keys: main.0.weight" in out
    assert "unexpected keys: enc_layers.0" in out
    # the other way round: a bare StarGAN state_dict checked as AttGAN
    stargan_file = tmp_path / "stargan.ckpt"
    _save_stargan(stargan_file)
    code, out, _ = _run(capsys, "check", str(stargan_file), "--victim", "attgan", *ATTGAN_ARGS)
    assert code == 1
    assert "FAIL attgan" in out and "missing keys: enc_layers.0" in out and "unexpected keys: main.0.weight" in out


def test_check_truncated_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "200000-G.ckpt"
    _save_stargan(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, out, _ = _run(capsys, "check", str(path), "--victim", "stargan", *STARGAN_ARGS)
    assert code == 1
    assert out.count("\n") == 1 and out.startswith("FAIL stargan"), out
    assert "truncated" in out


class _RunsCode:
    """Unpickling this calls os.system(command): what weights_only=True must refuse."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def test_check_refuses_a_code_executing_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"main.0.weight": _RunsCode(f"touch {shlex.quote(str(marker))}")}, path)
    assert not marker.exists()
    for victim_args in (["--victim", "stargan"], []):
        code, out, _ = _run(capsys, "check", str(path), *victim_args)
        assert code == 1
        assert out.count("\n") == 1 and "refused by torch.load(weights_only=True)" in out, out
    assert not marker.exists()


# ---- fetch --------------------------------------------------------------------------------------------
class _Server:
    """A local HTTP server over a folder, counting requests."""

    def __init__(self, folder: Path) -> None:
        self.requests = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def handle_one_request(self) -> None:
                outer.requests += 1
                super().handle_one_request()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (stdlib signature)
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
        self.httpd.timeout = 1800
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    folder = tmp_path / "served"
    folder.mkdir()
    server = _Server(folder)
    server.thread.start()
    try:
        yield server, folder
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=1800)
    assert server.requests <= 10


def _fetch(capsys: pytest.CaptureFixture[str], url: str, dest: Path, *extra: str) -> tuple[int, str, str]:
    return _run(capsys, "fetch", "stargan", "--url", url, "--dest", str(dest), "--timeout", "1800", *STARGAN_ARGS,
                *extra)


def test_fetch_downloads_verifies_and_installs(
    tmp_path: Path, served: tuple[_Server, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, folder = served
    net = _save_stargan(folder / "G.ckpt")
    sha = hashlib.sha256((folder / "G.ckpt").read_bytes()).hexdigest()
    dest = tmp_path / "weights" / "stargan" / "200000-G.ckpt"
    code, out, err = _fetch(capsys, server.url("G.ckpt"), dest, "--sha256", sha.upper())
    assert code == 0, err
    assert dest.is_file() and sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    assert "fetched stargan" in out and "OK stargan" in out
    loaded = load_generator("stargan", dest, **SMALL_STARGAN)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # a good file is kept: no second download without --force
    before = server.requests
    code, out, _ = _fetch(capsys, server.url("G.ckpt"), dest, "--quiet")
    assert code == 0 and "already present" in out and server.requests == before
    code, out, _ = _fetch(capsys, server.url("G.ckpt"), dest, "--quiet", "--force")
    assert code == 0 and "fetched stargan" in out and f"sha256 {sha}" in out and server.requests == before + 1


def test_fetch_wrong_sha256_leaves_nothing(
    tmp_path: Path, served: tuple[_Server, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, folder = served
    _save_stargan(folder / "G.ckpt")
    dest = tmp_path / "weights" / "stargan" / "200000-G.ckpt"
    code, out, err = _fetch(capsys, server.url("G.ckpt"), dest, "--quiet", "--sha256", "0" * 64)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "sha256 mismatch" in err
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_fetch_http_404_is_one_line(
    tmp_path: Path, served: tuple[_Server, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = served
    dest = tmp_path / "weights" / "stargan" / "200000-G.ckpt"
    code, _, err = _fetch(capsys, server.url("missing.ckpt"), dest, "--quiet")
    assert code == 1
    assert err.count("\n") == 1 and "HTTP 404" in err
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_fetch_refuses_a_file_of_another_victim(
    tmp_path: Path, served: tuple[_Server, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, folder = served
    _save_attgan(folder / "weights.199.pth")
    dest = tmp_path / "out" / "200000-G.ckpt"
    code, _, err = _fetch(capsys, server.url("weights.199.pth"), dest, "--quiet")
    assert code == 1
    assert err.count("\n") == 1 and "does not verify" in err and "missing keys" in err
    assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_fetch_extracts_the_member_of_an_archive(
    tmp_path: Path, served: tuple[_Server, Path], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    server, folder = served
    buffer = io.BytesIO()
    torch.save(_stargan_net().state_dict(), buffer)
    payload = buffer.getvalue()
    archive = folder / f"celeba-256x256-5attrs.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("200000-D.ckpt", b"not the generator")
            zf.writestr("200000-G.ckpt", payload)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for name, data in (("200000-D.ckpt", b"x"), ("200000-G.ckpt", payload)):
                info = tarfile.TarInfo(f"celeba_256_pretrained/{name}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    dest_dir = tmp_path / "weights" / "stargan"
    dest_dir.mkdir(parents=True)
    code, out, err = _fetch(capsys, server.url(archive.name), dest_dir, "--quiet", "--member", "200000-G.ckpt")
    assert code == 0, err
    assert "OK stargan" in out
    assert sorted(p.name for p in dest_dir.iterdir()) == ["200000-G.ckpt"]
    assert (dest_dir / "200000-G.ckpt").read_bytes() == payload
    # a member that is not there: one line naming the entries, nothing left behind
    other = tmp_path / "other" / "G.ckpt"
    code, _, err = _fetch(capsys, server.url(archive.name), other, "--quiet", "--member", "X.ckpt")
    assert code == 1 and err.count("\n") == 1 and "no entry named 'X.ckpt'" in err
    assert list((tmp_path / "other").iterdir()) == []


def test_fetch_without_a_direct_url_prints_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = get_spec("stgan")
    assert spec.url is None
    code, out, err = _run(capsys, "fetch", "stgan", "--weights-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "no direct download URL" in err and spec.source in err
    assert list(tmp_path.iterdir()) == []
