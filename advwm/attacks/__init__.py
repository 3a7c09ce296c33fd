"""Attack building blocks: base attacks (optimizers), input diversity, aggregators, regularisers."""

from advwm.attacks.aggregators import (
    AGGREGATORS,
    MGDA,
    Aggregator,
    CMUAFusion,
    Iterative,
    Single,
    Uniform,
    image_level_fusion,
    make_aggregator,
    min_norm_weights,
    min_norm_weights_batched,
)
from advwm.attacks.diversity import InputDiversity
from advwm.attacks.reference import cmua_reference_watermark
from advwm.attacks.regularizers import (
    REGULARIZERS,
    L2Regularizer,
    LogRegularizer,
    NoRegularizer,
    PenaltyRegularizer,
    Regularizer,
    make_regularizer,
)
from advwm.attacks.steps import (
    APGD,
    BASE_ATTACKS,
    IFGSM,
    MIFGSM,
    PGD,
    SignStepAttack,
    apgd_checkpoints,
    make_base_attack,
)

__all__ = [
    "AGGREGATORS",
    "APGD",
    "BASE_ATTACKS",
    "IFGSM",
    "MGDA",
    "MIFGSM",
    "PGD",
    "REGULARIZERS",
    "Aggregator",
    "CMUAFusion",
    "InputDiversity",
    "Iterative",
    "L2Regularizer",
    "LogRegularizer",
    "NoRegularizer",
    "PenaltyRegularizer",
    "Regularizer",
    "SignStepAttack",
    "Single",
    "Uniform",
    "apgd_checkpoints",
    "cmua_reference_watermark",
    "image_level_fusion",
    "make_aggregator",
    "make_base_attack",
    "make_regularizer",
    "min_norm_weights",
    "min_norm_weights_batched",
]
