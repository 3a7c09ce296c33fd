"""Checkpoint loading: container unwrapping, prefix stripping, and one-line refusals of everything else."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import fixtures_root

from advwm.victims import (
    OFFICIAL_SOURCES,
    VICTIM_NAMES,
    CheckpointError,
    CheckpointNotFoundError,
    build_victim,
    load_checkpoint_into,
    load_generator,
)

SMALL_STARGAN = {"conv_dim": 8, "c_dim": 5, "repeat_num": 2}
SMALL_ATTGAN = {
    "enc_dim": 8,
    "enc_layers": 4,
    "dec_dim": 8,
    "dec_layers": 4,
    "n_attrs": 13,
    "shortcut_layers": 1,
    "inject_layers": 0,
    "img_size": 32,
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _perturbed_stargan() -> torch.nn.Module:
    torch.manual_seed(1)
    net = load_generator("stargan", **SMALL_STARGAN)
    with torch.no_grad():
        for buf in net.state_dict().values():
            buf.add_(1) if buf.is_floating_point() else buf.fill_(7)
    return net


def _stargan_file(tmp_path: Path) -> Path:
    """The reference fixture when present, else an equivalent small StarGAN state_dict written here."""
    fixture = fixtures_root() / "victims" / "stargan" / "small_state_dict.pt"
    if fixture.is_file():
        return fixture
    path = tmp_path / "stargan_small.pt"
    torch.save(_perturbed_stargan().state_dict(), path)
    return path


def _assert_one_line(err: BaseException, *needles: str) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def test_wrong_victim_names_victim_file_and_keys(tmp_path: Path) -> None:
    path = _stargan_file(tmp_path)
    model = load_generator("attgan", **SMALL_ATTGAN)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_into("attgan", model, path, ("G",))
    msg = _assert_one_line(info.value, "attgan", str(path), "missing keys", "unexpected keys")
    assert "enc_layers.0.layers.0.weight" in msg and "main.0.weight" in msg
    assert "more)" in msg  # long lists are cut to a few keys plus a count
    assert f"file has {len(torch.load(path, weights_only=True))}" in msg
    assert len(msg) < 1500


def test_misshaped_keys_are_reported(tmp_path: Path) -> None:
    path = _stargan_file(tmp_path)
    model = load_generator("stargan", conv_dim=16, c_dim=5, repeat_num=2)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_into("stargan", model, path)
    _assert_one_line(
        info.value, "stargan", str(path), "mis-shaped keys", "main.0.weight [8, 8, 7, 7] vs model"
    )


def test_truncated_file_is_one_line_error(tmp_path: Path) -> None:
    data = _stargan_file(tmp_path).read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_generator("stargan", bad, **SMALL_STARGAN)
    _assert_one_line(info.value, "stargan", str(bad), "cannot load checkpoint")


def test_garbage_file_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_text("<html>404 Not Found</html>\n" * 10)
    with pytest.raises(CheckpointError) as info:
        load_generator("attgan", bad, **SMALL_ATTGAN)
    _assert_one_line(info.value, "attgan", str(bad))


class _Exploit:
    """Unpickling this would run a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump", "torch.save-in-container"])
def test_code_executing_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(_Exploit(marker), path)
    elif writer == "pickle.dump":
        with path.open("wb") as fh:
            pickle.dump(_Exploit(marker), fh)
    else:
        torch.save({"G": {"enc_layers.0.layers.0.weight": _Exploit(marker)}}, path)
    with pytest.raises(CheckpointError) as info:
        load_generator("attgan", path, **SMALL_ATTGAN)
    _assert_one_line(info.value, "attgan", str(path))
    assert "refused" in str(info.value) or "cannot load" in str(info.value)
    assert not marker.exists(), "the pickled command ran"


def test_module_prefix_and_container_are_unwrapped(tmp_path: Path) -> None:
    source = _perturbed_stargan()
    wrapped = {
        "state_dict": OrderedDict(("module." + k, v) for k, v in source.state_dict().items()),
        "epoch": 3,
    }
    path = tmp_path / "dp.pth"
    torch.save(wrapped, path)
    target = load_generator("stargan", **SMALL_STARGAN)
    load_checkpoint_into("stargan", target, path, ("gen_test", "state_dict"))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_bare_prefixed_state_dict(tmp_path: Path) -> None:
    source = _perturbed_stargan()
    path = tmp_path / "bare_dp.ckpt"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, path)
    target = load_generator("stargan", path, **SMALL_STARGAN)
    assert torch.equal(target.state_dict()["main.0.weight"], source.state_dict()["main.0.weight"])


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path) -> None:
    source = _perturbed_stargan()
    old = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(source.state_dict())
    path = tmp_path / "200000-G.ckpt"
    torch.save(old, path)
    target = load_generator("stargan", path, **SMALL_STARGAN)
    for key, value in target.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert value.item() == 0  # kept from the fresh model
        else:
            assert torch.equal(value, source.state_dict()[key]), key


def test_other_missing_keys_are_not_tolerated(tmp_path: Path) -> None:
    state = _perturbed_stargan().state_dict()
    del state["main.1.running_var"]
    path = tmp_path / "partial.ckpt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_generator("stargan", path, **SMALL_STARGAN)
    _assert_one_line(info.value, "1 missing keys (main.1.running_var)")


