"""Every config file composes, says what it is for, and builds the objects it names."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advwm.attacks import Aggregator, BaseAttack, Regularizer, Scope
from advwm.attacks.domains import CrossDomain
from advwm.attacks.eot import SharingEOT
from advwm.callbacks.evaluation import MetricSettings
from advwm.victims.execution import ExecutionSettings
from advwm.victims.small import SMALL_ARCHITECTURES, small_overrides

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["attack", "aggregator", "domains", "regularizer", "eot", "scope", "data", "trainer", "logger", "experiment",
          "execution"]
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
    assert cfg.eps == 0.05 and cfg.image_size == (32 if choice == "smoke" else 256)


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_every_config_file_starts_with_a_purpose_comment_and_an_example(path: Path) -> None:
    lines = path.read_text().splitlines()
    header = [line for line in lines[:4] if line.startswith("#") and not line.startswith("# @package")]
    assert header, f"{path} has no leading comment"
    assert any("Example:" in line for line in lines[:5]), f"{path} has no example command in its header"


# Each group's choices build an instance of its class, by `_target_` (one file, one class).
BUILDS = {"aggregator": Aggregator, "domains": CrossDomain, "regularizer": Regularizer, "attack": BaseAttack,
          "scope": Scope, "metrics": MetricSettings, "eot": SharingEOT, "execution": ExecutionSettings}
BUILT = [(group, path.stem) for group in BUILDS for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "choice"), BUILT, ids=[f"{g}={c}" for g, c in BUILT])
def test_every_choice_of_every_group_instantiates_its_class(group: str, choice: str) -> None:
    cfg = compose_with("+victims=[stargan]", f"{group}={choice}")
    if (group, choice) == ("eot", "none"):  # eot=none builds nothing: the engine without EOT
        assert cfg.eot is None
        return
    assert "_target_" in cfg[group], f"{group}={choice} has no _target_"
    assert isinstance(instantiate(cfg[group]), BUILDS[group])


def test_the_penalty_configs_zeta_only_guards_a_zero_loss() -> None:
    """CDMAA eq. 25's zeta is "a very small positive number": a loss of 1e-6 must not be clamped up."""
    assert instantiate(compose_with("regularizer=penalty").regularizer).zeta <= 1e-6


@pytest.mark.parametrize("choice", [p.stem for p in sorted((CONF / "attack").glob("*.yaml"))])
def test_attack_configs_name_themselves_and_use_input_diversity_where_they_say(choice: str) -> None:
    attack = instantiate(compose_with(f"attack={choice}").attack)
    assert attack.name == choice and attack.iterations >= 1
    assert (attack.diversity is not None) == choice.startswith(("di2", "mdi2"))


def test_callbacks_group_builds_every_callback() -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from advwm.callbacks import EvaluationCallback, WatermarkExport

    cfg = compose_with("+victims=[stargan]", "paths.output_dir=/tmp/advwm-test-run")
    built = instantiate(cfg.callbacks)
    assert isinstance(built.evaluation, EvaluationCallback) and isinstance(built.evaluation.settings, MetricSettings)
    assert isinstance(built.export, WatermarkExport) and isinstance(built.checkpoint, ModelCheckpoint)
    assert built.checkpoint.dirpath.endswith("checkpoints")


def test_metric_settings_defaults_are_the_metrics_config() -> None:
    """One source of each default: the dataclass and conf/metrics/default.yaml agree (paths aside)."""
    cfg = compose_with("metrics=default").metrics
    defaults = MetricSettings()
    for key, value in cfg.items():
        if key in ("_target_", "liveness_weights"):  # the config points at weights/, the class has no path
            continue
        assert getattr(defaults, key) == value, key


