"""Our victims against the reference fixtures produced by the official model code.

Parametrised over the folders found under `<fixtures>/victims/`, so a new folder or manifest variant is
picked up automatically; folders of victims not implemented yet are skipped, implemented ones never are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_network_values_close, fixtures_root, network_and_label_columns

from advwm.victims import CELEBA_ATTRIBUTES, VICTIM_NAMES, build_victim, get_spec, load_generator

ATOL = 1e-5
RTOL = 1e-4  # for unbounded outputs (|y| > 1, e.g. HiSD's ~45): fp32 noise grows with the scale
WEIGHT_FILES = ("small_state_dict.pt", "small_checkpoint.pt")
MIXUP_KEYS = ("outputs_eval_mode", "outputs_train_mode")


pytestmark = pytest.mark.usefixtures("single_thread")


def _victim_dirs() -> list[Path]:
    root = fixtures_root() / "victims"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _victim_name(folder: Path) -> str | None:
    """Fixture folder -> registered victim ('ugatit_light' -> 'ugatit' once that exists)."""
    for name in (folder.name, folder.name.split("_")[0]):
        if name in VICTIM_NAMES:
            return name
    return None


def _params(per_folder: Any) -> list[Any]:
    params = []
    for folder in _victim_dirs():
        if _victim_name(folder) is None:
            skip = pytest.mark.skip(reason=f"victim for fixture folder {folder.name!r} not implemented yet")
            params.append(pytest.param(folder, None, marks=skip, id=folder.name))
            continue
        params += [pytest.param(folder, item, id=f"{folder.name}-{item}") for item in per_folder(folder)]
    if not params:
        reason = f"no victim fixtures under {fixtures_root() / 'victims'} (set ADVWM_FIXTURES)"
        params.append(pytest.param(None, None, marks=pytest.mark.skip(reason=reason), id="no-fixtures"))
    return params


def _weight_files(folder: Path) -> list[str]:
    found = [f for f in WEIGHT_FILES if (folder / f).is_file()]
    return found or [WEIGHT_FILES[0]]  # a folder without weights must fail, not vanish


def _manifests(folder: Path) -> list[str]:
    found = sorted(p.name for p in folder.glob("full_keys*.json"))
    return found or ["full_keys.json"]


def _load_case(folder: Path) -> dict[str, Any]:
    """The case, with the `None` condition of an unconditional victim (U-GAT-IT) as our empty [B, 0] tensor."""
    path = folder / "case.pt"
    assert path.is_file(), f"{path} missing"
    case = torch.load(path, map_location="cpu", weights_only=True)
    batch = case["x"].shape[0]
    case["conditions"] = [torch.zeros(batch, 0) if c is None else c for c in case["conditions"]]
    if case["conditions"] and isinstance(case["conditions"][0], dict):
        _style_conditions(case)
    return case


def _style_conditions(case: dict[str, Any]) -> None:
    """HiSD's steps ({'type', 'tag', 'reference' | 'z'}, styles in case['styles']) -> our condition rows
    [B, style_dim + 1] (the style, then the tag), in place, with the victim options that list them in order.

    The case starts with CMUA's condition (reference-guided, tag 1), a repeat of the reference-guided tag 1
    entry after it; ours lists each condition once (the references of every tag, then the latents), so the
    repeat is dropped (after checking that it is one).
    """
    steps, batch = case["conditions"], case["x"].shape[0]
    rows = [torch.cat([s.expand(batch, -1), torch.full((batch, 1), float(c["tag"]))], dim=1)
            for c, s in zip(steps, case["styles"], strict=True)]
    cmua = [k for k, c in enumerate(steps) if c.get("cmua")]
    for k in cmua:
        twin = next(j for j, c in enumerate(steps) if j not in cmua and c["type"] == steps[k]["type"]
                    and c["tag"] == steps[k]["tag"])
        assert torch.equal(rows[k], rows[twin]) and torch.equal(case["outputs"][k], case["outputs"][twin])
    keep = [k for k in range(len(steps)) if k not in cmua]
    case["conditions"] = [rows[k] for k in keep]
    case["outputs"] = [case["outputs"][k] for k in keep]
    case["victim_options"] = {
        "mode": "both",
        "tags": sorted({c["tag"] for c in steps}),
        "reference": case["reference"],
        "latents": torch.cat([c["z"] for c in steps if c["type"] == "latent-guided"]),
    }


def _tolerance(expected: torch.Tensor) -> float:
    scale = expected.abs().max().item()
    return ATOL if scale <= 1.0 else max(ATOL, RTOL * scale)


def _case_victim_inputs(case: dict[str, Any]) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """The case's own labels, attribute names and victim options, whatever the victim calls them."""
    labels_key = next((k for k in ("c_org", "att_a") if k in case), None)
    attrs_key = next((k for k in ("selected_attrs", "attrs") if k in case), None)
    options = {k: case[k] for k in ("thres_int", "test_int") if k in case} | case.get("victim_options", {})
    if labels_key is None or attrs_key is None:  # unconditional: no labels, no attributes
        return torch.zeros(case["x"].shape[0], 0), [], options
    return case[labels_key], list(case[attrs_key]), options


