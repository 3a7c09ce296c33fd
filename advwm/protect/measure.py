"""How protected a photo is: each victim's edits of the protected file against its edits of the original.

The faces are cropped out of the original photo and out of the protected photo *as written* (the file's
integer levels) by the same crop as everywhere (`advwm.protect.paste.crop_faces`); every victim edits both
under each of its conditions, and the run's own metric objects (`advwm.metrics.success`) score the pair:
avg_L (CDMAA: the mean over faces x conditions of MSE(G(x'), G(x))) and SR_mask (CMUA: the share of faces x
conditions whose masked L2 exceeds the success threshold; an empty mask counts as a failure). PSNR and SSIM
compare the whole protected photo with the original ([-1, 1], data range 2, as the run's `psnr`/`ssim`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from advwm.attacks.chunking import Chunker, FixedChunks
from advwm.attacks.domains import clean_outputs
from advwm.data.decode import DecodedPhoto
from advwm.metrics.quality import per_image_ssim
from advwm.metrics.success import SuccessThresholds, success_metrics, update_success_metrics
from advwm.protect.paste import Square

SSIM_MARGIN = 16  # px around the changed squares: beyond it SSIM's 11x11 windows (radius 5) only see equal pixels


@dataclass
class VictimScore:
    """One victim on one photo: avg_L and SR_mask over its conditions and the photo's faces, and the edits of
    the first condition (every face: fake of the original crop, fake of the protected crop) for the sheet."""

    avg_l: float
    sr_mask: float
    condition: str
    fake: torch.Tensor  # [F,3,S,S] in [-1, 1]
    fake_protected: torch.Tensor


def default_chunker(victim: torch.nn.Module, batch: int, purpose: str = "forward") -> Chunker:
    """One (image, condition) pair per call on the CPU (the engine's `micro_batch: auto` there), all at once else."""
    device = next(iter(victim.parameters()), torch.empty(0)).device
    return FixedChunks(1 if device.type == "cpu" else None, name=getattr(victim, "name", ""))


@torch.no_grad()
def score_victims(victims: Sequence[torch.nn.Module], original: torch.Tensor, protected: torch.Tensor,
                  labels: torch.Tensor, thresholds: SuccessThresholds,
                  micro_batch: Callable[[torch.nn.Module, int, str], Chunker] = default_chunker
                  ) -> dict[str, VictimScore]:
    """Every victim's avg_L and SR_mask for the face crops `original` and `protected` ([F,3,S,S], labels [F,40])."""
    scores: dict[str, VictimScore] = {}
    for victim in victims:
        device = next(iter(victim.parameters()), torch.empty(0)).device
        x, x_protected = original.to(device), protected.to(device)
        conditions = [c.to(device) for c in victim.conditions(labels.to(device))]
        chunker = micro_batch(victim, x.shape[0], "forward")
        fakes = clean_outputs(victim, x, conditions, chunker)
        fakes_protected = clean_outputs(victim, x_protected, conditions, chunker)
        metrics = {k: m.to(device) for k, m in success_metrics("", victim.name, thresholds).items()}
        for fake, fake_protected in zip(fakes, fakes_protected, strict=True):
            update_success_metrics(metrics, "", victim.name, x, fake, fake_protected)
        scores[victim.name] = VictimScore(
            avg_l=float(metrics[f"avg_l/{victim.name}"].compute()),
            sr_mask=float(metrics[f"sr_mask/{victim.name}"].compute()),
            condition=str(victim.condition_names[0]), fake=fakes[0].float().cpu(),
            fake_protected=fakes_protected[0].float().cpu())
    return scores


def _unit(photo: DecodedPhoto) -> np.ndarray:
    """What a person sees, [H,W,3] float64 in [-1, 1]."""
    return photo.on_white().astype(np.float64) * 2.0 - 1.0


def psnr(original: DecodedPhoto, protected: DecodedPhoto) -> float:
    """PSNR in dB of the whole protected photo against the original, data range 2 (inf when nothing changed)."""
    mse = float(np.mean((_unit(protected) - _unit(original)) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(4.0 / mse))


def ssim(original: DecodedPhoto, protected: DecodedPhoto, squares: Sequence[Square]) -> float:
    """SSIM of the whole protected photo against the original (torchmetrics' SSIM, `advwm.metrics.quality`).

    Computed on the changed squares' bounding box grown by SSIM_MARGIN px only, which gives the whole photo's
    value: every SSIM window farther than that from a changed pixel compares equal pixels (SSIM 1), also where
    the box's edge reflects its own pixels. Why: a 12-megapixel photo's full SSIM map takes seconds.
    """
    if not squares:
        return 1.0
    height, width = original.colour.shape[:2]
    left = max(0, min(s[0] for s in squares) - SSIM_MARGIN)
    top = max(0, min(s[1] for s in squares) - SSIM_MARGIN)
    right = min(width, max(s[0] + s[2] for s in squares) + SSIM_MARGIN)
    bottom = min(height, max(s[1] + s[2] for s in squares) + SSIM_MARGIN)

    def box(photo: DecodedPhoto) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(_unit(photo)[top:bottom, left:right])).permute(2, 0, 1)[None]

    inside = float(per_image_ssim(box(protected), box(original))[0])
    boxed, total = (bottom - top) * (right - left), height * width
    return (inside * boxed + (total - boxed)) / total
