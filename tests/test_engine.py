"""The attack engine (WatermarkAttack) against hand computations on victims with known gradients."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from toys import LinearVictim, TensorFaces

from advwm.attacks.aggregators import CMUAFusion, Uniform, make_aggregator
from advwm.attacks.domains import UniformDomains, make_domains, stacked_gradients
from advwm.attacks.module import AttackSettings, WatermarkAttack
from advwm.attacks.regularizers import make_regularizer
from advwm.callbacks import EvaluationCallback, WatermarkExport
from advwm.victims import build_victim
from advwm.watermark_file import load_watermark

torch.set_num_threads(1)


def fit(module: WatermarkAttack, data: TensorFaces, callbacks: list | None = None) -> Trainer:
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks or [])
    trainer.fit(module, datamodule=data)
    return trainer


def start_from(module: WatermarkAttack, delta: torch.Tensor) -> None:
    """Skip the random start: the watermark begins at `delta`."""
    module.perturbation.data.copy_(delta)
    module.started.fill_(True)


def test_cmua_paper_fusion_matches_the_hand_computed_update() -> None:
    torch.manual_seed(0)
    eps, step, alpha = 0.05, 0.01, 0.5
    victims = [LinearVictim("a", 1.0), LinearVictim("b", 3.0)]
    module = WatermarkAttack(victims, aggregator=CMUAFusion(alpha=alpha), domains=UniformDomains(),
                             regularizer=make_regularizer("none"), attack=AttackSettings("ifgsm", step),
                             eps=eps, iterations=1, image_size=4, batch_size=2, step_scales={"a": 1.0, "b": 2.5})
    w0 = (torch.rand(1, 3, 4, 4) - 0.5) * 0.08
    start_from(module, w0)
    fit(module, TensorFaces(torch.zeros(2, 3, 4, 4), batch_size=2, repeats=1))
    # x = 0 so no image-range clamp; each image's gradient has the sign of W, so G_j = sign(W).
    w1 = alpha * w0 + (1 - alpha) * (w0 + step * 1.0 * w0.sign()).clamp(-eps, eps)
    w2 = alpha * w1 + (1 - alpha) * (w1 + step * 2.5 * w1.sign()).clamp(-eps, eps)
    assert torch.allclose(module.perturbation.detach(), w2, atol=1e-7)


class SpyAggregator(Uniform):
    """Records what the engine hands to the aggregator."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def combine(self, grads, losses, step):
        self.seen.append((grads.clone(), losses.clone()))
        return super().combine(grads, losses, step)


def test_combined_step_hands_regularised_per_image_gradients_to_the_aggregator() -> None:
    eps = 0.05
    victims = [LinearVictim("a", 1.0), LinearVictim("b", 2.0)]
    spy = SpyAggregator()
    module = WatermarkAttack(victims, aggregator=spy, domains=UniformDomains(), regularizer=make_regularizer("l2"),
                             attack=AttackSettings("ifgsm", 0.01), scope="per_image", eps=eps, iterations=1,
                             image_size=2, batch_size=2)
    x = torch.stack([torch.full((3, 2, 2), 0.2), torch.full((3, 2, 2), -0.3)])
    delta = torch.tensor([0.01, -0.02]).view(2, 1, 1, 1) * torch.ones(2, 3, 2, 2)

    original_prepare = module._prepare

    def prepare_then_set(*args, **kwargs):  # the per-image scope resets delta per batch: set it after
        cache = original_prepare(*args, **kwargs)
        module.perturbation.data.copy_(delta)
        return cache

    module._prepare = prepare_then_set  # type: ignore[method-assign]
    fit(module, TensorFaces(x, batch_size=2, repeats=1))
    grads, losses = spy.seen[0]
    n = 3 * 2 * 2
    for j, gain in enumerate([1.0, 2.0]):
        # uniform over conditions c in {0, 1}: mean of (1+c)^2 = 2.5
        raw = 2 * gain**2 * 2.5 * delta / n
        expected = raw / raw.flatten(1).norm(dim=1).view(2, 1, 1, 1)
        assert torch.allclose(grads[j], expected, atol=1e-6)
        assert torch.allclose(losses[j], gain**2 * 2.5 * delta.flatten(1).pow(2).mean(1), atol=1e-9)
    step_taken = module.perturbation.detach() - delta
    assert torch.allclose(step_taken, 0.01 * delta.sign(), atol=1e-7)


