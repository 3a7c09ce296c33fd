"""Evaluation metrics (torchmetrics ``Metric``s)."""

from advwm.metrics.sr_mask import L2Mask, SRMask, masked_l2

__all__ = ["L2Mask", "SRMask", "masked_l2"]
