"""Lightning callbacks: judging the watermark and exporting what a run produces."""

from advwm.callbacks.evaluation import EvaluationCallback
from advwm.callbacks.export import WatermarkExport

__all__ = ["EvaluationCallback", "WatermarkExport"]
