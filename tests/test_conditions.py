"""Condition builders against hand-written expectations (StarGAN create_labels, AttGAN conflict rules,
STGAN attribute differences, AGGAN / U-GAT-IT conditions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advwm.victims import (
    ATTGAN_ATTRS,
    CELEBA_ATTRIBUTES,
    STARGAN_ATTRS,
    STGAN_ATTRS,
    AGGANVictim,
    AttGANVictim,
    StarGANVictim,
    STGANVictim,
    UGATITVictim,
    build_victim,
    check_attribute_conflict,
    load_generator,
)

SMALL_STARGAN = {"conv_dim": 4, "c_dim": 5, "repeat_num": 1}
SMALL_ATTGAN = {"enc_dim": 4, "enc_layers": 2, "dec_dim": 4, "dec_layers": 2, "img_size": 8}


def celeba(*faces: dict[str, int], fill: float = 1.0) -> torch.Tensor:
    """[B, 40] labels with the named columns set and every other column `fill` (must be ignored)."""
    labels = torch.full((len(faces), len(CELEBA_ATTRIBUTES)), fill)
    for b, face in enumerate(faces):
        for name, value in face.items():
            labels[b, CELEBA_ATTRIBUTES.index(name)] = value
    return labels


def bits(*rows: str) -> torch.Tensor:
    return torch.tensor([[float(ch) for ch in row] for row in rows])


def test_celeba_attribute_order() -> None:
    assert len(CELEBA_ATTRIBUTES) == 40 and len(set(CELEBA_ATTRIBUTES)) == 40
    assert CELEBA_ATTRIBUTES[:3] == ("5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive")
    assert CELEBA_ATTRIBUTES.index("Black_Hair") == 8 and CELEBA_ATTRIBUTES.index("Male") == 20
    assert CELEBA_ATTRIBUTES[-1] == "Young"


def stargan_victim(attrs: tuple[str, ...] = STARGAN_ATTRS) -> StarGANVictim:
    victim = build_victim(
        "stargan", checkpoint=None, arch={**SMALL_STARGAN, "c_dim": len(attrs)}, image_size=16, attrs=attrs
    )
    assert isinstance(victim, StarGANVictim)
    return victim


def test_stargan_conditions_hair_exclusive_others_flipped() -> None:
    victim = stargan_victim()
    assert victim.condition_names == ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
    labels = celeba(
        {"Black_Hair": 1, "Blond_Hair": 0, "Brown_Hair": 0, "Male": 1, "Young": 0, "Gray_Hair": 1},
        {"Black_Hair": 0, "Blond_Hair": 1, "Brown_Hair": 1, "Male": 0, "Young": 1, "Gray_Hair": 0},
    )
    expected = {  # rows: face A, face B; columns: Black, Blond, Brown, Male, Young
        "Black_Hair": ("10010", "10001"),
        "Blond_Hair": ("01010", "01001"),
        "Brown_Hair": ("00110", "00101"),
        "Male": ("10000", "01111"),
        "Young": ("10011", "01100"),
    }
    conditions = victim.conditions(labels)
    assert len(conditions) == 5
    for name, cond in zip(victim.condition_names, conditions, strict=True):
        assert cond.dtype == torch.float32 and cond.shape == (2, 5)
        assert torch.equal(cond, bits(*expected[name])), name


def test_stargan_custom_attrs_gray_hair_is_a_hair_colour() -> None:
    victim = stargan_victim(("Gray_Hair", "Black_Hair", "Smiling"))
    labels = celeba({"Gray_Hair": 0, "Black_Hair": 1, "Smiling": 1})
    conditions = victim.conditions(labels)
    assert torch.equal(conditions[0], bits("101"))  # Gray on, Black cleared, Smiling kept
    assert torch.equal(conditions[1], bits("011"))
    assert torch.equal(conditions[2], bits("010"))  # Smiling flipped


def test_stargan_condition_count_must_match_network() -> None:
    with pytest.raises(ValueError, match="c_dim=5"):
        StarGANVictim(load_generator("stargan", **SMALL_STARGAN), image_size=16, attrs=("Male", "Young"))


# AttGAN: columns Bald Bangs Black Blond Brown Bushy Glasses Male Mouth Mustache No_Beard Pale Young
def attgan_face(row: str) -> dict[str, int]:
    return {name: int(ch) for name, ch in zip(ATTGAN_ATTRS, row, strict=True)}


FACE_A = attgan_face("0110000100101")
FACE_B = attgan_face("1001110011010")
ATT_B_A = [  # face A after each edit, conflicts resolved
    "0110000100101",  # reconstruction
    "1010000100101",  # Bald -> 1 clears Bangs
    "0010000100101",  # Bangs -> 0: no rule fires
    "0100000100101",  # Black -> 0
    "0101000100101",  # Blond -> 1 clears Black
    "0100100100101",  # Brown -> 1 clears Black
    "0110010100101",
    "0110001100101",
    "0110000000101",
    "0110000110101",
    "0110000101001",  # Mustache -> 1 clears No_Beard
    "0110000100001",  # No_Beard -> 0
    "0110000100111",
    "0110000100100",
]
ATT_B_B = [
    "1001110011010",  # reconstruction
    "0001110011010",  # Bald -> 0: Bangs untouched
    "0101110011010",  # Bangs -> 1 clears Bald
    "1010010011010",  # Black -> 1 clears Blond and Brown
    "1000110011010",
    "1001010011010",
    "1001100011010",
    "1001111011010",
    "1001110111010",
    "1001110001010",
    "1001110010010",  # Mustache -> 0
    "1001110010110",  # No_Beard -> 1 clears Mustache
    "1001110011000",
    "1001110011011",
]


def attgan_victim(**kwargs: object) -> AttGANVictim:
    victim = build_victim("attgan", checkpoint=None, arch=SMALL_ATTGAN, image_size=8, **kwargs)
    assert isinstance(victim, AttGANVictim)
    return victim


def test_attgan_condition_names() -> None:
    victim = attgan_victim()
    assert victim.condition_names == ["reconstruction", *ATTGAN_ATTRS]
    assert len(victim.condition_names) == 14 and victim.attrs == ATTGAN_ATTRS


def test_attgan_encoding_written_out() -> None:
    conditions = attgan_victim().conditions(celeba(FACE_A, fill=0.0))
    h = 0.5
    assert torch.equal(conditions[0], torch.tensor([[-h, h, h, -h, -h, -h, -h, h, -h, -h, h, -h, h]]))
    assert torch.equal(conditions[1], torch.tensor([[1.0, -h, h, -h, -h, -h, -h, h, -h, -h, h, -h, h]]))
    assert torch.equal(conditions[2], torch.tensor([[-h, -1.0, h, -h, -h, -h, -h, h, -h, -h, h, -h, h]]))
    assert torch.equal(conditions[10], torch.tensor([[-h, h, h, -h, -h, -h, -h, h, -h, 1.0, -h, -h, h]]))


@pytest.mark.parametrize(("thres_int", "test_int"), [(0.5, 1.0), (0.4, 0.8), (0.5, 0.25)])
def test_attgan_conditions_all_edits(thres_int: float, test_int: float) -> None:
    victim = attgan_victim(thres_int=thres_int, test_int=test_int)
    conditions = victim.conditions(celeba(FACE_A, FACE_B, fill=1.0))
    assert len(conditions) == 14
    for i, cond in enumerate(conditions):
        att_b = bits(ATT_B_A[i], ATT_B_B[i])
        expected = (att_b * 2 - 1) * thres_int
        if i > 0:
            expected[:, i - 1] = torch.where(att_b[:, i - 1] > 0, test_int, -test_int)
        assert torch.allclose(cond, expected, atol=1e-7, rtol=0), f"condition {i} {victim.condition_names[i]}"


RULES_ATTRS = ["Bald", "Bangs", "Receding_Hairline", "Gray_Hair", "Black_Hair", "Straight_Hair", "Wavy_Hair"]


@pytest.mark.parametrize(
    ("edited", "before", "after"),
    [
        ("Receding_Hairline", "0110000", "0010000"),  # -> Bangs cleared
        ("Bald", "1100000", "1000000"),
        ("Bangs", "1110000", "0100000"),  # -> Bald and Receding_Hairline cleared
        ("Gray_Hair", "0001100", "0001000"),  # -> other hair colours cleared
        ("Black_Hair", "0001100", "0000100"),
        ("Straight_Hair", "0000011", "0000010"),  # -> Wavy cleared
        ("Wavy_Hair", "0000011", "0000001"),
        ("Wavy_Hair", "0000010", "0000010"),  # edited attribute is 0: nothing fires
        ("Bangs", "0100000", "0100000"),  # nothing to clear
    ],
)
def test_conflict_rules(edited: str, before: str, after: str) -> None:
    att = bits(before)
    assert torch.equal(check_attribute_conflict(att.clone(), edited, RULES_ATTRS), bits(after))


def test_conflict_rules_beards_and_absent_names() -> None:
    attrs = ["Mustache", "No_Beard", "Eyeglasses"]
    assert torch.equal(check_attribute_conflict(bits("111"), "Mustache", attrs), bits("101"))
    assert torch.equal(check_attribute_conflict(bits("111"), "No_Beard", attrs), bits("011"))
    assert torch.equal(check_attribute_conflict(bits("111"), "Eyeglasses", attrs), bits("111"))
    # Bangs absent from the list: the Bald rule has nothing to clear
    assert torch.equal(check_attribute_conflict(bits("11"), "Bald", ["Bald", "Young"]), bits("11"))


def test_attgan_custom_attrs_need_matching_network() -> None:
    attrs = ("Bangs", "Receding_Hairline", "Wavy_Hair", "Straight_Hair")
    victim = build_victim(
        "attgan", checkpoint=None, arch={**SMALL_ATTGAN, "n_attrs": 4}, image_size=8, attrs=attrs
    )
    conditions = victim.conditions(
        celeba({"Bangs": 0, "Receding_Hairline": 1, "Wavy_Hair": 1, "Straight_Hair": 0})
    )
    assert victim.condition_names == ["reconstruction", *attrs]
    assert torch.equal(conditions[1], torch.tensor([[1.0, -0.5, 0.5, -0.5]]))  # Bangs on clears Receding
    assert torch.equal(conditions[4], torch.tensor([[-0.5, 0.5, -0.5, 1.0]]))  # Straight on clears Wavy
    with pytest.raises(ValueError, match="n_attrs=13"):
        attgan_victim(attrs=attrs)


def test_labels_are_validated() -> None:
    victim = stargan_victim()
    with pytest.raises(ValueError, match=r"\[B, 40\]"):
        victim.conditions(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="0/1"):
        victim.conditions(-torch.ones(1, 40))
    with pytest.raises(ValueError, match="unknown CelebA attribute"):
        stargan_victim(("Black_Hair", "Blonde_Hair", "Brown_Hair", "Male", "Young"))
    bool_labels = celeba({"Male": 1}, fill=0.0).bool()
    assert victim.conditions(bool_labels)[0].dtype == torch.float32


def test_attgan_input_size_must_equal_img_size() -> None:
    victim = attgan_victim()
    cond = victim.conditions(celeba(FACE_A))[0]
    assert victim(torch.zeros(1, 3, 8, 8), cond).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="img_size"):
        victim(torch.zeros(1, 3, 16, 16), cond)


# ---- AGGAN: StarGAN's conditions, the wrapper returns the blended result ---------------------------------
SMALL_AGGAN = {"conv_dim": 4, "c_dim": 5, "repeat_num": 1}


def test_aggan_conditions_are_stargans_and_forward_is_the_result() -> None:
    torch.manual_seed(0)
    victim = build_victim("aggan", checkpoint=None, arch=SMALL_AGGAN, image_size=16)
    assert isinstance(victim, AGGANVictim) and victim.condition_names == list(STARGAN_ATTRS)
    labels = celeba({"Black_Hair": 0, "Blond_Hair": 1, "Brown_Hair": 0, "Male": 1, "Young": 1})
    conditions = victim.conditions(labels)
    assert torch.equal(conditions[0], bits("10011"))  # Black on clears Blond
    assert torch.equal(conditions[3], bits("01001"))  # Male flipped
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    result, attention, content = victim.network(x, conditions[0])  # official forward: a triple
    assert attention.shape == content.shape == x.shape
    assert torch.allclose(result, content * attention + x * (1 - attention))
    assert torch.equal(victim(x, conditions[0]), result)


# ---- STGAN: attribute differences c_trg - c_org ------------------------------------------------------------
SMALL_STGAN = {"conv_dim": 4, "n_layers": 3, "shortcut_layers": 1}


def signs(*rows: str) -> torch.Tensor:
    """'+' -> 1, '-' -> -1, '0' -> 0, e.g. signs("0+-") = [[0, 1, -1]]."""
    value = {"+": 1.0, "-": -1.0, "0": 0.0}
    return torch.tensor([[value[ch] for ch in row] for row in rows])


def stgan_victim(**kwargs: object) -> STGANVictim:
    victim = build_victim("stgan", checkpoint=None, arch=SMALL_STGAN, image_size=16, **kwargs)
    assert isinstance(victim, STGANVictim)
    return victim


# columns: Bald Bangs Black Blond Brown Bushy Glasses Male Mouth Mustache No_Beard Pale Young (FACE_A, FACE_B above)
STGAN_DIFFERENCES = {  # rows: face A, face B; create_labels target minus the original labels, unscaled
    "Bald": ("+000000000000", "-000000000000"),  # flipped; no AttGAN conflict rules (Bangs kept)
    "Bangs": ("0-00000000000", "0+00000000000"),
    "Black_Hair": ("0000000000000", "00+--00000000"),  # A already black-haired: nothing changes
    "Blond_Hair": ("00-+000000000", "0000-00000000"),  # Blond on clears Black (A) / Brown (B)
    "Brown_Hair": ("00-0+00000000", "000-000000000"),
    "Bushy_Eyebrows": ("00000+0000000", "00000-0000000"),
    "Eyeglasses": ("000000+000000", "000000+000000"),
    "Male": ("0000000-00000", "0000000+00000"),
    "Mouth_Slightly_Open": ("00000000+0000", "00000000-0000"),
    "Mustache": ("000000000+000", "000000000-000"),  # No_Beard untouched
    "No_Beard": ("0000000000-00", "0000000000+00"),
    "Pale_Skin": ("00000000000+0", "00000000000-0"),
    "Young": ("000000000000-", "000000000000+"),
}


def test_stgan_conditions_are_unscaled_differences() -> None:
    victim = stgan_victim()
    assert victim.attrs == STGAN_ATTRS == ATTGAN_ATTRS
    assert victim.condition_names == list(STGAN_ATTRS)
    conditions = victim.conditions(celeba(FACE_A, FACE_B, fill=1.0))
    assert len(conditions) == 13
    for name, cond in zip(victim.condition_names, conditions, strict=True):
        assert cond.dtype == torch.float32 and cond.shape == (2, 13)
        assert torch.equal(cond, signs(*STGAN_DIFFERENCES[name])), name


def test_stgan_domains_select_and_order_conditions() -> None:
    domains = ("No_Beard", "Bangs", "Eyeglasses")
    victim = stgan_victim(domains=list(domains))
    assert victim.condition_names == list(domains)
    conditions = victim.conditions(celeba(FACE_A, FACE_B, fill=0.0))
    for name, cond in zip(domains, conditions, strict=True):
        assert torch.equal(cond, signs(*STGAN_DIFFERENCES[name])), name
    with pytest.raises(ValueError, match="Smiling"):
        stgan_victim(domains=["Bangs", "Smiling"])
    with pytest.raises(ValueError, match="distinct"):
        stgan_victim(domains=["Bangs", "Bangs"])


def test_stgan_scaled_differences_with_reconstruction() -> None:
    victim = stgan_victim(domains=["Black_Hair", "Male"], thres_int=0.5, scaled=True, reconstruction=True)
    assert victim.condition_names == ["reconstruction", "Black_Hair", "Male"]
    conditions = victim.conditions(celeba(FACE_A, FACE_B))
    assert torch.equal(conditions[0], torch.zeros(2, 13))
    h = 0.5
    assert torch.equal(conditions[1][1], torch.tensor([0, 0, h, -h, -h, 0, 0, 0, 0, 0, 0, 0, 0]))
    assert torch.equal(conditions[2], torch.tensor([[0.0] * 7 + [-h] + [0.0] * 5, [0.0] * 7 + [h] + [0.0] * 5]))


def test_stgan_training_sample_semantics_match_reference(fixtures_dir: Path) -> None:
    """scaled + reconstruction reproduce the fixture's training-time samples (conditions and outputs)."""
    folder = fixtures_dir / "victims" / "stgan"
    if not folder.is_dir():
        pytest.skip(f"no STGAN fixture at {folder}")
    case = torch.load(folder / "case.pt", map_location="cpu", weights_only=True)
    victim = build_victim(
        "stgan",
        checkpoint=folder / "small_state_dict.pt",
        arch=case["config"],
        image_size=case["x"].shape[-1],
        attrs=case["attrs"],
        thres_int=case["thres_int"],
        scaled=True,
        reconstruction=True,
    )
    labels = torch.zeros(case["c_org"].shape[0], len(CELEBA_ATTRIBUTES))
    for j, name in enumerate(case["attrs"]):
        labels[:, CELEBA_ATTRIBUTES.index(name)] = case["c_org"][:, j]
    conditions = victim.conditions(labels)
    assert len(conditions) == len(case["conditions_thres"])
    with torch.no_grad():
        for mine, ref, expected in zip(conditions, case["conditions_thres"], case["outputs_thres"], strict=True):
            assert torch.equal(mine, ref)
            assert (victim(case["x"], mine) - expected).abs().max().item() <= 1e-5


