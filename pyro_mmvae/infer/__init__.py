"""Inference: ELBOs, trace utilities, the trainer, schedules and checkpoints, subset posteriors and
the batched HMC kernel that samples them, conditional generation."""

from .checkpoint import CheckpointError, CheckpointMismatchError
from .conditional import ConditionalSamples, conditional_generate
from .elbo import BetaELBO
from .fit import FitResult, NonFiniteLossError, fit, load_stage
from .hmc import BatchedHMC, HMCRun, run_pyro_nuts, sample_subset_posterior
from .jnf import JNFLoss
from .masked import TCELBO, MaskedELBO, MixtureELBO
from .masks import MaskSampler, make_mask_sampler
from .schedules import Constant, CosineLR, LinearAnnealing, Schedule, StepLR
from .shared_info import (
    SharedInfoLoss,
    canonical_correlations,
    dcca_loss,
    info_nce_loss,
    pairwise_loss,
    train_projectors,
)
from .subset_posterior import ImproperPosteriorError, ImproperPosteriorWarning, SubsetPosterior, improper_points

__all__ = [
    "BetaELBO",
    "MaskedELBO",
    "JNFLoss",
    "train_projectors",
    "SharedInfoLoss",
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
    "SubsetPosterior",
    "ImproperPosteriorError",
    "ImproperPosteriorWarning",
    "improper_points",
    "BatchedHMC",
    "HMCRun",
    "sample_subset_posterior",
    "run_pyro_nuts",
    "conditional_generate",
    "ConditionalSamples",
]