def test_victim_configs_use_the_registrys_architecture() -> None:
    """One source of each default: conf/victims/<v>.yaml's arch is the registry's official layout."""
    from omegaconf import OmegaConf

    from advwm.victims.registry import SPECS

    def given(node: dict) -> dict:  # the values a config sets (HiSD's overrides of its yaml default to null)
        out = {k: given(v) if isinstance(v, dict) else v for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not None and v != {}}

    for name, spec in SPECS.items():
        cfg = compose_with(f"+victims=[{name}]").victims[name]
        for key, value in given(OmegaConf.to_container(cfg.arch or {}, resolve=True)).items():
            if key == "yaml":
                continue
            assert spec.default_arch.get(key) == value, (name, key)


@pytest.mark.parametrize("method", [p.stem for p in sorted((CONF / "method").glob("*.yaml"))])
def test_every_table_row_method_composes(method: str) -> None:
    cfg = compose_with("+victims=[stargan]", f"+method={method}")
    assert isinstance(instantiate(cfg.attack), BaseAttack) and isinstance(instantiate(cfg.aggregator), Aggregator)


NOT_PAPERS = ("demo", "smoke", "protection_modes")
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem not in NOT_PAPERS)


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


def test_protection_modes_runs_the_three_modes_on_the_same_victims_and_faces() -> None:
    """Universal and amortized learn from the crafting faces and are judged on the held-out ones; per image crafts on
    (and is judged on) those same held-out faces; everything else is shared."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=protection_modes"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {"+method": "cmua,amortized,cdmaa_held_out"}
    rows = {m: compose_with("experiment=protection_modes", f"+method={m}") for m in ("cmua", "amortized",
                                                                                   "cdmaa_held_out")}
    scopes = {m: instantiate(c.scope).name for m, c in rows.items()}
    assert scopes == {"cmua": "universal", "amortized": "amortized", "cdmaa_held_out": "per_image"}
    assert {m: c.data.get("craft_split", "crafting") for m, c in rows.items()} == {
        "cmua": "crafting", "amortized": "crafting", "cdmaa_held_out": "held_out"}
    for key in ("victims", "eps", "image_size", "seed", "data.n_craft", "data.n_eval", "data.root", "data.sample"):
        values = {str(OmegaConf.select(c, key)) for c in rows.values()}
        assert len(values) == 1, key
    assert set(rows["cmua"].victims) == {"stargan", "attgan", "stgan", "ugatit"}
    assert (rows["cmua"].data.n_craft, rows["cmua"].data.n_eval) == (128, 100)


def test_victims_override_reaches_each_victim() -> None:
    cfg = compose_with("+victims=[stargan,attgan]", "victims.stargan.checkpoint=/x.ckpt", "weights=random",
                       "victims.attgan.step_scale=2.5")
    assert cfg.victims.stargan.checkpoint == "/x.ckpt"
    assert cfg.victims.attgan.weights == "random" and cfg.victims.attgan.step_scale == 2.5


def test_gpu_fast_composes_with_a_paper_preset_and_reaches_every_victim_and_the_trainer() -> None:
    fast = compose_with("experiment=cmua_table3", "execution=gpu_fast")
    assert fast.trainer.precision == "bf16-mixed" and fast.data.batch_size == 64
    assert set(fast.victims) == {"stargan", "aggan", "attgan", "hisd"}
    for entry in fast.victims.values():
        assert entry.compile is True and entry.channels_last is True and entry.micro_batch == "auto"
    own = compose_with("experiment=cmua_table3", "execution=gpu_fast", "victims.hisd.compile=false")
    assert own.victims.hisd.compile is False and own.victims.stargan.compile is True
    default = compose_with("+victims=[stargan,attgan]")
    assert default.trainer.precision == "32-true"
    assert all(e.compile is False and e.channels_last is False for e in default.victims.values())


def test_the_small_architectures_overrides_compose_to_the_table() -> None:
    """tests and dry runs share one table: as Hydra overrides it gives each victim exactly its small arch."""
    names = list(SMALL_ARCHITECTURES)
    overrides = [f"+victims=[{','.join(names)}]"] + [o for n in names for o in small_overrides(n)]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    for name, arch in SMALL_ARCHITECTURES.items():
        composed = OmegaConf.to_container(cfg.victims[name].arch)
        assert {key: composed[key] for key in arch} == arch, name


# ---- presets build what their headers claim (the documented optimizer and settings) ---------------------------

# attack choice -> (optimizer class, start radius (None: the whole eps-ball), MI-FGSM decay, DI2 (prob, resize rate));
# the values the papers give: MI-FGSM mu = 1 (Dong et al. 2018), DI2 p = 0.5 and 330/299 ~ 1.1 (Xie et al. 2019),
# the 0.001 start of I-FGSM-based attacks (README, Random starts), PGD/APGD anywhere in the eps-ball.
ATTACKS = {
    "pgd": ("PGD", None, None, None),
    "ifgsm": ("IFGSM", 0.001, None, None),
    "mifgsm": ("MIFGSM", 0.001, 1.0, None),
    "di2fgsm": ("IFGSM", 0.001, None, (0.5, 1.1)),
    "mdi2fgsm": ("MIFGSM", 0.001, 1.0, (0.5, 1.1)),
    "apgd": ("APGD", None, None, None),
}


def _built(attack: BaseAttack, eps: float = 0.05):
    import torch

    return attack.build([torch.zeros(1, 3, 2, 2, requires_grad=True)], eps=eps, schedule_length=attack.iterations)


# the optimisers of scope=amortized's generator weights (advwm.attacks.amortized.GeneratorTraining): choice ->
# (torch optimizer class, learning rate, steps per batch)
GENERATOR_ATTACKS = {"adam": ("Adam", 0.001, 1)}


def test_every_attack_choice_is_documented_here() -> None:
    assert set(ATTACKS) | set(GENERATOR_ATTACKS) == {p.stem for p in (CONF / "attack").glob("*.yaml")}


@pytest.mark.parametrize("choice", sorted(GENERATOR_ATTACKS))
def test_generator_optimizer_configs_build_the_documented_torch_optimizer(choice: str) -> None:
    import torch

    name, lr, iterations = GENERATOR_ATTACKS[choice]
    attack = instantiate(compose_with(f"attack={choice}").attack)
    weight = torch.zeros(2, requires_grad=True)
    optimizer = attack.build([weight], eps=0.05, schedule_length=1)
    assert attack.trains_generator and type(optimizer).__name__ == name
    assert optimizer.param_groups[0]["lr"] == lr == attack.step_size and attack.iterations == iterations
    assert optimizer.param_groups[0]["params"] == [weight] and attack.diversity is None


@pytest.mark.parametrize("choice", sorted(ATTACKS))
def test_attack_configs_build_the_documented_optimizer_and_settings(choice: str) -> None:
    name, radius, decay, diversity = ATTACKS[choice]
    attack = instantiate(compose_with(f"attack={choice}").attack)
    optimizer = _built(attack)
    group = optimizer.param_groups[0]
    assert type(optimizer).__name__ == name
    assert group["start_radius"] in ((None, 0.05) if radius is None else (radius,))  # None: the eps-ball, eps 0.05
    assert group.get("decay") == decay
    got = None if attack.diversity is None else (attack.diversity.prob, attack.diversity.resize_rate)
    assert got == diversity
    assert attack.step_size == (0.1 if choice == "apgd" else 0.01) and attack.iterations == 10
    if choice == "apgd":  # Croce & Hein: rho 0.75, momentum 0.75, step 2 eps
        assert (optimizer.rho, optimizer.momentum) == (0.75, 0.75)


# method -> (attack choice, aggregator class, scope, eps, iterations): each header names its paper row.
METHODS = {
    **{f"universal_{row}": (attack, "Uniform", ("universal", "mean"), 0.05, 10) for row, attack in
       (("bim", "ifgsm"), ("mim", "mifgsm"), ("pgd", "pgd"), ("di2fgsm", "di2fgsm"), ("mdi2fgsm", "mdi2fgsm"),
        ("apgd", "apgd"))},
    "cmua": ("pgd", "CMUAFusion", ("universal", "sign_mean"), 0.05, 10),
    "cdmaa_ifgsm_t80": ("ifgsm", "MGDA", ("per_image", None), 0.05, 80),
    "cdmaa_ifgsm_t100": ("ifgsm", "MGDA", ("per_image", None), 0.05, 100),
    "cdmaa_ifgsm_eps006": ("ifgsm", "MGDA", ("per_image", None), 0.06, 80),
    "cdmaa_mifgsm": ("mifgsm", "MGDA", ("per_image", None), 0.05, 80),
    "cdmaa_apgd": ("apgd", "MGDA", ("per_image", None), 0.05, 80),
    "cdmaa_held_out": ("ifgsm", "MGDA", ("per_image", None), 0.05, 80),
}


def test_every_method_is_documented_here() -> None:
    assert set(METHODS) | {"amortized"} == {p.stem for p in (CONF / "method").glob("*.yaml")}


def test_the_amortized_method_builds_a_generator_trained_by_adam_over_mgda_with_unit_norm_gradients() -> None:
    cfg = compose_with("+victims=[stargan]", "+method=amortized")
    scope, attack = instantiate(cfg.scope), instantiate(cfg.attack)
    assert scope.name == "amortized" and scope.architecture() == {"width": 32, "depth": 3, "gain": 3.0}
    assert attack.trains_generator and attack.name == "adam" and cfg.trainer.max_epochs == 20
    assert type(instantiate(cfg.aggregator)).__name__ == "MGDA"
    assert type(instantiate(cfg.regularizer)).__name__ == "L2Regularizer"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_configs_build_their_paper_row(method: str) -> None:
    attack_choice, aggregator, (scope, reduction), eps, iterations = METHODS[method]
    cfg = compose_with("+victims=[stargan]", f"+method={method}")
    attack = instantiate(cfg.attack)
    name, radius, decay, diversity = ATTACKS[attack_choice]
    optimizer = _built(attack, eps)
    assert attack.name == attack_choice and type(optimizer).__name__ == name
    assert optimizer.param_groups[0].get("decay") == decay
    assert (None if attack.diversity is None else (attack.diversity.prob, attack.diversity.resize_rate)) == diversity
    assert type(instantiate(cfg.aggregator)).__name__ == aggregator
    built_scope = instantiate(cfg.scope)
    assert built_scope.name == scope and getattr(built_scope, "batch_reduction", None) == reduction
    assert cfg.eps == eps and attack.iterations == iterations
    if method.startswith("cdmaa"):  # CDMAA: all domains averaged, the penalty regulariser
        assert type(instantiate(cfg.regularizer)).__name__ == "PenaltyRegularizer"
        assert type(instantiate(cfg.domains)).__name__ == "UniformDomains"
    if method == "cmua":
        assert instantiate(cfg.aggregator).alpha == 0.5


def _without(cfg, *keys: str) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key in keys:
        plain.pop(key, None)
    return plain


@pytest.mark.parametrize("method", [m for m in sorted(METHODS) if m.startswith("universal_")])
def test_table3_base_attack_rows_and_table4_fusion_off_compose_alike_but_for_the_attack(method: str) -> None:
    """One definition of "universal <attack>, no fusion" (conf/fusion/none.yaml): CMUA Table 3's base-attack rows
    and Table 4's fusion-off column compose the same scope, aggregator and everything else; only the attack (and
    the table's name) differ. Table 4's fusion-on column is Table 3's CMUA row."""
    row = compose_with("experiment=cmua_table3", f"+method={method}")
    fusion_off = compose_with("experiment=cmua_table4", "+fusion=none")
    assert _without(row, "attack", "task_name") == _without(fusion_off, "attack", "task_name")
    if method == "universal_pgd":  # Table 4's first column repeats Table 3's PGD row
        assert OmegaConf.to_container(row.attack) == OmegaConf.to_container(fusion_off.attack)
    assert (row.scope.batch_reduction, row.aggregator._target_) == ("mean", "advwm.attacks.aggregators.Uniform")
    cmua_row = compose_with("experiment=cmua_table3", "+method=cmua")
    fusion_on = compose_with("experiment=cmua_table4", "+fusion=cmua")
    assert _without(cmua_row, "task_name") == _without(fusion_on, "task_name")


