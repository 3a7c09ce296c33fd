"""`cmua_reference_watermark` against the released CMUA-Watermark loop (../shared/fixtures/cmua_reference).

Each case was produced by running the released code unmodified on seeded networks with its restart noise
recorded. Single-threaded on the CPU the replay must agree to 1e-6 for the final watermark, for every
(batch, victim) trace entry and for every condition tensor; any case in that format passes the same
test (cases the project does not see included), because the test reads everything from the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advwm.attacks.reference import cmua_reference_watermark
from advwm.victims import Victim, build_victim

pytestmark = pytest.mark.usefixtures("single_thread")
TOLERANCE = 1e-6


def reference_cases(root: Path) -> list[Path]:
    folder = root / "cmua_reference"
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


def _container(name: str, state_dict: dict) -> dict:
    """Wrap a bare state_dict the way the official checkpoint file holds it."""
    if name == "attgan":
        return {"G": state_dict}
    if name == "hisd":
        return {"gen": state_dict, "gen_test": state_dict}
    return state_dict


def victims_of(case: dict, folder: Path) -> list[Victim]:
    """advwm victims built from the case's official state_dicts through the official checkpoint files."""
    config = case["config"]
    victims = []
    for name in config["victims"]:
        path = folder / f"{name}.pt"
        torch.save(_container(name, case["state_dicts"][name]), path)
        options: dict = {}
        if name in ("stargan", "aggan", "attgan"):
            options["attrs"] = config["attrs"][name]
        if name == "attgan":
            options.update(config["attgan"])
        if name == "hisd":
            options.update(mode="reference", tags=[config["hisd"]["tag"]], reference=case["hisd_reference"])
        victims.append(build_victim(name, checkpoint=path, arch=dict(config["arch"][name]),
                                    image_size=config["image_size"], **options))
    return victims


def batches_of(case: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels40) in loader order (shuffle=False, drop_last=False: the last batch may be smaller)."""
    out, start = [], 0
    for size in case["config"]["batch_sizes"]:
        out.append((case["images"][start:start + size], case["labels40"][start:start + size]))
        start += size
    return out


def load_case(path: Path) -> dict:
    case = torch.load(path, weights_only=True)
    assert case["format"] == "cmua_reference/v1"
    return case


@pytest.fixture(scope="module")
def cases(fixtures_dir: Path) -> list[Path]:
    found = reference_cases(fixtures_dir)
    if not found:
        pytest.skip(f"no cmua_reference cases under {fixtures_dir}")
    return found


def test_the_shared_cases_are_there(cases: list[Path]) -> None:
    assert {p.stem for p in cases} >= {"stargan_aggan", "all_four"}


def test_advwm_builds_the_conditions_the_released_code_received(cases: list[Path], tmp_path: Path) -> None:
    for path in cases:
        case = load_case(path)
        victims = victims_of(case, tmp_path)
        for victim in victims:
            for batch_number, (_, labels) in enumerate(batches_of(case)):
                ours = victim.conditions(labels)
                theirs = case["conditions"][victim.name][batch_number]
                assert len(ours) == len(theirs), (path.stem, victim.name)
                for mine, official in zip(ours, theirs, strict=True):
                    if victim.name == "hisd":  # advwm's row is [style, tag]: compare the style columns
                        mine = mine[:, : official.shape[1]]
                    assert torch.equal(mine, official.expand_as(mine)), (path.stem, victim.name, batch_number)


def test_every_case_replays_exactly(cases: list[Path], tmp_path: Path) -> None:
    for path in cases:
        case = load_case(path)
        config = case["config"]
        watermark, trace = cmua_reference_watermark(
            victims_of(case, tmp_path), batches_of(case), factors=config["factors"], eps=config["eps"],
            step_size=config["step_size"], iterations=config["iterations"], noise=iter(case["noise"]),
            alpha=config["momentum"])
        assert len(trace) == len(case["trace"]), path.stem
        for ours, official in zip(trace, case["trace"], strict=True):
            assert (ours["batch"], ours["victim"]) == (official["batch"], official["victim"]), path.stem
            difference = float((ours["up"] - official["up"]).abs().max())
            where = (official["batch"], official["victim"])
            assert difference <= TOLERANCE, f"{path.stem}: first divergence at {where}: {difference:.3g}"
        assert float((watermark - case["expected"]).abs().max()) <= TOLERANCE, path.stem


def test_the_noise_is_consumed_exactly_and_shapes_are_checked(cases: list[Path], tmp_path: Path) -> None:
    case = load_case(next(p for p in cases if p.stem == "stargan_aggan"))
    config = case["config"]
    victims = victims_of(case, tmp_path)
    arguments = dict(factors=config["factors"], eps=config["eps"], step_size=config["step_size"],
                     iterations=config["iterations"], alpha=config["momentum"])
    with pytest.raises(ValueError, match="ran out"):
        cmua_reference_watermark(victims, batches_of(case), noise=iter(case["noise"][:-1]), **arguments)
    wrong = [n[:, :, :-1] for n in case["noise"]]
    with pytest.raises(ValueError, match="shape"):
        cmua_reference_watermark(victims, batches_of(case), noise=iter(wrong), **arguments)
