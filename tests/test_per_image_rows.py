"""Per-image runs over several batches: each saved row is its own image's perturbation, from its batch's start.

What a reviewer would break: the rows of `watermark.pt` shifted or reversed against their names, one random start
reused for every batch, the start drawn from the run's first generator instead of the batch's, the perturbation
of saturated pixels pushing x + delta out of [-1, 1]. Every expected value below is computed by hand from the
documented rules:

- the random start of batch b is U(-r, r) drawn on the CPU from a generator seeded with seed * 1_000_003 + b
  (`WatermarkAttack.start_generator`), r = eps for PGD, then moved so that x + delta stays in [-1, 1];
- a linear victim G(x, c) = g (1 + c) x has a distortion gradient proportional to delta, so one PGD step moves every
  entry by a * sign(delta), clipped to [-eps, eps] and again to the image range.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_engine import fit
from toys import LinearVictim, TensorFaces, base_attack

from advwm.attacks import NoRegularizer, PerImage, Uniform, UniformDomains, Universal
from advwm.attacks.module import WatermarkAttack
from advwm.callbacks import WatermarkExport
from advwm.run_files.watermark_file import load_watermark

SEED, EPS, STEP, SIZE = 3, 0.05, 0.01, 4


def _per_image_run(x: torch.Tensor, tmp_path: Path, iterations: int = 1) -> dict:
    module = WatermarkAttack([LinearVictim("a", 1.0), LinearVictim("b", 2.0)], aggregator=Uniform(),
                             domains=UniformDomains(), regularizer=NoRegularizer(),
                             attack=base_attack("pgd", STEP, iterations=iterations), eps=EPS, image_size=SIZE,
                             batch_size=2, seed=SEED, scope=PerImage())
    fit(module, TensorFaces(x, batch_size=2, repeats=iterations), callbacks=[WatermarkExport(tmp_path)])
    saved = load_watermark(tmp_path / "watermark.pt", scope="per_image")
    return dict(zip(saved.names, saved.tensor, strict=True))


def _hand_start(x_batch: torch.Tensor, batch_number: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED * 1_000_003 + batch_number)
    start = (torch.rand(x_batch.shape, generator=generator) * 2.0 - 1.0) * EPS
    return (x_batch + start).clamp(-1, 1) - x_batch


def _hand_step(x_batch: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    moved = (delta + STEP * delta.sign()).clamp(-EPS, EPS)
    return (x_batch + moved).clamp(-1, 1) - x_batch


def test_each_saved_row_is_its_named_images_perturbation_from_its_batchs_start(tmp_path: Path) -> None:
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) - 0.5
    rows = _per_image_run(x, tmp_path)
    assert sorted(rows) == ["face0", "face1", "face2", "face3"]
    starts = [_hand_start(x[2 * b:2 * b + 2], b) for b in range(2)]
    assert not torch.allclose(starts[0], starts[1])  # each batch draws its own start
    for b in range(2):
        expected = _hand_step(x[2 * b:2 * b + 2], starts[b])
        for k in range(2):
            torch.testing.assert_close(rows[f"face{2 * b + k}"], expected[k], rtol=0, atol=1e-7)


def test_saturated_pixels_stay_in_range_wherever_a_perturbation_is_applied(tmp_path: Path) -> None:
    """Faces with pixels at exactly -1 and +1: the saved per-image rows keep x + delta in [-1, 1] (the engine
    moves delta itself, not only the image it feeds the victims), and so does the universal engine's protect."""
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x[:, :, 0, :] = 1.0
    x[:, :, -1, :] = -1.0
    rows = _per_image_run(x, tmp_path, iterations=3)
    for i in range(4):
        protected = x[i] + rows[f"face{i}"]
        assert float(protected.max()) <= 1.0 and float(protected.min()) >= -1.0
        assert float(rows[f"face{i}"].abs().max()) <= EPS + 1e-7
        assert bool((rows[f"face{i}"][:, 0, :] <= 0).all()) and bool((rows[f"face{i}"][:, -1, :] >= 0).all())
    universal = WatermarkAttack([LinearVictim("a", 1.0)], aggregator=Uniform(), domains=UniformDomains(),
                                regularizer=NoRegularizer(), attack=base_attack("pgd", STEP, iterations=2), eps=EPS,
                                image_size=SIZE, batch_size=4, seed=SEED, scope=Universal())
    fit(universal, TensorFaces(x, batch_size=4, repeats=2))
    protected = universal.protect(x).detach()
    assert float(protected.max()) <= 1.0 and float(protected.min()) >= -1.0
    assert float((protected - x).abs().max()) <= EPS + 1e-7


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_protect_keeps_saturated_photo_pixels_in_range(strength: float) -> None:
    """The photo path (`advwm.protect.paste`, shared by the universal watermark, per-image runs and generators)
    adds a perturbation in [-1, 1] units and clamps: a photo's pure black and pure white pixels stay 0 and 1 where
    the perturbation pushes them outwards, and move inwards by strength * eps / 2 elsewhere."""
    import numpy as np

    from advwm.data.decode import DecodedPhoto
    from advwm.protect.paste import paste
    from advwm.protect.protectors import UniversalWatermark

    colour = np.zeros((8, 8, 3), dtype=np.float32)
    colour[:, 4:] = 1.0  # left half black, right half white
    photo = DecodedPhoto(colour, None, 8, [])
    watermark = torch.full((3, 8, 8), EPS)
    watermark[:, ::2] = -EPS  # alternate rows push down and up
    deltas = UniversalWatermark(watermark, EPS, strength)(torch.zeros(1, 3, 8, 8), ["face"])
    result = paste(photo, [(0, 0, 8)], deltas).colour
    assert float(result.min()) >= 0.0 and float(result.max()) <= 1.0
    up, down = strength * EPS / 2, -strength * EPS / 2
    np.testing.assert_allclose(result[1::2, :4], up, atol=1e-6)  # black pushed up: moves
    np.testing.assert_allclose(result[::2, :4], 0.0, atol=0)  # black pushed down: stays black
    np.testing.assert_allclose(result[::2, 4:], 1.0 + down, atol=1e-6)  # white pushed down: moves
    np.testing.assert_allclose(result[1::2, 4:], 1.0, atol=0)  # white pushed up: stays white
