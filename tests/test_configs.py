"""Every config file composes, says what it is for, and builds the objects it names."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from advwm.attacks.aggregators import make_aggregator
from advwm.attacks.domains import make_domains
from advwm.attacks.regularizers import make_regularizer
from advwm.attacks.steps import BASE_ATTACKS

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["attack", "aggregator", "domains", "regularizer", "eot", "scope", "data", "trainer", "logger", "experiment"]
CHOICES = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=False)


@pytest.mark.parametrize(("group", "choice"), CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_choice_composes_with_both_victims(group: str, choice: str) -> None:
    overrides = [f"{group}={choice}"]
    if group != "experiment":
        overrides.insert(0, "+victims=[stargan,attgan]")
    cfg = compose_with(*overrides)
    if group == "experiment":
        assert {"stargan", "attgan"} <= set(cfg.victims)
    else:
        assert set(cfg.victims) == {"stargan", "attgan"}
    assert cfg.eps == 0.05 and cfg.image_size == 256


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_every_config_file_starts_with_a_purpose_comment_and_an_example(path: Path) -> None:
    lines = path.read_text().splitlines()
    header = [line for line in lines[:4] if line.startswith("#") and not line.startswith("# @package")]
    assert header, f"{path} has no leading comment"
    assert any("Example:" in line for line in lines[:5]), f"{path} has no example command in its header"


@pytest.mark.parametrize("choice", [p.stem for p in sorted((CONF / "aggregator").glob("*.yaml"))])
def test_aggregator_configs_build(choice: str) -> None:
    cfg = dict(compose_with(f"aggregator={choice}").aggregator)
    assert make_aggregator(cfg.pop("name"), **cfg) is not None


@pytest.mark.parametrize("choice", [p.stem for p in sorted((CONF / "domains").glob("*.yaml"))])
def test_domain_configs_build(choice: str) -> None:
    cfg = dict(compose_with(f"domains={choice}").domains)
    assert make_domains(cfg.pop("name"), **cfg).name == choice


@pytest.mark.parametrize("choice", [p.stem for p in sorted((CONF / "regularizer").glob("*.yaml"))])
def test_regularizer_configs_build(choice: str) -> None:
    cfg = dict(compose_with(f"regularizer={choice}").regularizer)
    assert make_regularizer(cfg.pop("name"), **cfg).name == choice


def test_the_penalty_configs_zeta_only_guards_a_zero_loss() -> None:
    """CDMAA eq. 25's zeta is "a very small positive number": a loss of 1e-6 must not be clamped up."""
    cfg = dict(compose_with("regularizer=penalty").regularizer)
    assert make_regularizer(cfg.pop("name"), **cfg).zeta <= 1e-6


@pytest.mark.parametrize("choice", [p.stem for p in sorted((CONF / "attack").glob("*.yaml"))])
def test_attack_configs_name_a_base_attack(choice: str) -> None:
    cfg = compose_with(f"attack={choice}").attack
    assert cfg.name in BASE_ATTACKS and cfg.iterations >= 1
    assert (cfg.diversity_prob > 0) == choice.startswith(("di2", "mdi2"))


@pytest.mark.parametrize("method", [p.stem for p in sorted((CONF / "method").glob("*.yaml"))])
def test_every_table_row_method_composes(method: str) -> None:
    cfg = compose_with("+victims=[stargan]", f"+method={method}")
    assert cfg.attack.name in BASE_ATTACKS


PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem != "demo")


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_presets_are_one_multirun_over_the_table_rows(preset: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert params and all("," in str(v) for v in params.values())
    for key, values in params.items():  # every row composes
        for value in str(values).split(","):
            compose_with(f"experiment={preset}", f"{key}={value}")
    header = (CONF / "experiment" / f"{preset}.yaml").read_text()
    assert "Reproduces:" in header and f"experiment={preset}" in header
    victims = set(cfg.victims)
    assert victims == ({"stargan", "aggan", "attgan", "hisd"} if preset.startswith("cmua")
                       else {"stargan", "attgan", "stgan", "ugatit"})
    if preset.startswith("cdmaa"):  # CDMAA section 4.1: 100 faces sampled at random from the test split
        assert (cfg.data.n_craft, cfg.data.sample, cfg.data.partition) == (100, "random", "test")
    else:  # CMUA: the first 128 test faces craft the watermark
        assert (cfg.data.n_craft, cfg.data.sample, cfg.data.partition) == (128, "first", "test")


def test_victims_override_reaches_each_victim() -> None:
    cfg = compose_with("+victims=[stargan,attgan]", "victims.stargan.checkpoint=/x.ckpt", "weights=random",
                       "victims.attgan.step_scale=2.5")
    assert cfg.victims.stargan.checkpoint == "/x.ckpt"
    assert cfg.victims.attgan.weights == "random" and cfg.victims.attgan.step_scale == 2.5
