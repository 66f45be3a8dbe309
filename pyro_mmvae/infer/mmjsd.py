"""MMJSD (Sutter et al. 2020, "Multimodal Generative Learning Utilizing Jensen-Shannon Divergence").

The guide is a mixture of the unimodal Gaussian experts, q(z | X) = Σ_{m∈M_b} π'_m q_m(z | x_m)
(:class:`~pyro_mmvae.guides.MoEGuide`, uniform π'). The objective replaces the KL to the prior by a
Jensen-Shannon divergence of the n experts of the present modalities M_b and the prior q_0 = p(z)
around a DYNAMIC prior, their weighted geometric mean (a PoE), per data point::

    L̂  = Σ_{m∈M_b} w_m log p(x_m | z) − β JS,            z ~ q_{c_b} (one expert per row)

    JS = Σ_{j=0}^{n} π_j KL(q_j ‖ f),     π_j = 1/(n + 1)     (q_0 = p(z))
    f  ∝ Π_{j=0}^{n} q_j^{π_j} = N(μ_f, Λ_f⁻¹),  Λ_f = Σ_j π_j Λ_j,  μ_f = Λ_f⁻¹ Σ_j π_j Λ_j μ_j

(the authors' ``calc_alphaJSD_modalities`` with ``alpha_poe`` and uniform ``alpha_modalities`` of length
n + 1, code ``thomassutter/mmjsd``). The reconstruction z comes from the mixture of the unimodal
experts WITHOUT the prior (``moe_fusion`` zeroes the prior's weight), one component per row,
``"stratified"`` over the batch as the authors' ``mixture_component_selection`` or ``"random"``; z is
reparameterised within the chosen expert. The modality-specific latent spaces of the paper are not
included.

For a mixture guide with non-uniform weights w_k the experts get π_k = w_k · n/(n + 1). Conditional
generation given S uses the dynamic prior of S (:func:`dynamic_prior`): the expert itself for a single
modality S, f of {p} ∪ {q_m : m ∈ S} otherwise — the subset distribution of the MoPoE authors' MMJSD code.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from ..data.batch import MultimodalBatch, Subset
from ..errors import check_int
from .baseline_terms import (
    TermsELBO,
    check_sampling,
    choose_components,
    gather_component,
    gaussian_kl,
    mixture_components,
    prior_gaussian,
    replay_terms,
)
from .elbo import _check_beta
from .traces import masked_sum, observation_weights

__all__ = ["MMJSDELBO", "dynamic_prior", "dynamic_prior_params", "jensen_shannon"]


def _js_weights(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(π_0 (B,), π (B, K))`` from mixture weights ``(B, K)`` (zero = off): π_0 = 1/(n+1), π_k = w_k n/(n+1)."""
    n = (weights > 0).sum(-1).to(weights.dtype)
    return 1 / (n + 1), weights * (n / (n + 1)).unsqueeze(-1)


def dynamic_prior_params(locs, scales, weights, prior_loc, prior_scale) -> tuple[torch.Tensor, torch.Tensor]:
    """``(μ_f, σ_f)`` ``(B, D)``: the π-weighted geometric mean of the prior ``(B, D)`` and experts ``(B, K, D)``."""
    pi0, pi = _js_weights(weights)
    on = (weights > 0).unsqueeze(-1)
    zero = torch.zeros_like(locs)
    prec0 = prior_scale.pow(-2)
    # where, not multiplication: an inactive component may hold meaningless parameters.
    prec_k = torch.where(on, pi.unsqueeze(-1) * scales.pow(-2), zero)
    precision = pi0.unsqueeze(-1) * prec0 + prec_k.sum(-2)
    eta = pi0.unsqueeze(-1) * prec0 * prior_loc + torch.where(on, prec_k * locs, zero).sum(-2)
    return eta / precision, precision.rsqrt()


def jensen_shannon(locs, scales, weights, prior_loc, prior_scale) -> torch.Tensor:
    """JS = Σ_j π_j KL(q_j ‖ f) per row ``(B,)`` (module docstring), the prior as q_0."""
    pi0, pi = _js_weights(weights)
    f_loc, f_scale = dynamic_prior_params(locs, scales, weights, prior_loc, prior_scale)
    kl_prior = gaussian_kl(prior_loc, prior_scale, f_loc, f_scale)
    kl_experts = gaussian_kl(locs, scales, f_loc.unsqueeze(-2), f_scale.unsqueeze(-2))  # (B, K)
    kl_experts = torch.where(weights > 0, pi * kl_experts, torch.zeros_like(kl_experts)).sum(-1)
    return pi0 * kl_prior + kl_experts


def dynamic_prior(guide, batch: MultimodalBatch, subset: Subset, prior) -> dist.TorchDistribution:
    """q(z | x_S) of MMJSD: the expert for a single modality S (the prior for S = ∅), else the dynamic prior of S.

    ``prior``: the model's prior p(z) (a model with ``prior_dist()``). Returns ``Normal(..).to_event(1)``,
    batch ``(B,)``.
    """
    locs, scales, weights, active = mixture_components(guide.posterior(batch, subset), "the MMJSD guide's q(z | x_S)")
    prior_loc, prior_scale = prior_gaussian(prior, locs[:, 0])
    f_loc, f_scale = dynamic_prior_params(locs, scales, weights, prior_loc, prior_scale)
    single = active.sum(-1) == 1
    one_loc, one_scale = gather_component(locs, scales, active.int().argmax(-1))
    loc = torch.where(single.unsqueeze(-1), one_loc, f_loc)
    scale = torch.where(single.unsqueeze(-1), one_scale, f_scale)
    return dist.Normal(loc, scale).to_event(1)


class MMJSDELBO(TermsELBO):
    """The MMJSD objective (module docstring) for a mixture-of-experts guide.

    Args:
        sampling: ``"stratified"`` (the authors') or ``"random"``: how each row's expert is chosen.
        num_particles: L draws z per data point from its expert (the bound is their mean).
        reconstruction_weights: optional ``{modality: w}`` overriding ``model.reconstruction_weights``.
    """

    def __init__(self, sampling: str = "stratified", num_particles: int = 1, reconstruction_weights=None):
        num_particles = check_int(num_particles, "num_particles", minimum=1)
        super().__init__(num_particles=num_particles, max_plate_nesting=2, vectorize_particles=True)
        self.sampling = check_sampling(sampling)
        self.reconstruction_weights = reconstruction_weights

    def terms(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, components=None, weighted=True) -> dict:
        """``{"recon", "js"}``, each ``(L, B)``: Σ_m w_m log p(x_m|z) and −β JS.

        ``components`` ``(B,)`` fixes each row's expert (an index into the guide's mixture).
        """
        beta = _check_beta(beta)
        weights = observation_weights(model, self.reconstruction_weights) if weighted else None
        locs, scales, mix_weights, _ = mixture_components(guide.posterior(batch), "the MMJSD guide's q(z | X)")
        if components is None:
            components = choose_components(mix_weights, self.sampling)
        loc, scale = gather_component(locs, scales, components)
        replay = replay_terms(model, batch, loc, scale, beta, self.num_particles, weights)
        recon = masked_sum(replay.recon, batch.subset_mask(None))
        prior_loc, prior_scale = prior_gaussian(model, loc)
        js = jensen_shannon(locs, scales, mix_weights, prior_loc, prior_scale)
        return {"recon": recon, "js": (-beta * js).expand_as(recon)}