def test_attgan_official_container(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = load_generator("attgan", **SMALL_ATTGAN)
    path = tmp_path / "weights.199.pth"
    torch.save({"G": source.state_dict(), "D": {"x": torch.zeros(1)}}, path)
    target = load_generator("attgan", path, **SMALL_ATTGAN)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    assert not target.training and not any(p.requires_grad for p in target.parameters())


def test_unrecognised_container_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"generator": _perturbed_stargan().state_dict(), "step": 5}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_into("stargan", load_generator("stargan", **SMALL_STARGAN), path, ("G",))
    _assert_one_line(info.value, "stargan", str(path), "top-level keys", "generator")

    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(CheckpointError):
        load_generator("stargan", listing, **SMALL_STARGAN)


@pytest.mark.parametrize("name", VICTIM_NAMES)
def test_missing_file_says_where_to_get_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(CheckpointNotFoundError) as info:
        build_victim(name, checkpoint=path, arch={}, image_size=256)
    assert isinstance(info.value, FileNotFoundError)
    _assert_one_line(info.value, name, str(path), OFFICIAL_SOURCES[name])


def test_missing_file_with_explicit_hint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="download it from X"):
        load_checkpoint_into(
            "stargan", torch.nn.Linear(1, 1), tmp_path / "a.pt", source_hint="download it from X"
        )


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint_into("stargan", torch.nn.Linear(1, 1), tmp_path)


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="known victims.*stargan.*attgan"):
        load_generator("stylegan")
    with pytest.raises(TypeError, match="conv_dimm"):
        load_generator("stargan", conv_dimm=8)
    with pytest.raises(TypeError, match="n_attr"):
        build_victim("attgan", checkpoint=None, arch={"n_attr": 13}, image_size=256)


SMALL_STGAN = {"conv_dim": 4, "n_layers": 3, "shortcut_layers": 1}
SMALL_UGATIT = {"ngf": 4, "n_blocks": 1, "img_size": 16, "light": True}


def _perturbed(name: str, seed: int, **arch: object) -> torch.nn.Module:
    """A small generator whose every float tensor differs from a fresh one (so a silent non-load shows)."""
    torch.manual_seed(seed)
    net = load_generator(name, **arch)
    with torch.no_grad():
        for value in net.state_dict().values():
            value.add_(0.1 * seed) if value.is_floating_point() else value.fill_(7)
    return net


def _same_state(model: torch.nn.Module, source: torch.nn.Module) -> bool:
    expected = source.state_dict()
    return all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_stgan_dataparallel_checkpoint_loads(tmp_path: Path) -> None:
    """`G_<iter>.pth.tar` of a multi-GPU run: {'state_dict': 'module.'-prefixed, 'optimizer': ...}."""
    source = _perturbed("stgan", 1, **SMALL_STGAN)
    path = tmp_path / "G_200000.pth.tar"
    state = OrderedDict(("module." + k, v) for k, v in source.state_dict().items())
    torch.save({"state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}}, path)
    victim = build_victim("stgan", checkpoint=path, arch=SMALL_STGAN, image_size=16)
    assert _same_state(victim.network, source)
    assert not victim.network.training
    source.eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    cond = victim.conditions(torch.randint(0, 2, (2, 40)).float())[0]
    with torch.no_grad():
        assert torch.equal(victim(x, cond), source(x, cond))


def test_ugatit_file_without_its_generator_is_refused(tmp_path: Path) -> None:
    b2a = _perturbed("ugatit", 2, **SMALL_UGATIT)
    path = tmp_path / "selfie2anime_params_0001000.pt"
    torch.save({"genB2A": b2a.state_dict(), "disGA": {"conv.weight_orig": torch.zeros(1, 2)}}, path)
    with pytest.raises(CheckpointError) as info:
        build_victim("ugatit", checkpoint=path, arch=SMALL_UGATIT, image_size=16)
    _assert_one_line(info.value, "ugatit", str(path), "genA2B", "genB2A")
    reverse = build_victim("ugatit", checkpoint=path, arch=SMALL_UGATIT, image_size=16, direction="B2A")
    assert _same_state(reverse.network, b2a)


def test_ugatit_official_params_file_picks_the_direction(tmp_path: Path) -> None:
    a2b, b2a = _perturbed("ugatit", 3, **SMALL_UGATIT), _perturbed("ugatit", 4, **SMALL_UGATIT)
    path = tmp_path / "selfie2anime_params_latest.pt"
    discriminator = {"model.1.weight_orig": torch.ones(2, 3), "model.1.weight_u": torch.ones(2)}
    torch.save(
        {"genA2B": a2b.state_dict(), "genB2A": b2a.state_dict(), "disGA": discriminator, "disLB": discriminator},
        path,
    )
    assert _same_state(build_victim("ugatit", checkpoint=path, arch=SMALL_UGATIT, image_size=16).network, a2b)
    b2a_victim = build_victim("ugatit", checkpoint=path, arch=SMALL_UGATIT, image_size=16, direction="B2A")
    assert _same_state(b2a_victim.network, b2a) and b2a_victim.condition_names == ["B2A"]
    assert _same_state(load_generator("ugatit", path, container_keys=("genB2A",), **SMALL_UGATIT), b2a)
