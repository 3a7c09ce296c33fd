"""The attack engine (WatermarkAttack) against hand computations on victims with known gradients."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from toys import LinearVictim, MixVictim, TensorFaces, base_attack, mix_vote, scope_of

from advwm.attacks import (
    BaseAttack,
    CMUAFusion,
    CMUAReference,
    Iterative,
    IterativeDomains,
    L2Regularizer,
    MGDADomains,
    NoRegularizer,
    PerImage,
    Single,
    SingleDomain,
    Uniform,
    UniformDomains,
    Universal,
)
from advwm.attacks.domains import stacked_gradients
from advwm.attacks.module import WatermarkAttack
from advwm.attacks.reference import cmua_reference_watermark
from advwm.callbacks import EvaluationCallback, WatermarkExport
from advwm.run_files.watermark_file import load_watermark
from advwm.victims import build_victim

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


@pytest.mark.parametrize("fused_step", ["mean", "sign"])
def test_cmua_paper_fusion_with_split_votes_matches_the_hand_computed_update(fused_step: str) -> None:
    """Images differ, so the per-image sign votes split: `mean` steps by a * (mean vote), `sign` by a * sign."""
    torch.manual_seed(0)
    eps, step, alpha = 0.05, 0.01, 0.5
    victims = [MixVictim("a", 1.0), MixVictim("b", 3.0)]
    module = WatermarkAttack(victims, aggregator=CMUAFusion(alpha=alpha), domains=UniformDomains(),
                             regularizer=NoRegularizer(), attack=base_attack("pgd", step, iterations=1),
                             eps=eps, image_size=4, batch_size=4, step_scales={"a": 1.0, "b": 2.5},
                             scope=Universal(fused_step=fused_step))
    x = torch.rand(4, 3, 4, 4) * 1.8 - 0.9
    w0 = (torch.rand(1, 3, 4, 4) - 0.5) * 0.08
    start_from(module, w0)
    fit(module, TensorFaces(x, batch_size=4, repeats=1))
    w, split = w0, False
    for j, scale in enumerate((1.0, 2.5)):
        votes = mix_vote(x + w, x).mean(dim=0, keepdim=True)  # image-level fusion
        split |= bool((votes.abs() < 1).float().mean() > 0.2)
        direction = votes if fused_step == "mean" else votes.sign()
        proposal = (w + step * scale * direction).clamp(-eps, eps)
        w = proposal if j == 0 else alpha * w + (1 - alpha) * proposal  # the first proposal becomes W (eq. 4)
    assert split, "the test needs non-unanimous votes"
    assert torch.allclose(module.perturbation.detach(), w, atol=1e-7)


def test_cmua_first_proposal_replaces_the_start_and_later_ones_blend() -> None:
    """CMUA eq. 4: "the initial W_CMUA is just the P_avg calculated from the first deepfake model". Hand values on
    a linear victim (its per-image gradient sign is sign(delta) everywhere, so every vote is unanimous): start
    W0 = 0.02 everywhere, a = 0.01, alpha = 0.5, step scales 1 and 3, eps 0.05.
    Iteration 1: victim a proposes P = 0.02 + 0.01 = 0.03, which *replaces* W0 (blending would give 0.025);
    victim b proposes 0.03 + 0.03 = 0.06 -> clipped 0.05, blended: W = 0.5 * 0.03 + 0.5 * 0.05 = 0.04.
    Iteration 2: a: 0.04 + 0.01 = 0.05 -> W = 0.5 * 0.04 + 0.5 * 0.05 = 0.045; b: 0.045 + 0.03 -> 0.05 ->
    W = 0.5 * 0.045 + 0.5 * 0.05 = 0.0475."""
    def after(iterations: int) -> torch.Tensor:
        module = WatermarkAttack([LinearVictim("a", 1.0), LinearVictim("b", 2.0)], aggregator=CMUAFusion(alpha=0.5),
                                 domains=UniformDomains(), regularizer=NoRegularizer(),
                                 attack=base_attack("pgd", 0.01, iterations=iterations), eps=0.05, image_size=2,
                                 batch_size=2, step_scales={"a": 1.0, "b": 3.0}, scope=Universal())
        start_from(module, torch.full((1, 3, 2, 2), 0.02))
        fit(module, TensorFaces(torch.zeros(2, 3, 2, 2), batch_size=2, repeats=iterations))
        return module.watermark()

    torch.testing.assert_close(after(1), torch.full((3, 2, 2), 0.04), rtol=0, atol=1e-7)
    torch.testing.assert_close(after(2), torch.full((3, 2, 2), 0.0475), rtol=0, atol=1e-7)


def test_fused_mean_and_sign_differ_and_without_image_level_fusion_the_mean_gradient_is_signed() -> None:
    x = torch.rand(4, 3, 4, 4) * 1.8 - 0.9
    results = {}
    for reduction, fused_step in (("sign_mean", "mean"), ("sign_mean", "sign"), ("mean", "mean"), ("mean", "sign")):
        module = WatermarkAttack([MixVictim("a", 1.0)], aggregator=CMUAFusion(), domains=UniformDomains(),
                                 regularizer=NoRegularizer(), attack=base_attack("pgd", 0.01, iterations=2),
                                 eps=0.05, image_size=4, batch_size=4,
                                 scope=Universal(batch_reduction=reduction, fused_step=fused_step))
        fit(module, TensorFaces(x, batch_size=4, repeats=2))
        results[reduction, fused_step] = module.watermark()
    assert not torch.equal(results["sign_mean", "mean"], results["sign_mean", "sign"])
    assert torch.equal(results["mean", "mean"], results["mean", "sign"])  # CMUA Table 4's fusion-off rows
    assert not torch.equal(results["mean", "sign"], results["sign_mean", "sign"])


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
    x = torch.stack([torch.full((3, 2, 2), 0.2), torch.full((3, 2, 2), -0.3)])
    delta = torch.tensor([0.01, -0.02]).view(2, 1, 1, 1) * torch.ones(2, 3, 2, 2)

    class StartingAtDelta(PerImage):  # the per-image scope starts every batch afresh: start it at delta
        def start_batch(self, engine, x, batch_number):
            super().start_batch(engine, x, batch_number)
            engine.perturbation.data.copy_(delta)

    module = WatermarkAttack(victims, aggregator=spy, domains=UniformDomains(), regularizer=L2Regularizer(),
                             attack=base_attack("ifgsm", 0.01, iterations=1), scope=StartingAtDelta(), eps=eps,
                             image_size=2, batch_size=2)
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
    module = WatermarkAttack([victim], aggregator=Uniform(), domains=UniformDomains(),
                             regularizer=NoRegularizer(), attack=base_attack("pgd", 0.01, iterations=3),
                             eps=0.05, image_size=4, batch_size=2, micro_batches={"a": None}, scope=Universal())
    fit(module, TensorFaces(torch.zeros(4, 3, 4, 4), batch_size=2, repeats=3))
    assert victim.clean_calls == 2  # 2 batches x 1 stacked forward (both conditions at once)
    assert victim.grad_calls == 6  # 2 batches x 3 iterations, one stacked forward each
    assert victim.gain.grad is None and not victim.gain.requires_grad
    assert module.iteration == 6
    one_at_a_time = LinearVictim("a", 1.0)  # the CPU default ("auto"): one (image, condition) pair per forward
    module = WatermarkAttack([one_at_a_time], aggregator=Uniform(), domains=UniformDomains(),
                             regularizer=NoRegularizer(), attack=base_attack("pgd", 0.01, iterations=3),
                             eps=0.05, image_size=4, batch_size=2, scope=Universal())
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
    mgda = MGDADomains().gradient(small_stargan, protected, conditions, targets, step=0)
    uniform = UniformDomains().gradient(small_stargan, protected, conditions, targets, step=0)
    assert torch.allclose(uniform.grad, grads.mean(0), atol=1e-7)
    single = SingleDomain(index=3).gradient(small_stargan, protected, conditions, targets, step=0)
    assert torch.allclose(single.grad, grads[3], atol=1e-7)
    iterative = IterativeDomains().gradient(small_stargan, protected, conditions, targets, step=7)
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
    module = WatermarkAttack(victims, aggregator=Single(), domains=UniformDomains(),
                             regularizer=NoRegularizer(), attack=base_attack("pgd", 0.01, iterations=2),
                             scope=PerImage(), eps=0.05, image_size=4, batch_size=2)
    images = torch.rand(3, 3, 4, 4) * 1.8 - 0.9
    evaluation, export = EvaluationCallback(), WatermarkExport(tmp_path)
    fit(module, TensorFaces(images, batch_size=2, repeats=2), [evaluation, export])
    assert module.watermark().shape == (1, 3, 4, 4)  # the last batch holds one image
    results = evaluation.results(module)
    assert results["judged/a"] == 3 * 2 and results["images_judged"] == 3
    saved = load_watermark(tmp_path / "watermark.pt", scope="per_image")
    assert saved.names == ["face0", "face1", "face2"] and saved.eps == 0.05 and saved.victims == {"a": "unknown"}
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
    module = WatermarkAttack(victims, aggregator=Uniform(), domains=UniformDomains(),
                             regularizer=NoRegularizer(), attack=base_attack("apgd", 0.1, iterations=5),
                             eps=0.05, image_size=4, batch_size=1, scope=Universal())
    fit(module, TensorFaces(torch.rand(3, 3, 4, 4) - 0.5, batch_size=1, repeats=5))
    assert module.base_attack.checkpoints[-1] <= 15 and module.base_attack.checkpoints[1] == 4  # ceil(0.22*15)
    per_image = WatermarkAttack(victims, aggregator=Uniform(), domains=UniformDomains(),
                                regularizer=NoRegularizer(), attack=base_attack("apgd", 0.1, iterations=5),
                                scope=PerImage(), eps=0.05, image_size=4, batch_size=1)
    fit(per_image, TensorFaces(torch.rand(3, 3, 4, 4) - 0.5, batch_size=1, repeats=5))
    assert per_image.base_attack.checkpoints[1] == 2  # ceil(0.22*5)


def test_the_reference_aggregator_runs_the_public_reference_function() -> None:
    """aggregator=cmua_reference is `cmua_reference_watermark`, one batch per step, noise seeded by (seed, batch);
    a victim named hisd continues from x + W with the offset target, the others restart from noise."""
    victims = [MixVictim("a", 1.0), MixVictim("hisd", 3.0, levels=(0.0,))]
    factors = {"a": 1.5, "hisd": 0.7}
    module = WatermarkAttack(victims, aggregator=CMUAReference(alpha=0.5), domains=UniformDomains(),
                             regularizer=NoRegularizer(), attack=base_attack("pgd", 0.01, iterations=3), eps=0.05,
                             image_size=4, batch_size=2, step_scales=factors, seed=7, scope=Universal())
    x = torch.rand(4, 3, 4, 4) * 2 - 1
    fit(module, TensorFaces(x, batch_size=2, repeats=1))
    labels = torch.zeros(2, 40)
    expected, trace = cmua_reference_watermark(victims, [(x[:2], labels)], factors=factors, eps=0.05, step_size=0.01,
                                               iterations=3, generator=module.start_generator(0))
    expected, more = cmua_reference_watermark(victims, [(x[2:], labels)], factors=factors, eps=0.05, step_size=0.01,
                                              iterations=3, generator=module.start_generator(1), watermark=expected)
    assert torch.equal(module.watermark(), expected)
    assert [(e["batch"], e["victim"]) for e in trace + more] == [(0, "a"), (0, "hisd")] * 2
    assert float(expected.abs().max()) > 0.01  # it moved
    with pytest.raises(ValueError, match="attack=pgd"):
        WatermarkAttack(victims, aggregator=CMUAReference(), domains=UniformDomains(),
                        regularizer=NoRegularizer(), attack=base_attack("ifgsm", 0.01), scope=Universal())


def test_reference_loop_by_hand_one_step_restarting_and_continuing() -> None:
    """One inner step of each kind, written out: eta is the batch mean of the clamped, factor-scaled displacement."""
    eps, a = 0.05, 0.01
    x = torch.rand(3, 3, 4, 4) * 1.6 - 0.8
    noise = (torch.rand(3, 3, 4, 4) * 2 - 1) * eps
    w0 = (torch.rand(3, 4, 4) - 0.5) * 0.08
    restart, continuing = MixVictim("a", 2.0, levels=(0.0,)), MixVictim("hisd", 1.0, levels=(0.0,))
    w, _ = cmua_reference_watermark([restart, continuing], [(x, torch.zeros(3, 40))], factors={"a": 2.0, "hisd": 0.5},
                                    eps=eps, step_size=a, iterations=1, noise=iter([noise]), watermark=w0, alpha=0.5)
    start = x + noise
    # batch-mean MSE against G(x): the sign of the gradient is the per-image vote (the target offset is 0 here)
    eta = (2.0 * (start + a * mix_vote(start, x) - x)).clamp(-eps, eps).mean(dim=0)
    w1 = 0.5 * w0 + 0.5 * eta
    start = x + w1  # hisd: continue from x + W (not clamped), target G(x) + 0.002
    g = mix_vote(start, x, gain=1.0, offset=0.002)
    eta = (0.5 * (start + a * g - x)).clamp(-eps, eps).mean(dim=0)
    assert torch.allclose(w, 0.5 * w1 + 0.5 * eta, atol=1e-7)


def _universal(victims, attack: BaseAttack, **kwargs) -> WatermarkAttack:
    options = dict(aggregator=Uniform(), domains=UniformDomains(), regularizer=NoRegularizer(), eps=0.05,
                   image_size=16, batch_size=2, scope=Universal())
    options.update(kwargs)
    return WatermarkAttack(victims, attack=attack, **options)


def test_di2_draws_one_transform_per_pair_whatever_the_chunking() -> None:
    """micro_batch=1 (the CPU default) and all pairs stacked (GPU) craft the same watermark with DI2."""
    x = torch.rand(4, 3, 16, 16) * 1.8 - 0.9
    di2 = base_attack("ifgsm", 0.01, iterations=3, diversity_prob=0.7)
    watermarks = {}
    for micro in (1, 3, None):
        module = _universal([MixVictim("a", 1.0)], di2, seed=5, micro_batches={"a": micro})
        fit(module, TensorFaces(x, batch_size=2, repeats=3))
        watermarks[micro] = module.watermark()
    assert torch.equal(watermarks[1], watermarks[None]) and torch.equal(watermarks[3], watermarks[None])
    plain = _universal([MixVictim("a", 1.0)], base_attack("ifgsm", 0.01, iterations=3), seed=5)
    fit(plain, TensorFaces(x, batch_size=2, repeats=3))
    assert not torch.equal(plain.watermark(), watermarks[None])  # the random resize does change the gradients


def test_pair_transform_is_independent_of_chunks_and_pairs_differ() -> None:
    from advwm.attacks.diversity import InputDiversity, PairTransform

    diversity = InputDiversity(prob=1.0, resize_rate=1.3)
    transform = PairTransform.for_step(diversity, conditions=2, images=3, height=16, width=16,
                                       generator=torch.Generator().manual_seed(0))
    stacked = torch.rand(6, 3, 16, 16)
    pairs = [(k, b) for k in range(2) for b in range(3)]
    whole = transform(stacked, pairs)
    pieces = torch.cat([transform(stacked[i:i + 1], pairs[i:i + 1]) for i in range(6)])
    assert torch.equal(whole, pieces)
    sizes = {(d.height, d.top, d.left) for row in transform.draws for d in row}
    assert len(sizes) > 1  # not one transform for the whole stack
    same_image = stacked[:1].expand(6, -1, -1, -1)
    outputs = transform(same_image, pairs)
    assert any(not torch.equal(outputs[0], outputs[i]) for i in range(1, 6))


class SpyDomains(UniformDomains):
    """Records the step each gradient is asked for."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def selected(self, step: int, num_conditions: int) -> list[int]:
        self.steps.append(step)
        return [step % num_conditions]


