"""Does the protection survive sharing? Every success metric again, after a real codec or resampler.

Photos are re-encoded, resized, blurred and cropped on their way to a forger. `metrics.robustness` names
such transforms (`jpeg75`, `resize0.5`, `blur1`, `crop0.9`, `png`); each is applied with the real thing
(Pillow's JPEG codec, Pillow's resamplers, on 8-bit images, as a saved photo is) to the protected face
before the victims see it.

What is compared. The question is "after sharing, does the protected photo still break the fake?". The
forger only ever has the shared photo, so the fake to beat is the one the victim makes of the *equally
shared clean* photo: under transform T, L = MSE(G(T(x + delta)), G(T(x))) and the SR_mask mask comes from
T(x) and G(T(x)). Comparing against G(x) instead would count the transform's own effect on the fake as
protection: a crop or a resize moves G's output by far more than 0.05 with no watermark at all (delta = 0
would then "succeed"). With this definition delta = 0 gives exactly zero success under every transform.

Keys: `robust/<transform>/<metric>/<victim>` for sr_mask, l2_mask, ruiz, avg_l, attack_rate (plus
`robust/<transform>/empty_mask/<victim>`), `robust/<transform>/<metric>/mean` over victims, and per
condition (`.../<victim>/<condition>`) when `metrics.robustness_per_condition` is on.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchmetrics import Metric

from advwm.attacks.chunking import MicroBatch
from advwm.attacks.domains import clean_outputs
from advwm.metrics import sync
from advwm.metrics.success import SUCCESS_KINDS, SuccessThresholds, success_metrics, update_success_metrics

__all__ = ["ROBUST_METRICS", "RobustnessJudge", "SharingTransform", "parse_transform", "parse_transforms"]

ROBUST_METRICS = SUCCESS_KINDS
AVERAGED_OVER_VICTIMS = ("sr_mask", "ruiz", "avg_l", "attack_rate")
NAMES_HELP = ("jpeg<quality 1-100> (Pillow's JPEG), resize<factor in (0,1)> (down and back up, bicubic), "
              "blur<sigma> (Gaussian), crop<fraction in (0,1)> (central crop, resized back) or png (8 bits only), "
              "e.g. metrics.robustness=[jpeg75,resize0.5]")
_PATTERN = re.compile(r"^(jpeg|resize|blur|crop)(\d+(?:\.\d+)?)$|^png$")
RESAMPLE = Image.Resampling.BICUBIC  # what most sharing pipelines use to rescale; antialiased when shrinking


def to_uint8(x: Tensor) -> np.ndarray:
    """One image [3,H,W] in [-1,1] -> HxWx3 uint8, as a photo file stores it (rounded to the nearest level)."""
    levels = ((x.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return levels.to(torch.uint8).permute(1, 2, 0).numpy()


def from_uint8(array: np.ndarray, like: Tensor) -> Tensor:
    """HxWx3 uint8 -> [3,H,W] in [-1,1] on `like`'s device and dtype."""
    levels = torch.from_numpy(np.array(array, dtype=np.uint8, copy=True))  # a copy: PIL's buffer is read-only
    tensor = levels.permute(2, 0, 1).double() / 127.5 - 1.0  # float64 first: the nearest float to each level
    return tensor.to(device=like.device, dtype=like.dtype)


@dataclass(frozen=True)
class SharingTransform:
    """One named transform a photo may undergo when shared, applied with Pillow to 8-bit images."""

    name: str  # as the user wrote it: the key in metrics.json (`jpeg75`)
    kind: str  # jpeg | resize | blur | crop | png
    value: float = 0.0  # quality, factor, sigma or fraction

    def apply_pil(self, image: Image.Image) -> Image.Image:
        """The transform on one RGB photo; the result has the photo's size (victims need their native size)."""
        size = image.size
        if self.kind == "jpeg":  # Pillow's defaults otherwise: 4:2:0 chroma subsampling, standard tables
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=int(self.value))
            buffer.seek(0)
            with Image.open(buffer) as decoded:
                return decoded.convert("RGB")
        if self.kind == "resize":
            small = (max(1, round(size[0] * self.value)), max(1, round(size[1] * self.value)))
            return image.resize(small, RESAMPLE).resize(size, RESAMPLE)
        if self.kind == "blur":  # Pillow's radius is the Gaussian's standard deviation
            return image.filter(ImageFilter.GaussianBlur(radius=self.value))
        if self.kind == "crop":
            width, height = max(1, round(size[0] * self.value)), max(1, round(size[1] * self.value))
            left, top = (size[0] - width) // 2, (size[1] - height) // 2
            return image.crop((left, top, left + width, top + height)).resize(size, RESAMPLE)
        return image.copy()  # png: the 8-bit round trip alone (lossless)

    def __call__(self, x: Tensor) -> Tensor:
        """A batch [B,3,H,W] in [-1,1] -> the shared photos, [B,3,H,W] in [-1,1] (multiples of 1/127.5)."""
        out = [from_uint8(np.asarray(self.apply_pil(Image.fromarray(to_uint8(image)))), image) for image in x]
        return torch.stack(out)