def _celeba_labels(selected: torch.Tensor, attrs: list[str]) -> torch.Tensor:
    """Embed selected 0/1 labels into [B, 40] CelebA labels, other columns filled with noise."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (selected.shape[0], len(CELEBA_ATTRIBUTES)), generator=generator).float()
    for j, name in enumerate(attrs):
        labels[:, CELEBA_ATTRIBUTES.index(name)] = selected[:, j]
    return labels


def _victim(folder: Path, weights: str | None) -> tuple[Any, dict[str, Any]]:
    name = _victim_name(folder)
    assert name is not None
    case = _load_case(folder)
    _, attrs, options = _case_victim_inputs(case)
    checkpoint = folder / weights if weights else None
    if attrs:
        options["attrs"] = attrs
    victim = build_victim(
        name,
        checkpoint=checkpoint,
        arch=case["config"],
        image_size=case["x"].shape[-1],
        **options,
    )
    return victim, case


@pytest.mark.parametrize(("folder", "weights"), _params(_weight_files))
def test_outputs_match_reference(folder: Path, weights: str) -> None:
    victim, case = _victim(folder, weights)
    assert len(case["conditions"]) == victim.num_conditions
    with torch.no_grad():
        for i, (cond, expected) in enumerate(zip(case["conditions"], case["outputs"], strict=True)):
            out = victim(case["x"], cond)
            err = (out - expected).abs().max().item()
            assert err <= _tolerance(expected), f"condition {i} ({victim.condition_names[i]}): max abs error {err:.3g}"


@pytest.mark.parametrize(("folder", "weights"), _params(_weight_files))
def test_stacked_conditions_match_reference(folder: Path, weights: str) -> None:
    """One batched forward over all conditions equals the per-condition outputs (what `stackable` claims)."""
    victim, case = _victim(folder, weights)
    assert victim.stackable
    k = len(case["conditions"])
    with torch.no_grad():
        out = victim(case["x"].repeat(k, 1, 1, 1), torch.cat(case["conditions"]))
    expected = torch.cat(case["outputs"])
    err = (out - expected).abs().max().item()
    assert err <= _tolerance(expected)


@pytest.mark.parametrize(("folder", "weights"), _params(lambda folder: [WEIGHT_FILES[0]]))
def test_conditions_from_labels_match_reference(folder: Path, weights: str) -> None:
    victim, case = _victim(folder, weights)
    selected, attrs, _ = _case_victim_inputs(case)
    ours = victim.conditions(_celeba_labels(selected, attrs))
    assert len(ours) == len(case["conditions"]) == len(victim.condition_names)
    for i, (mine, ref) in enumerate(zip(ours, case["conditions"], strict=True)):
        assert mine.dtype == ref.dtype and mine.shape == ref.shape
        mine_computed, mine_exact = network_and_label_columns(victim.name, mine)
        ref_computed, ref_exact = network_and_label_columns(victim.name, ref)
        what = f"condition {i} ({victim.condition_names[i]})"
        assert torch.equal(mine_exact, ref_exact), f"{what}: {mine_exact} != {ref_exact}"
        assert_network_values_close(mine_computed, ref_computed, what)


@pytest.mark.parametrize(("folder", "weights"), _params(lambda folder: [WEIGHT_FILES[0]]))
def test_mode_mixup_is_detected(folder: Path, weights: str) -> None:
    """The wrong mode's reference outputs are far from ours, and the bare net in that mode reproduces them.

    Without mix-up outputs (no mode-dependent layers, e.g. U-GAT-IT) both modes must give the same output.
    """
    victim, case = _victim(folder, weights)
    mixup_key = next((k for k in MIXUP_KEYS if k in case), None)
    official = get_spec(victim.name).official_mode
    if mixup_key is not None:
        assert case.get("forward_mode", official) == official
    net = victim.network
    with torch.no_grad():
        ours = [victim(case["x"], cond) for cond in case["conditions"]]
        if mixup_key is not None:
            for i, out in enumerate(ours):
                assert (out - case[mixup_key][i]).abs().max().item() > 100 * ATOL
        net.train(official != "train")  # the network, deliberately in the wrong mode (the wrapper keeps it)
        try:
            for i, cond in enumerate(case["conditions"]):
                expected = case[mixup_key][i] if mixup_key is not None else ours[i]
                err = (victim(case["x"], cond) - expected).abs().max().item()
                assert err <= ATOL, f"wrong-mode output {i} does not reproduce {mixup_key or 'ours'}: {err:.3g}"
        finally:
            net.train(official == "train")


@pytest.mark.parametrize(("folder", "weights"), _params(lambda folder: [WEIGHT_FILES[0]]))
def test_wrapper_pins_official_mode_and_freezes(folder: Path, weights: str) -> None:
    victim, case = _victim(folder, weights)
    official_train = get_spec(victim.name).official_mode == "train"
    for switch in (victim.train, victim.eval, lambda: victim.train(False), victim.train):
        switch()
        assert victim.network.training is official_train
        assert all(m.training is official_train for m in victim.network.modules())
    assert not any(p.requires_grad for p in victim.parameters())
    before = {k: v.clone() for k, v in victim.network.state_dict().items()}
    x = case["x"].clone().requires_grad_(True)
    victim(x, case["conditions"][-1]).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in victim.parameters())
    after = victim.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "forward must not mutate buffers"


@pytest.mark.parametrize(("folder", "manifest"), _params(_manifests))
def test_full_size_key_manifest(folder: Path, manifest: str) -> None:
    """Full-size state_dict keys, shapes and dtypes equal the official ones, for each config variant."""
    name = _victim_name(folder)
    assert name is not None
    keys_path = folder / manifest
    info_path = folder / manifest.replace("full_keys", "full_info", 1)
    assert keys_path.is_file(), f"{keys_path} missing"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    config = info.get("config", {})
    with torch.device("meta"):  # shapes only: no 170 MB allocation, no init cost
        net = load_generator(name, **config)
    ours = [[k, [list(t.shape), str(t.dtype).removeprefix("torch.")]] for k, t in net.state_dict().items()]
    expected = [[k, v] for k, v in json.loads(keys_path.read_text()).items()]
    assert ours == expected
    if "num_parameters" in info:
        assert sum(p.numel() for p in net.parameters()) == info["num_parameters"]
    if "num_buffer_elements" in info:
        assert sum(b.numel() for b in net.buffers()) == info["num_buffer_elements"]