def test_the_smoke_preset_is_tiny_random_and_cheap() -> None:
    """experiment=smoke: the small architectures of small.py (one table), 32 px, two iterations, random weights,
    the cheap metrics (its time: README, Quick start; experiments/startup.py --smoke measures it)."""
    cfg = compose_with("experiment=smoke")
    assert list(cfg.victims) == ["stargan", "attgan"] and cfg.weights == "random"
    assert cfg.image_size == 32 and cfg.attack.iterations == 2 and cfg.task_name == "smoke"
    assert cfg.metrics.fid is False and cfg.metrics.liveness is False and list(cfg.metrics.robustness) == []
    assert cfg.victim_size == "small"
    for name in cfg.victims:
        composed = OmegaConf.to_container(cfg.victims[name].arch, resolve=True)
        assert {key: composed[key] for key in SMALL_ARCHITECTURES[name]} == SMALL_ARCHITECTURES[name], name


# The official architectures' values, written out from the papers' released configs (StarGAN/AGGAN solver.py
# defaults, AttGAN's and STGAN's 128 px settings, U-GAT-IT main.py, HiSD's celeba-hq_256.yaml: null = the file's).
OFFICIAL = {"stargan": {"conv_dim": 64, "repeat_num": 6}, "aggan": {"conv_dim": 64, "repeat_num": 6},
            "attgan": {"enc_dim": 64, "dec_dim": 64, "enc_layers": 5, "dec_layers": 5},
            "stgan": {"conv_dim": 64, "n_layers": 5, "shortcut_layers": 3},
            "ugatit": {"ngf": 64, "n_blocks": 4, "light": False},
            "hisd": {"style_dim": None, "noise_dim": None, "encoder": {"channels": None},
                     "decoder": {"channels": None}, "translators": {"channels": None},
                     "extractors": {"channels": None}, "mappers": {"pre_channels": None, "post_channels": None}}}


