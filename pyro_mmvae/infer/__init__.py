"""Inference: ELBOs, trace utilities, the trainer, schedules and checkpoints."""

from .checkpoint import CheckpointError, CheckpointMismatchError
from .elbo import BetaELBO
from .fit import FitResult, NonFiniteLossError, fit, load_stage
from .masked import TCELBO, MaskedELBO, MixtureELBO
from .masks import MaskSampler, make_mask_sampler
from .schedules import Constant, CosineLR, LinearAnnealing, Schedule, StepLR

__all__ = [
    "BetaELBO",
    "MaskedELBO",
    "MixtureELBO",
    "TCELBO",
    "MaskSampler",
    "make_mask_sampler",
    "fit",
    "load_stage",
    "FitResult",
    "NonFiniteLossError",
    "Schedule",
    "Constant",
    "LinearAnnealing",
    "CosineLR",
    "StepLR",
    "CheckpointError",
    "CheckpointMismatchError",
]
