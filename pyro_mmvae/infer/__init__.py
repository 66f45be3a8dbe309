"""Inference: ELBOs, trace utilities, the trainer, schedules and checkpoints."""

from .checkpoint import CheckpointError, CheckpointMismatchError
from .elbo import BetaELBO
from .fit import FitResult, NonFiniteLossError, fit, load_stage
from .jnf import JNFLoss
from .masked import TCELBO, MaskedELBO, MixtureELBO
from .masks import MaskSampler, make_mask_sampler
from .schedules import Constant, CosineLR, LinearAnnealing, Schedule, StepLR
from .shared_info import canonical_correlations, dcca_loss, info_nce_loss, pairwise_loss, train_projectors

__all__ = [
    "BetaELBO",
    "MaskedELBO",
    "JNFLoss",
    "train_projectors",
    "dcca_loss",
    "info_nce_loss",
    "canonical_correlations",
    "pairwise_loss",
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