def test_clean_outputs_are_computed_once_per_batch_and_victims_stay_frozen() -> None:
    victim = LinearVictim("a", 1.0)
    module = WatermarkAttack([victim], aggregator=make_aggregator("uniform"), domains=UniformDomains(),
                             regularizer=make_regularizer("none"), attack=AttackSettings("pgd", 0.01),
                             eps=0.05, iterations=3, image_size=4, batch_size=2, micro_batches={"a": None})
    fit(module, TensorFaces(torch.zeros(4, 3, 4, 4), batch_size=2, repeats=3))
    assert victim.clean_calls == 2  # 2 batches x 1 stacked forward (both conditions at once)
    assert victim.grad_calls == 6  # 2 batches x 3 iterations, one stacked forward each
    assert victim.gain.grad is None and not victim.gain.requires_grad
    assert module.iteration == 6
    one_at_a_time = LinearVictim("a", 1.0)  # the CPU default ("auto"): one (image, condition) pair per forward
    module = WatermarkAttack([one_at_a_time], aggregator=make_aggregator("uniform"), domains=UniformDomains(),
                             regularizer=make_regularizer("none"), attack=AttackSettings("pgd", 0.01),
                             eps=0.05, iterations=3, image_size=4, batch_size=2)
    fit(module, TensorFaces(torch.zeros(4, 3, 4, 4), batch_size=2, repeats=3))
    assert one_at_a_time.clean_calls == 2 * 4  # 2 batches x (2 images x 2 conditions)
    assert one_at_a_time.grad_calls == 6 * 4


@pytest.fixture(scope="module")
def small_stargan():
    return build_victim("stargan", checkpoint=None, arch={"conv_dim": 8, "repeat_num": 1}, image_size=16)


def test_stacked_and_micro_batched_gradients_equal_one_condition_at_a_time(small_stargan) -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    labels = torch.zeros(2, 40)
    conditions = small_stargan.conditions(labels)
    with torch.no_grad():
        targets = [small_stargan(x, c) for c in conditions]
    protected = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    grads, losses = stacked_gradients(small_stargan, protected, conditions, targets, micro_batch=None)
    micro, micro_losses = stacked_gradients(small_stargan, protected, conditions, targets, micro_batch=3)
    for k, (c, t) in enumerate(zip(conditions, targets, strict=True)):
        p = protected.clone().requires_grad_(True)
        per_image = (small_stargan(p, c) - t).pow(2).flatten(1).mean(1)
        (g,) = torch.autograd.grad(per_image.sum(), p)
        assert torch.allclose(grads[k], g, atol=1e-6, rtol=1e-4)
        assert torch.allclose(micro[k], g, atol=1e-6, rtol=1e-4)
        assert torch.allclose(losses[k], per_image.detach(), atol=1e-7)
    assert torch.allclose(micro_losses, losses, atol=1e-7)
    mgda = make_domains("mgda").gradient(small_stargan, protected, conditions, targets, step=0)
    uniform = make_domains("uniform").gradient(small_stargan, protected, conditions, targets, step=0)
    assert torch.allclose(uniform.grad, grads.mean(0), atol=1e-7)
    single = make_domains("single", index=3).gradient(small_stargan, protected, conditions, targets, step=0)
    assert torch.allclose(single.grad, grads[3], atol=1e-7)
    iterative = make_domains("iterative").gradient(small_stargan, protected, conditions, targets, step=7)
    assert list(iterative.per_condition) == [7 % 5]
    for b in range(2):  # CDMAA Theorem 1 per image: the min-norm direction ascends every condition
        w = mgda.grad[b].flatten()
        for k in range(5):
            assert float(w @ grads[k, b].flatten()) >= float(w @ w) * (1 - 1e-4) - 1e-12


def test_the_clean_image_is_a_stationary_point_so_a_start_there_barely_moves(small_stargan) -> None:
    torch.manual_seed(2)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    conditions = small_stargan.conditions(torch.zeros(1, 40))
    with torch.no_grad():
        targets = [small_stargan(x, c) for c in conditions]
    at_clean, _ = stacked_gradients(small_stargan, x, conditions, targets, micro_batch=None)
    nearby = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    away, _ = stacked_gradients(small_stargan, nearby, conditions, targets, micro_batch=None)
    # only rounding noise at x itself: why I-FGSM here starts from a random point (conf/attack/ifgsm.yaml)
    assert at_clean.abs().max() < 1e-4 * away.abs().max()


