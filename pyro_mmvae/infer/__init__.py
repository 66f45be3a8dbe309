"""Inference: objectives (ELBOs and the other trainer losses), trace utilities, subset posteriors and
the batched HMC kernel that samples them, conditional generation. The trainer is :mod:`pyro_mmvae.train`."""

from .conditional import ConditionalSamples, conditional_generate
from .elbo import BetaELBO
from .jnf import JNFLoss
from .masked import TCELBO, MaskedELBO, MixtureELBO
from .masks import MaskSampler, make_mask_sampler
from .mcmc import BatchedHMC, HMCRun, run_pyro_nuts, sample_subset_posterior
from .properness import ImproperPosteriorError, ImproperPosteriorWarning, improper_points
from .shared_info import (
    SharedInfoLoss,
    canonical_correlations,
    dcca_loss,
    info_nce_loss,
    pairwise_loss,
)
from .subset_posterior import SubsetPosterior

__all__ = [
    "BetaELBO",
    "MaskedELBO",
    "JNFLoss",
    "SharedInfoLoss",
    "dcca_loss",
    "info_nce_loss",
    "canonical_correlations",
    "pairwise_loss",
    "MixtureELBO",
    "TCELBO",
    "MaskSampler",
    "make_mask_sampler",
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