def test_stgan_attr_count_must_match_network() -> None:
    with pytest.raises(ValueError, match="attr_dim=13"):
        stgan_victim(attrs=["Bangs", "Eyeglasses"])
    small = build_victim(
        "stgan", checkpoint=None, arch={**SMALL_STGAN, "attr_dim": 2}, image_size=16, attrs=["Bangs", "Eyeglasses"]
    )
    assert small.conditions(celeba({"Bangs": 1, "Eyeglasses": 0}))[1].tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="divisible by 8"):
        small(torch.zeros(1, 3, 12, 12), torch.zeros(1, 2))


# ---- U-GAT-IT: unconditional, one empty condition named after the direction -----------------------------
SMALL_UGATIT = {"ngf": 4, "n_blocks": 1, "light": True}


def test_ugatit_single_empty_condition() -> None:
    victim = build_victim("ugatit", checkpoint=None, arch=SMALL_UGATIT, image_size=16)
    assert isinstance(victim, UGATITVictim) and victim.condition_names == ["A2B"]
    conditions = victim.conditions(celeba({"Male": 1}, {"Male": 0}))
    assert len(conditions) == 1 and conditions[0].shape == (2, 0) and conditions[0].dtype == torch.float32
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = victim(x, conditions[0])
    assert out.shape == x.shape
    stacked = victim(torch.cat([x, x]), torch.cat(conditions * 2))  # conditions stack like any victim's
    assert torch.allclose(stacked, torch.cat([out, out]), atol=1e-6)
    with pytest.raises(ValueError, match="takes no condition"):
        victim(x, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="0/1"):
        victim.conditions(-torch.ones(1, 40))
    reverse = build_victim("ugatit", checkpoint=None, arch=SMALL_UGATIT, image_size=16, direction="B2A")
    assert reverse.condition_names == ["B2A"]
    with pytest.raises(ValueError, match="direction"):
        build_victim("ugatit", checkpoint=None, arch=SMALL_UGATIT, image_size=16, direction="AtoB")


def test_ugatit_full_is_tied_to_img_size() -> None:
    victim = build_victim("ugatit", checkpoint=None, arch={**SMALL_UGATIT, "light": False}, image_size=16)
    assert victim.network.img_size == 16
    cond = victim.conditions(celeba({}))[0]
    assert victim(torch.zeros(1, 3, 16, 16), cond).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="img_size"):
        victim(torch.zeros(1, 3, 32, 32), cond)
    with pytest.raises(ValueError, match="img_size=16 differs"):
        UGATITVictim(victim.network, image_size=32)
    light = build_victim("ugatit", checkpoint=None, arch=SMALL_UGATIT, image_size=16)
    assert light(torch.zeros(1, 3, 32, 32), torch.zeros(1, 0)).shape == (1, 3, 32, 32)  # light: any size
