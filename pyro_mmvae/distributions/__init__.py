"""Likelihood families, priors and the distributions built from experts."""

from .experts import (
    DiagNormalMixture,
    gaussian_product,
    mixture_of_experts,
    mixture_of_products,
    poe_variance,
    product_of_experts,
)
from .likelihoods import Likelihood
from .priors import GaussianMixturePrior, StandardNormalPrior, make_prior

__all__ = [
    "Likelihood",
    "GaussianMixturePrior",
    "StandardNormalPrior",
    "make_prior",
    "DiagNormalMixture",
    "gaussian_product",
    "product_of_experts",
    "mixture_of_experts",
    "mixture_of_products",
    "poe_variance",
]