def test_iterative_modes_count_each_images_own_iterations() -> None:
    """CDMAA's t mod K: per image, t restarts with every batch; a universal watermark counts the whole run."""
    victims = [LinearVictim("a", 1.0, levels=(0.0, 1.0, 2.0)), LinearVictim("b", 2.0)]
    images = torch.rand(4, 3, 4, 4) - 0.5
    for scope, local_steps in (("per_image", [0, 1, 2, 0, 1, 2]), ("universal", [0, 1, 2, 3, 4, 5])):
        spy = SpyDomains()
        module = WatermarkAttack(victims, aggregator=Iterative(), domains=spy,
                                 regularizer=NoRegularizer(), attack=base_attack("ifgsm", 0.01, iterations=3),
                                 scope=scope_of(scope), eps=0.05, image_size=4, batch_size=2)
        fit(module, TensorFaces(images, batch_size=2, repeats=3))
        assert spy.steps == local_steps, scope  # the cross-domain mode sees the perturbation's own t
        # the cross-model mode too: victim t mod 2, i.e. per image a, b, a in each batch (a twice as often)
        gradients = [victim.grad_calls // 2 for victim in victims]  # 2 images, one pair per forward on the CPU
        assert gradients == [sum(t % 2 == 0 for t in local_steps), sum(t % 2 == 1 for t in local_steps)], scope
        victims[0].grad_calls = victims[1].grad_calls = 0


class RecordingAPGD(WatermarkAttack):
    """Records every point APGD's loss is measured at: the points before each step and the last one."""

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        self.visited: list[tuple[torch.Tensor, torch.Tensor]] = []
        step, finish = optimizer.step, optimizer.finish

        def recording_step(closure=None, loss=None):
            self.visited.append((self.perturbation.detach().clone(), loss.detach().clone()))
            return step(closure, loss=loss)

        def recording_finish(loss):
            self.visited.append((self.perturbation.detach().clone(), loss.detach().clone()))
            return finish(loss)

        optimizer.step, optimizer.finish = recording_step, recording_finish
        return optimizer


@pytest.mark.parametrize("scope", ["per_image", "universal"])
def test_apgd_ends_at_the_best_point_it_has_seen(scope: str) -> None:
    """Per image: the best per row; universal: the best by the batch's mean loss. The last point is judged too."""
    torch.manual_seed(5)
    module = RecordingAPGD([MixVictim("a", 1.0)], aggregator=Uniform(), domains=UniformDomains(),
                           regularizer=NoRegularizer(), attack=base_attack("apgd", 0.1, iterations=7),
                           scope=scope_of(scope), eps=0.05, image_size=8, batch_size=3)
    x = torch.rand(3, 3, 8, 8) * 1.6 - 0.8
    fit(module, TensorFaces(x, batch_size=3, repeats=7))
    points = torch.stack([p for p, _ in module.visited])  # [8, P, 3, H, W]
    losses = torch.stack([loss.reshape(-1) for _, loss in module.visited])  # [8, P]
    assert len(module.visited) == 8
    best = losses.argmax(dim=0)
    expected = torch.stack([points[best[row], row] for row in range(points.shape[1])])
    assert torch.equal(module.perturbation.detach(), expected)
    if scope == "per_image":  # here rows 0 and 2 peak before the end (universally the end is the best here)
        assert not torch.equal(expected, module.visited[-1][0])
    # the recorded losses are the true losses at those points
    last = module.visited[-1][0]
    fakes = [MixVictim("a", 1.0)(x + last, torch.zeros(3, 1)), MixVictim("a", 1.0)(x + last, torch.ones(3, 1))]
    clean = [MixVictim("a", 1.0)(x, torch.zeros(3, 1)), MixVictim("a", 1.0)(x, torch.ones(3, 1))]
    per_image = sum((f - c).pow(2).flatten(1).mean(1) for f, c in zip(fakes, clean, strict=True)) / 2
    assert torch.allclose(losses[-1], per_image if scope == "per_image" else per_image.mean().reshape(1), atol=1e-7)


@pytest.mark.parametrize("aggregator", [Uniform(), CMUAFusion(), CMUAReference()],
                         ids=["combining", "cmua", "reference"])
def test_every_aggregator_step_counts_as_a_trainer_step(aggregator) -> None:
    """Checkpoints and periodic evaluation follow `trainer.global_step`: every iteration must count once."""
    module = WatermarkAttack([MixVictim("a", 1.0)], aggregator=aggregator, domains=UniformDomains(),
                             regularizer=NoRegularizer(), attack=base_attack("pgd", 0.01, iterations=3),
                             scope=Universal(), eps=0.05, image_size=4, batch_size=2)
    trainer = fit(module, TensorFaces(torch.rand(4, 3, 4, 4) - 0.5, batch_size=2, repeats=aggregator.repeats(3)))
    assert trainer.global_step == module.iteration == 2 * aggregator.repeats(3)
