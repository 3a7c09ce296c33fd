"""Attack building blocks: the engine, base attacks (optimizers), scopes, aggregators, cross-domain modes,
regularisers, input diversity, and the released CMUA loop."""

from advwm.attacks.aggregators import MGDA, Aggregator, CMUAFusion, CMUAReference, Iterative, Single, Uniform
from advwm.attacks.diversity import InputDiversity
from advwm.attacks.domains import IterativeDomains, MGDADomains, SingleDomain, UniformDomains
from advwm.attacks.min_norm import min_norm_weights, min_norm_weights_batched
from advwm.attacks.reference import cmua_reference_watermark
from advwm.attacks.regularizers import L2Regularizer, LogRegularizer, NoRegularizer, PenaltyRegularizer, Regularizer
from advwm.attacks.scopes import PerImage, Scope, Universal, image_level_fusion
from advwm.attacks.steps import APGD, IFGSM, MIFGSM, PGD, BaseAttack, SignStepAttack, apgd_checkpoints

__all__ = [
    "APGD",
    "IFGSM",
    "MGDA",
    "MIFGSM",
    "PGD",
    "Aggregator",
    "BaseAttack",
    "CMUAFusion",
    "CMUAReference",
    "InputDiversity",
    "Iterative",
    "IterativeDomains",
    "L2Regularizer",
    "LogRegularizer",
    "MGDADomains",
    "NoRegularizer",
    "PenaltyRegularizer",
    "PerImage",
    "Regularizer",
    "Scope",
    "SignStepAttack",
    "Single",
    "SingleDomain",
    "Uniform",
    "UniformDomains",
    "Universal",
    "apgd_checkpoints",
    "cmua_reference_watermark",
    "image_level_fusion",
    "min_norm_weights",
    "min_norm_weights_batched",
]