def test_per_image_evaluation_and_export_use_each_batch_final_perturbation(tmp_path) -> None:
    victims = [LinearVictim("a", 5.0)]
    module = WatermarkAttack(victims, aggregator=make_aggregator("single"), domains=UniformDomains(),
                             regularizer=make_regularizer("none"), attack=AttackSettings("pgd", 0.01),
                             scope="per_image", eps=0.05, iterations=2, image_size=4, batch_size=2)
    images = torch.rand(3, 3, 4, 4) * 1.8 - 0.9
    evaluation, export = EvaluationCallback(), WatermarkExport(tmp_path)
    fit(module, TensorFaces(images, batch_size=2, repeats=2), [evaluation, export])
    assert module.watermark().shape == (1, 3, 4, 4)  # the last batch holds one image
    results = evaluation.results(module)
    assert results["judged/a"] == 3 * 2 and results["images_judged"] == 3
    saved = load_watermark(tmp_path / "watermark.pt", scope="per_image")
    assert saved.names == ["img0", "img1", "img2"] and saved.eps == 0.05 and saved.victims == {"a": "unknown"}
    assert torch.equal(saved.perturbations[2:], module.watermark())
    protected = (images + saved.perturbations).clamp(-1, 1)
    assert torch.allclose(protected - images, saved.perturbations, atol=1e-6)  # x + delta stays in range
    assert saved.perturbations.abs().max() <= 0.05 + 1e-7 and saved.perturbations.abs().min() < 0.05


@pytest.mark.slow
def test_a_compiled_victim_gives_the_eager_gradients(small_stargan) -> None:
    compiled = build_victim("stargan", checkpoint=None, arch={"conv_dim": 8, "repeat_num": 1}, image_size=16)
    compiled.network.load_state_dict(small_stargan.network.state_dict())
    compiled.network = torch.compile(compiled.network)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    conditions = small_stargan.conditions(torch.zeros(2, 40))
    with torch.no_grad():
        targets = [small_stargan(x, c) for c in conditions]
    protected = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    eager, _ = stacked_gradients(small_stargan, protected, conditions, targets, micro_batch=1)
    fast, _ = stacked_gradients(compiled, protected, conditions, targets, micro_batch=1)
    assert torch.allclose(fast, eager, atol=1e-6, rtol=1e-4)


def test_apgd_schedule_spans_the_whole_run_for_a_universal_watermark() -> None:
    victims = [LinearVictim("a", 2.0)]
    module = WatermarkAttack(victims, aggregator=make_aggregator("uniform"), domains=UniformDomains(),
                             regularizer=make_regularizer("none"), attack=AttackSettings("apgd", 0.1),
                             eps=0.05, iterations=5, image_size=4, batch_size=1)
    fit(module, TensorFaces(torch.rand(3, 3, 4, 4) - 0.5, batch_size=1, repeats=5))
    assert module.base_attack.checkpoints[-1] <= 15 and module.base_attack.checkpoints[1] == 4  # ceil(0.22*15)
    per_image = WatermarkAttack(victims, aggregator=make_aggregator("uniform"), domains=UniformDomains(),
                                regularizer=make_regularizer("none"), attack=AttackSettings("apgd", 0.1),
                                scope="per_image", eps=0.05, iterations=5, image_size=4, batch_size=1)
    fit(per_image, TensorFaces(torch.rand(3, 3, 4, 4) - 0.5, batch_size=1, repeats=5))
    assert per_image.base_attack.checkpoints[1] == 2  # ceil(0.22*5)


def test_reference_cmua_continues_hisd_from_the_watermark_with_an_offset_target() -> None:
    alpha, eps, step, scale = 0.5, 0.05, 0.01, 2.0
    restarting = LinearVictim("a", 1.0, levels=(0.0,))
    continuing = LinearVictim("hisd", 3.0, levels=(0.0,))
    module = WatermarkAttack([restarting, continuing], aggregator=CMUAFusion(alpha=alpha, variant="reference"),
                             domains=UniformDomains(), regularizer=make_regularizer("none"),
                             attack=AttackSettings("ifgsm", step, options={"random_start": False}), eps=eps,
                             iterations=1, image_size=4, batch_size=2, step_scales={"a": 1.0, "hisd": scale})
    w0 = (torch.rand(1, 3, 4, 4) - 0.5) * 0.06
    start_from(module, w0)
    fit(module, TensorFaces(torch.zeros(2, 3, 4, 4), batch_size=2, repeats=1))
    # victim "a" restarts at x = 0, where its gradient is exactly 0: eta = 0, so W1 = alpha * W0
    w1 = alpha * w0
    # "hisd" starts at x + W1 and moves away from G(x) + 0.002 = 0.002: sign(3 * W1 - 0.002)
    moved = w1 + step * (3.0 * w1 - 0.002).sign()
    w2 = alpha * w1 + (1 - alpha) * (scale * moved).clamp(-eps, eps)
    assert torch.allclose(module.perturbation.detach(), w2, atol=1e-7)
