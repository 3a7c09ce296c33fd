"""Model-level aggregators: how the victims' gradients make one attack iteration (one file per kind)."""

from advwm.attacks.aggregators.base import Aggregator, Iteration
from advwm.attacks.aggregators.cmua import CMUAFusion
from advwm.attacks.aggregators.cmua_reference import CMUAReference
from advwm.attacks.aggregators.combining import MGDA, CombiningAggregator, Iterative, Single, Uniform

__all__ = ["MGDA", "Aggregator", "CMUAFusion", "CMUAReference", "CombiningAggregator", "Iteration", "Iterative",
           "Single", "Uniform"]