@pytest.mark.parametrize("size", ["official", "small"])
def test_victim_size_gives_every_victim_its_architecture_and_a_set_value_still_wins(size: str) -> None:
    """victim_size picks each victim's official or small architecture (small.py's table), whichever victims are
    chosen (the smoke preset with any victim added is small throughout); a value set on the command line wins."""
    expected = OFFICIAL if size == "official" else SMALL_ARCHITECTURES
    cfg = compose_with(f"+victims=[{','.join(OFFICIAL)}]", f"victim_size={size}")
    for name in OFFICIAL:
        composed = OmegaConf.to_container(cfg.victims[name].arch, resolve=True)
        assert {key: composed[key] for key in expected[name]} == expected[name], name
    smoke = compose_with("experiment=smoke", "+victims=[hisd,ugatit,stgan,aggan]", "victims.stargan.arch.conv_dim=16")
    assert list(smoke.victims) == ["stargan", "attgan", "hisd", "ugatit", "stgan", "aggan"]
    for name in smoke.victims:
        composed = OmegaConf.to_container(smoke.victims[name].arch, resolve=True)
        wanted = {**SMALL_ARCHITECTURES[name], **({"conv_dim": 16} if name == "stargan" else {})}
        assert {key: composed[key] for key in wanted} == wanted, name