def parse_transform(name: str) -> SharingTransform:
    """`jpeg75` -> SharingTransform("jpeg75", "jpeg", 75); an unknown or out-of-range name is one ValueError line."""
    text = str(name).strip()
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"metrics.robustness: unknown transform {text!r}; use {NAMES_HELP}")
    if text == "png":
        return SharingTransform(text, "png")
    kind, value = match.group(1), float(match.group(2))
    if kind == "jpeg" and not (value == int(value) and 1 <= value <= 100):
        raise ValueError(f"metrics.robustness: {text!r}: the JPEG quality is an integer from 1 to 100")
    if kind in ("resize", "crop") and not 0.0 < value < 1.0:
        raise ValueError(f"metrics.robustness: {text!r}: the {kind} factor must lie strictly between 0 and 1 "
                         f"(e.g. {kind}0.5)")
    if kind == "blur" and value <= 0.0:
        raise ValueError(f"metrics.robustness: {text!r}: the blur sigma must be positive (e.g. blur1)")
    return SharingTransform(text, kind, value)


def parse_transforms(names: Sequence[str] | None) -> list[SharingTransform]:
    """The `metrics.robustness` list, parsed; duplicates are an error (they would share one key)."""
    if names is None:
        return []
    if isinstance(names, str):
        raise ValueError(f"metrics.robustness must be a list, e.g. [jpeg75,resize0.5]; got the string {names!r}")
    transforms = [parse_transform(n) for n in names]
    seen = [t.name for t in transforms]
    doubled = sorted({n for n in seen if seen.count(n) > 1})
    if doubled:
        raise ValueError(f"metrics.robustness names {doubled} more than once: list each transform once")
    return transforms


class RobustnessJudge:
    """The success metrics under each sharing transform, fed batch by batch, read once at the end.

    Per batch each transform is applied once to the clean and once to the protected faces (Pillow, CPU);
    then every victim makes both fakes of the shared photos and the metrics compare them.
    """

    def __init__(self, transforms: Sequence[SharingTransform], victims: Sequence, thresholds: SuccessThresholds,
                 device: torch.device, per_condition: bool = False) -> None:
        self.transforms = list(transforms)
        self.victims = list(victims)
        self.per_condition = per_condition
        self.metrics: dict[str, Metric] = {}
        for transform in self.transforms:
            for victim in self.victims:
                for key in self._keys(victim.name, victim.condition_names if per_condition else []):
                    self.metrics.update(success_metrics(f"robust/{transform.name}", key, thresholds))
        for key, metric in self.metrics.items():
            self.metrics[key] = metric.to(device)

    @staticmethod
    def _keys(victim: str, conditions: Sequence[str]) -> list[str]:
        return [victim] + [f"{victim}/{c}" for c in conditions]

    @property
    def steps(self) -> int:
        """Progress ticks per batch: one per (transform, victim)."""
        return len(self.transforms) * len(self.victims)

    @torch.no_grad()
    def update(self, x: Tensor, protected: Tensor, labels: Tensor,
               micro_batch: Callable[[object, int, str], MicroBatch],
               progress: Callable[[], object] | None = None) -> None:
        """Judge one batch of clean faces x and protected faces under every transform (`micro_batch(victim, B,
        "forward")`: the engine's chunking for forward-only calls; `progress()` after each transform and victim)."""
        for transform in self.transforms:
            shared_clean, shared_protected = transform(x), transform(protected)
            for victim in self.victims:
                conditions = [c.to(x.device) for c in victim.conditions(labels)]
                micro = micro_batch(victim, x.shape[0], "forward")
                fakes = clean_outputs(victim, shared_clean, conditions, micro)
                fakes_protected = clean_outputs(victim, shared_protected, conditions, micro)
                for name, fake, fake_protected in zip(victim.condition_names, fakes, fakes_protected, strict=True):
                    keys = self._keys(victim.name, [name] if self.per_condition else [])
                    for key in keys:
                        update_success_metrics(self.metrics, f"robust/{transform.name}", key, shared_clean, fake,
                                               fake_protected)
                if progress is not None:
                    progress()

    def results(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float | int]:
        """Flat values; `reduce` sums a tensor over processes (DDP) for the empty-mask counts."""
        flat: dict[str, float | int] = {}
        updated = sync.updated_anywhere(self.metrics, reduce)  # the same on every process (advwm.metrics.sync)
        for key, metric in self.metrics.items():
            if key in updated:
                flat[key] = float(sync.compute(metric))
        for transform in self.transforms:
            prefix = f"robust/{transform.name}"
            for victim in self.victims:
                metric = self.metrics[f"{prefix}/sr_mask/{victim.name}"]
                if f"{prefix}/sr_mask/{victim.name}" in updated:
                    empty = metric.empty.float()
                    flat[f"{prefix}/empty_mask/{victim.name}"] = int((reduce(empty) if reduce else empty).item())
            for kind in AVERAGED_OVER_VICTIMS:
                keys = [f"{prefix}/{kind}/{v.name}" for v in self.victims]
                values = [flat[k] for k in keys if k in flat]
                if values:
                    flat[f"{prefix}/{kind}/mean"] = sum(values) / len(values)
        return flat
