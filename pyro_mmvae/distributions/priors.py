"""Priors p(z) over the shared latent: standard Normal and a learned Gaussian mixture.

Each prior is an ``nn.Module`` whose ``forward()`` returns a distribution with batch shape ``()``
and event shape ``(D,)``; models expand it over the data plate.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I_D)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, torch.ones_like(self.loc)).to_event(1)

    def gaussian(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)``, each ``(D,)`` — the prior is Gaussian."""
        return self.loc, torch.ones_like(self.loc)


class GaussianMixturePrior(nn.Module):
    """p(z) = Σ_c π_c N(z; μ_c, diag σ_c²) with learned weights, means and scales.

    Means start spread on a random draw of scale ``init_spread``; scales start at 1.
    The cluster variable is marginalised analytically (log-sum-exp), which equals using the
    optimal q(c | z) = p(c | z) inside the ELBO: no discrete guide site is needed.
    """

    def __init__(self, latent_dim: int, num_components: int, init_spread: float = 1.0, seed: int = 0):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        g = torch.Generator().manual_seed(seed)
        self.latent_dim, self.num_components = latent_dim, num_components
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(init_spread * torch.randn(num_components, latent_dim, generator=g))
        self.raw_scales = nn.Parameter(torch.full((num_components, latent_dim), math.log(math.e - 1)))

    def scales(self) -> torch.Tensor:
        return 1e-3 + softplus(self.raw_scales)

    def forward(self) -> dist.TorchDistribution:
        comps = dist.Normal(self.locs, self.scales()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comps)


def make_prior(latent_dim: int, kind: str = "normal", num_components: int = 5) -> nn.Module:
    """``kind="normal"`` → N(0, I); ``kind="gmm"`` → learned mixture of ``num_components`` Gaussians."""
    if kind == "normal":
        return StandardNormalPrior(latent_dim)
    if kind == "gmm":
        return GaussianMixturePrior(latent_dim, num_components)
    raise ValueError(f"unknown prior {kind!r}; expected 'normal' or 'gmm'")
