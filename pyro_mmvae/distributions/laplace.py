"""Laplace latents: the prior and posterior family of MMVAE and MMVAE+, next to the Gaussian one.

MMVAE ("Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative Models", Shi et
al. 2019) and MMVAE+ (Palumbo et al. 2023) use factorised Laplace priors and posteriors. Here:

- :func:`diagonal` — the factorised ``"normal"`` or ``"laplace"`` distribution ``(loc, scale)`` with
  event ``(D,)``; :data:`FAMILIES` lists the names;
- :class:`SoftmaxScalePrior` — the authors' prior parameterisation: location 0 and scale
  ``softmax(ℓ) · D + eta`` (ℓ = 0 gives scale 1 in every dimension; learned ℓ moves scale between
  dimensions while the scales keep summing to D), learned or fixed;
- :class:`DiagLaplaceMixture` — Σ_k w_k Π_d Laplace(μ_kd, b_kd) with pathwise gradients through the
  component choice, the Laplace counterpart of
  :class:`~pyro_mmvae.distributions.experts.DiagNormalMixture`;
- :func:`mixture_of_experts` — the MoE Σ_{s∈S} (1/|S|) q_s over per-row subsets for either family
  (S = ∅ → the family's standard distribution).

Shapes as in :mod:`pyro_mmvae.distributions.experts`: expert parameters ``(*batch, M, D)``, masks
``(*batch, M)``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

from .detach import register_detacher
from .experts import DiagNormalMixture, _check_experts, _masked_logits
from .experts import mixture_of_experts as normal_mixture_of_experts

FAMILIES = ("normal", "laplace")

_LOG_2 = math.log(2.0)


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return family


def diagonal(family: str, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
    """Π_d Normal(loc_d, scale_d) or Π_d Laplace(loc_d, scale_d): batch ``loc.shape[:-1]``, event ``(D,)``."""
    cls = dist.Normal if check_family(family) == "normal" else dist.Laplace
    return cls(loc, scale).to_event(1)


class SoftmaxScalePrior(nn.Module):
    """A factorised prior ``family(0, softmax(ℓ) · D + eta)``; ``forward()`` → batch ``()``, event ``(D,)``.

    Args:
        dim: D.
        family: ``"laplace"`` (the authors') or ``"normal"``.
        learn: learn ℓ (initialised at 0, scale 1); fixed scale 1 otherwise.
        eta: added to the scale (the authors' ``Constants.eta``).
    """

    def __init__(self, dim: int, family: str = "laplace", learn: bool = False, eta: float = 0.0):
        super().__init__()
        self.dim, self.family, self.eta = int(dim), check_family(family), float(eta)
        raw = torch.zeros(self.dim)
        if learn:
            self.raw_scale = nn.Parameter(raw)
        else:
            self.register_buffer("raw_scale", raw)
        self.register_buffer("loc", torch.zeros(self.dim))

    def scale(self) -> torch.Tensor:
        """``softmax(ℓ) · D + eta``, shape ``(D,)``."""
        return torch.softmax(self.raw_scale, -1) * self.dim + self.eta

    def forward(self) -> dist.TorchDistribution:
        return diagonal(self.family, self.loc, self.scale())


class DiagLaplaceMixture(DiagNormalMixture):
    """Σ_k w_k Π_d Laplace(μ_kd, b_kd), ``w = softmax(logits)``; batch ``batch``, event ``(D,)``.

    Args as in :class:`~pyro_mmvae.distributions.experts.DiagNormalMixture` (``scales`` are the
    Laplace scales b). ``rsample`` attaches pathwise gradients by the same implicit
    reparameterisation through the sequential transform, with the Laplace CDF
    F(t) = ½ + ½ sign(t)(1 − e^{−|t|}) and density e^{−|t|}/(2b), t = (z − μ)/b.
    """

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagLaplaceMixture, _instance)
        return super().expand(batch_shape, _instance=new)

    @property
    def variance(self) -> torch.Tensor:
        w = self.log_weights.exp().unsqueeze(-1)
        second = (w * (2 * self.scales**2 + self.locs**2)).sum(-2)
        return second - self.mean**2

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``Σ_d log Laplace(value_d; μ_kd, b_kd)`` for every component: ``(*sample, *batch, K)``."""
        t = (value.unsqueeze(-2) - self.locs) / self.scales
        return (-t.abs() - self.scales.log() - _LOG_2).sum(-1)

    def _draw(self, sample_shape: torch.Size) -> torch.Tensor:
        """Ancestral sample ``(*sample, *batch, D)`` without gradients."""
        with torch.no_grad():
            shape = sample_shape + self.batch_shape
            k, d = self.locs.shape[-2:]
            index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            gather = index[..., None, None].expand(*shape, 1, d)
            loc = self.locs.expand(*shape, k, d).gather(-2, gather).squeeze(-2)
            scale = self.scales.expand(*shape, k, d).gather(-2, gather).squeeze(-2)
            return torch.distributions.Laplace(loc, scale).sample()

    def _attach_pathwise_gradient(self, z: torch.Tensor) -> torch.Tensor:
        """Same values as ``z``; gradients dz_d/dθ = −(∂F_d/∂θ)/f_d, one dimension at a time."""
        tiny = torch.finfo(z.dtype).tiny
        cumulative = torch.zeros((), dtype=z.dtype, device=z.device)  # Σ_{j<d} log Laplace(z_j; μ_kj, b_kj)
        out = []
        for d in range(z.shape[-1]):
            loc, scale = self.locs[..., d], self.scales[..., d]  # (*batch, K)
            log_w = torch.log_softmax(self.logits + cumulative, dim=-1)  # weights given z_{<d}
            z_d = z[..., d]
            t = (z_d.unsqueeze(-1) - loc) / scale
            cdf = (log_w.exp() * (0.5 + 0.5 * torch.sign(t) * -torch.expm1(-t.abs()))).sum(-1)
            log_density = torch.logsumexp(log_w - t.abs() - scale.log() - _LOG_2, dim=-1)
            # value z_d, gradient −(dF)/f: the implicit function theorem applied to F_d(z_d) = u.
            z_d = z_d - (cdf - cdf.detach()) / log_density.detach().exp().clamp_min(tiny)
            out.append(z_d)
            t_grad = (z_d.unsqueeze(-1) - loc) / scale
            cumulative = cumulative + (-t_grad.abs() - scale.log() - _LOG_2)
        return torch.stack(out, dim=-1)


@register_detacher(DiagLaplaceMixture)
def _detach_laplace_mixture(d: DiagLaplaceMixture) -> DiagLaplaceMixture:
    return DiagLaplaceMixture(d.locs.detach(), d.scales.detach(), d.logits.detach(), validate_args=False)


def mixture_of_experts(family: str, locs: torch.Tensor, scales: torch.Tensor, mask: torch.Tensor):
    """q(z | x_S) = Σ_{s∈S} (1/|S|) family(μ_s, σ_s); rows with S = ∅ get family(0, 1).

    Args:
        family: ``"normal"`` (a :class:`~pyro_mmvae.distributions.experts.DiagNormalMixture`, as
            :func:`~pyro_mmvae.distributions.experts.mixture_of_experts`) or ``"laplace"``
            (a :class:`DiagLaplaceMixture`).
        locs, scales: ``(*batch, M, D)``; mask: bool ``(*batch, M)``.

    Returns:
        A mixture with K = M + 1 components (the last one is family(0, 1), switched on only in rows
        whose mask is empty), batch ``batch``, event ``(D,)``.
    """
    if check_family(family) == "normal":
        return normal_mixture_of_experts(locs, scales, mask)
    _check_experts(locs, scales, mask, "scales")
    empty = ~mask.any(-1, keepdim=True)
    prior_loc = torch.zeros_like(locs[..., :1, :])
    all_locs = torch.cat([locs, prior_loc], dim=-2)
    all_scales = torch.cat([scales, torch.ones_like(prior_loc)], dim=-2)
    return DiagLaplaceMixture(all_locs, all_scales, _masked_logits(torch.cat([mask, empty], -1), locs.dtype))
