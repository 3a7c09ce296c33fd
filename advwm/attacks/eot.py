"""EOT over sharing (config group `eot`): craft a watermark that survives JPEG, resizing and blurring.

Expectation over transformation (Athalye et al. 2018): instead of the victim gradient at the protected
photo, each step takes the mean of the victim gradients at `samples` randomly *shared* versions of it, so
the perturbation climbs the distortion the forger sees after the photo has been re-encoded or rescaled.
The transforms are differentiable stand-ins for what `metrics.robustness` applies with real codecs:

- ``jpeg``: kornia's differentiable JPEG (`kornia.enhance.jpeg_codec_differentiable`: YCbCr, 4:2:0 chroma
  subsampling, the standard tables scaled to the quality, a differentiable rounding), quality drawn as an
  integer in ``jpeg_quality``;
- ``resize``: down to a factor drawn from ``resize_factor`` and back up, antialiased bicubic (the filter
  Pillow uses, a = -0.5);
- ``blur``: a Gaussian of sigma drawn from ``blur_sigma`` (truncated at 4 sigma, edges replicated);
- ``identity``: the photo as it is (shared losslessly).

What each draw's loss compares, like the evaluation: the victim's output on the shared protected photo
against its output on the *equally shared clean* photo, MSE(G(T(x + delta), c), G(T(x), c)), so the
transform's own effect on G is not mistaken for progress (against G(x), a blur alone would already look
like a large distortion, and the gradient would chase it). Those targets cost one forward per pair and
draw, without a backward.

Draws: one transform per (condition, image) pair per sample, all drawn up front from a generator seeded by
(seed, step, victim), like DI2's: how the pairs are chunked through the victim (``micro_batch``) and the
device cannot change them, and a resumed run draws the same. With DI2 on, its resize-and-pad follows the
sharing transform (the victim sees DI2(T(x + delta))).

The hook: `WatermarkAttack` calls ``eot.around(domains, ...)`` in place of ``domains.gradient``; with
``eot=none`` no object exists and the engine runs exactly as without this module.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from advwm.attacks.chunking import MicroBatch
from advwm.attacks.domains import CrossDomain, Transform, VictimGradient, clean_outputs

if TYPE_CHECKING:
    from advwm.attacks.aggregators.base import Aggregator
    from advwm.attacks.steps import BaseAttack

__all__ = ["KINDS", "SharingDraw", "SharingEOT", "SharingPairs", "gaussian_blur", "jpeg", "resize"]

KINDS = ("jpeg", "resize", "blur", "identity")


# ---------------------------------------------------------------------------------------- the transforms


def jpeg(x: Tensor, quality: float) -> Tensor:
    """Differentiable JPEG round trip of x [N,3,H,W] in [-1,1] at one quality (kornia)."""
    from kornia.enhance import jpeg_codec_differentiable

    unit = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    qualities = torch.full((x.shape[0],), float(quality), device=x.device, dtype=x.dtype)
    return jpeg_codec_differentiable(unit, qualities) * 2.0 - 1.0


def resize(x: Tensor, factor: float) -> Tensor:
    """Down to round(factor * side) and back up, antialiased bicubic; kept in [-1,1] as an 8-bit file would be."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    small = (max(1, round(height * factor)), max(1, round(width * factor)))
    down = F.interpolate(x, size=small, mode="bicubic", antialias=True, align_corners=False)
    up = F.interpolate(down, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return up.clamp(-1.0, 1.0)


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """The normalised 1-D Gaussian taps, radius int(4 sigma + 0.5) (scipy.ndimage's default truncation)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (taps / taps.sum()).to(dtype)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of x [N,C,H,W] with replicated edges."""
    taps = gaussian_kernel(sigma, x.dtype).to(x.device)
    radius, channels = taps.numel() // 2, x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


@dataclass(frozen=True)
class SharingDraw:
    """One pair's transform: its kind and parameter (JPEG quality, resize factor, blur sigma; 0 for identity)."""

    kind: str
    value: float = 0.0

    def __call__(self, x: Tensor) -> Tensor:
        if self.kind == "jpeg":
            return jpeg(x, self.value)
        if self.kind == "resize":
            return resize(x, self.value)
        if self.kind == "blur":
            return gaussian_blur(x, self.value)
        return x


class SharingPairs:
    """One sample's transforms for one victim and step: pair (condition k, image b) gets ``draws[k][b]``.

    Applied row by row, so a row's result does not depend on which rows share its chunk."""

    def __init__(self, draws: Sequence[Sequence[SharingDraw]]) -> None:
        self.draws = draws

    def __call__(self, chunk: Tensor, pairs: Sequence[tuple[int, int]]) -> Tensor:
        if len(pairs) != chunk.shape[0]:
            raise ValueError(f"{len(pairs)} pairs for a chunk of {chunk.shape[0]}")
        # The transforms simulate what sharing does to the file, so they run in fp32 even where the victims run
        # under bf16 autocast (trainer.precision=bf16-mixed): JPEG's colour and DCT matrices would be cast.
        with torch.autocast(chunk.device.type, enabled=False):
            return torch.cat([self.draws[k][b](chunk[i:i + 1]) for i, (k, b) in enumerate(pairs)])


def composed(sharing: SharingPairs, diversity: Transform | None) -> Transform:
    """Sharing first, then DI2's resize-and-pad (when on): the victim sees DI2(T(x + delta))."""
    if diversity is None:
        return sharing
    return lambda chunk, pairs: diversity(sharing(chunk, pairs), pairs)


# --------------------------------------------------------------------------------------------- the EOT


def _pair(values: Sequence[float], name: str) -> tuple[float, float]:
    if isinstance(values, str | bytes) or len(values) != 2:
        raise ValueError(f"eot.{name} must be [low, high], got {values!r}")
    low, high = float(values[0]), float(values[1])
    if not low <= high:
        raise ValueError(f"eot.{name} must be [low, high] with low <= high, got {[low, high]}")
    return low, high


class SharingEOT:
    """The `eot=sharing` setting: how many draws per step, which transforms how often, and their ranges."""

    name = "sharing"

    def __init__(self, samples: int = 4, mix: Mapping[str, float] | None = None,
                 jpeg_quality: Sequence[float] = (50, 95), resize_factor: Sequence[float] = (0.5, 0.9),
                 blur_sigma: Sequence[float] = (0.5, 1.5)) -> None:
        if isinstance(samples, bool) or int(samples) != samples or int(samples) < 1:
            raise ValueError(f"eot.samples must be a whole number >= 1, got {samples!r}")
        self.samples = int(samples)
        weights = dict(mix if mix is not None else {"jpeg": 0.5, "resize": 0.25, "blur": 0.25})
        unknown = sorted(set(weights) - set(KINDS))
        if unknown:
            raise ValueError(f"eot.mix: unknown transform(s) {unknown}; choose from {list(KINDS)}")
        if any(float(w) < 0 or not math.isfinite(float(w)) for w in weights.values()):
            raise ValueError(f"eot.mix weights must be finite and >= 0, got {weights}")
        total = sum(float(w) for w in weights.values())
        if total <= 0:
            raise ValueError(f"eot.mix needs a positive weight on at least one of {list(KINDS)}, got {weights}")
        self.mix = {kind: float(weights.get(kind, 0.0)) / total for kind in KINDS}
        self.jpeg_quality = _pair(jpeg_quality, "jpeg_quality")
        if not (self.jpeg_quality[0] == int(self.jpeg_quality[0]) and self.jpeg_quality[1] == int(self.jpeg_quality[1])
                and 1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100):
            raise ValueError(f"eot.jpeg_quality must be whole numbers within [1, 100], got {list(jpeg_quality)}")
        self.resize_factor = _pair(resize_factor, "resize_factor")
        if not (0 < self.resize_factor[0] and self.resize_factor[1] <= 1):
            raise ValueError(f"eot.resize_factor must lie within (0, 1], got {list(resize_factor)}")
        self.blur_sigma = _pair(blur_sigma, "blur_sigma")
        if not self.blur_sigma[0] > 0:
            raise ValueError(f"eot.blur_sigma must be positive, got {list(blur_sigma)}")

    def __repr__(self) -> str:
        return (f"SharingEOT(samples={self.samples}, mix={self.mix}, jpeg_quality={self.jpeg_quality}, "
                f"resize_factor={self.resize_factor}, blur_sigma={self.blur_sigma})")

    def check(self, *, attack: BaseAttack, aggregator: Aggregator) -> None:
        """The engine paths EOT can drive; the others are refused in one line."""
        if not aggregator.uses_engine_gradients:
            raise ValueError("eot=sharing cannot drive aggregator=cmua_reference (it replays the released loop as "
                             "it was): use aggregator=cmua or another, or eot=none")
        if attack.scheduled:
            raise ValueError("eot=sharing cannot drive attack=apgd (its best-point bookkeeping compares losses "
                             "without the random transforms): use attack=pgd, ifgsm or mifgsm, or eot=none")

    # ---- draws
    def draw_one(self, generator: torch.Generator) -> SharingDraw:
        """One transform; always two uniform numbers (kind, parameter), so later draws never depend on this one."""
        u_kind, u_value = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        cumulative, kind = 0.0, None
        for candidate in KINDS:
            cumulative += self.mix[candidate]
            if self.mix[candidate] > 0 and u_kind < cumulative:
                kind = candidate
                break
        if kind is None:  # u_kind within rounding of 1: the last kind with a weight
            kind = [k for k in KINDS if self.mix[k] > 0][-1]
        if kind == "jpeg":
            low, high = self.jpeg_quality
            return SharingDraw(kind, float(min(high, math.floor(low + u_value * (high - low + 1)))))
        if kind == "resize":
            low, high = self.resize_factor
            return SharingDraw(kind, low + u_value * (high - low))
        if kind == "blur":
            low, high = self.blur_sigma
            return SharingDraw(kind, low + u_value * (high - low))
        return SharingDraw("identity")

    def draws(self, conditions: int, images: int, generator: torch.Generator) -> list[list[list[SharingDraw]]]:
        """[sample][condition][image] draws, sample-major, then condition-major (as DI2 draws its pairs)."""
        return [[[self.draw_one(generator) for _ in range(images)] for _ in range(conditions)]
                for _ in range(self.samples)]

    @staticmethod
    def generator(seed: int, step: int, victim: int) -> torch.Generator:
        """The draws of one (seed, step, victim): a stream of its own, apart from DI2's and the random start's."""
        digest = hashlib.sha256(f"advwm.eot/{int(seed)}/{int(step)}/{int(victim)}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))

    # ---- the gradient
    def around(self, domains: CrossDomain, clean: Tensor, *, seed: int, step: int, victim_index: int) -> Callable:
        """`domains.gradient`, averaged over this step's draws: same signature; the given clean targets G(x, c)
        are replaced by each draw's G(T(x), c)."""

        def gradient(victim: torch.nn.Module, protected: Tensor, conditions: Sequence[Tensor],
                     targets: Sequence[Tensor], local_step: int, micro_batch: MicroBatch = None,
                     transform: Transform | None = None) -> VictimGradient:
            del targets  # the unshared targets; each draw makes its own
            return self.gradient(domains, victim, clean, protected, conditions, local_step, micro_batch, transform,
                                 self.generator(seed, step, victim_index))

        return gradient

    def gradient(self, domains: CrossDomain, victim: torch.nn.Module, clean: Tensor, protected: Tensor,
                 conditions: Sequence[Tensor], local_step: int, micro_batch: MicroBatch,
                 diversity: Transform | None, generator: torch.Generator) -> VictimGradient:
        """The mean over `samples` draws of the mode's per-image gradient and loss (and per-condition losses)."""
        draws = self.draws(len(conditions), protected.shape[0], generator)
        chosen = domains.selected(local_step, len(conditions))
        grad_sum = loss_sum = None
        per_condition: dict[int, Tensor] = {}
        for sample in draws:
            sharing = SharingPairs(sample)
            targets = shared_targets(victim, clean, conditions, chosen, micro_batch, sharing)
            result = domains.gradient(victim, protected, conditions, targets, local_step, micro_batch,
                                      composed(sharing, diversity))
            grad_sum = result.grad if grad_sum is None else grad_sum + result.grad
            loss_sum = result.loss if loss_sum is None else loss_sum + result.loss
            for k, loss in result.per_condition.items():
                per_condition[k] = per_condition[k] + loss if k in per_condition else loss
        count = float(self.samples)
        return VictimGradient(grad=grad_sum / count, loss=loss_sum / count,
                              per_condition={k: v / count for k, v in per_condition.items()})


@torch.no_grad()
def shared_targets(victim: torch.nn.Module, clean: Tensor, conditions: Sequence[Tensor], chosen: Sequence[int],
                   micro_batch: MicroBatch, sharing: SharingPairs) -> list[Tensor | None]:
    """G(T_kb(x_b), c_k) for the chosen conditions k (None for the others), chunked like the gradients and kept
    in the dtype of the faces (under bf16 autocast the victim computes in bf16, the targets stay fp32)."""
    outputs = clean_outputs(victim, clean, [conditions[k] for k in chosen], micro_batch, sharing, chosen)
    targets: list[Tensor | None] = [None] * len(conditions)
    for k, output in zip(chosen, outputs, strict=True):
        targets[k] = output
    return targets
