"""Likelihood families, priors and the distributions built from experts."""

from .likelihoods import Likelihood
from .priors import GaussianMixturePrior, StandardNormalPrior, make_prior

__all__ = ["Likelihood", "GaussianMixturePrior", "StandardNormalPrior", "make_prior"]
