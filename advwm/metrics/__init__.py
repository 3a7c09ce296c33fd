"""Evaluation metrics (torchmetrics ``Metric``s)."""

from advwm.metrics.distortion import AttackRate, AverageDistortion, RuizSuccess, per_image_mse
from advwm.metrics.fid import FIDWeightsMissing, FIDWithCount, inception_weights_path, make_fid, to_fid_uint8
from advwm.metrics.liveness import (
    HyperFAS,
    Liveness,
    LivenessWeightsMissing,
    central_crop,
    hyperfas_input,
    load_hyperfas,
    reference_square_crop,
)
from advwm.metrics.quality import PerImagePSNR, PerImageSSIM, per_image_psnr, per_image_ssim
from advwm.metrics.sr_mask import L2Mask, SRMask, masked_l2

__all__ = [
    "AttackRate",
    "AverageDistortion",
    "FIDWeightsMissing",
    "FIDWithCount",
    "HyperFAS",
    "L2Mask",
    "Liveness",
    "LivenessWeightsMissing",
    "PerImagePSNR",
    "PerImageSSIM",
    "RuizSuccess",
    "SRMask",
    "central_crop",
    "hyperfas_input",
    "inception_weights_path",
    "load_hyperfas",
    "make_fid",
    "masked_l2",
    "per_image_mse",
    "per_image_psnr",
    "per_image_ssim",
    "reference_square_crop",
    "to_fid_uint8",
]
