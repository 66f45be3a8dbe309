"""Inference: objectives (ELBOs and the other trainer losses), trace utilities, subset posteriors and
the batched HMC kernel that samples them, conditional generation; the baselines' objectives (JMVAE, MVAE,
MMVAE, MoPoE, MVTCAE, MMVAE+, MMJSD) and DReG. The trainer is :mod:`pyro_mmvae.train`."""

from .conditional import (
    ConditionalSamples,
    GuideLatents,
    JNFLatents,
    LatentSampler,
    conditional_decoder,
    conditional_generate,
)
from .dreg import dreg_log_mean_exp
from .elbo import BetaELBO
from .jmvae import JMVAEELBO, JMVAEGuide
from .jnf import JNFLoss
from .masked import TCELBO, MaskedELBO, MixtureELBO
from .masks import MaskSampler, make_mask_sampler
from .mcmc import BatchedHMC, HMCRun, run_pyro_nuts, sample_subset_posterior
from .mmjsd import MMJSDELBO
from .mmvae import MMVAEELBO, StratifiedMixtureELBO
from .mmvaeplus import MMVAEPlusELBO
from .mopoe import MoPoEELBO
from .mvae import MVAEELBO
from .mvtcae import MVTCAEELBO, MVTCAEGuide
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
    "dreg_log_mean_exp",
    "JMVAEELBO",
    "JMVAEGuide",
    "MMJSDELBO",
    "MMVAEELBO",
    "StratifiedMixtureELBO",
    "MMVAEPlusELBO",
    "MoPoEELBO",
    "MVAEELBO",
    "MVTCAEELBO",
    "MVTCAEGuide",
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
    "conditional_decoder",
    "LatentSampler",
    "GuideLatents",
    "JNFLatents",
    "ConditionalSamples",
]
