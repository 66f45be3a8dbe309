"""MoPoE's objective (Sutter et al. 2021, "Generalized Multimodal ELBO"): the ELBO under the mixture of subset PoEs.

The guide is :class:`~pyro_mmvae.guides.MoPoEGuide`: q(z | X) = (1/K) Σ_{S'} q_{S'}(z | x_{S'}) over
the K subsets S' of the present modalities M_b, each q_{S'} the product of experts of S' with the
prior expert (the authors' ``poe_fusion`` adds the prior expert to the full set's product only).
Their code (``thomassutter/MoPoE``, ``joint_elbo``) skips the empty subset, so K = 2^n − 1 for n
present modalities — build the guide with ``include_empty=False`` (what
:func:`~pyro_mmvae.experiments.baselines_poe.build_mopoe` does); the objective follows the guide's
own components either way. Per data point::

    L̂ = Σ_{m∈M_b} w_m log p(x_m | z) − β · KL̄,        z ~ q_{c_b},   c_b one component per row

    KL̄ = (1/K) Σ_{S'} KL(q_{S'} ‖ p)          (``kl="average"``: the authors' code, closed form)
    KL̄ ≈ log q_{c_b}(z) − log p(z)            (``kl="sampled"``: the one-sample estimate of the same)

KL̄ is the paper's upper bound of KL(q(z | X) ‖ p) by convexity, so L̂ is a lower bound of the MoPoE
ELBO, and E_{c}[E_{z~q_c} Σ_m log p(x_m|z)] is the reconstruction term under the mixture itself.
Sampling the component (``sampling``): ``"stratified"`` as the authors' ``mixture_component_selection``
(the batch's rows are split into consecutive blocks, one per component: one subset per row, every
subset equally often), or ``"random"`` (an independent uniform draw per row). z = μ_c + σ_c ε is
reparameterised within the chosen component; the choice itself carries no gradient (its weights are
fixed).

This is NOT :class:`~pyro_mmvae.infer.MixtureELBO` with a MoPoE guide: that bound draws S ⊆ M from a mask
sampler and then z from q(· | x_S) — for a MoPoE guide the mixture over the subsets of S — and uses
log q of that mixture. (With a :class:`~pyro_mmvae.guides.PoEGuide`, a mask sampler uniform over the non-empty
subsets, one particle and ``stl=False``, the MixtureELBO is this objective with ``sampling="random",
kl="sampled"``.)

Any guide whose ``posterior(batch)`` is a :class:`~pyro_mmvae.distributions.experts.DiagNormalMixture`
works (the weights need not be uniform); the prior p(z) must be a diagonal Gaussian for ``kl="average"``.
"""

from __future__ import annotations

import torch

from ..data.batch import MultimodalBatch
from ..errors import InputError, check_int
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

__all__ = ["MoPoEELBO", "KL_KINDS"]

KL_KINDS = ("average", "sampled")


class MoPoEELBO(TermsELBO):
    """The MoPoE objective (module docstring).

    Args:
        sampling: ``"stratified"`` (the authors') or ``"random"``: how each row's component is chosen.
        kl: ``"average"`` (closed-form mean of the components' KLs to the prior, the authors') or
            ``"sampled"`` (log q_c(z) − log p(z) at the drawn z).
        num_particles: L draws z per data point from its component (the bound is their mean).
        reconstruction_weights: optional ``{modality: w}`` overriding ``model.reconstruction_weights``.
    """

    def __init__(
        self, sampling: str = "stratified", kl: str = "average", num_particles: int = 1, reconstruction_weights=None
    ):
        num_particles = check_int(num_particles, "num_particles", minimum=1)
        super().__init__(num_particles=num_particles, max_plate_nesting=2, vectorize_particles=True)
        self.sampling = check_sampling(sampling)
        if kl not in KL_KINDS:
            raise InputError(f"kl must be one of {list(KL_KINDS)}, got {kl!r}")
        self.kl = kl
        self.reconstruction_weights = reconstruction_weights

    def terms(
        self,
        model,
        guide,
        batch: MultimodalBatch,
        beta: float = 1.0,
        components: torch.Tensor | None = None,
        weighted: bool = True,
    ) -> dict[str, torch.Tensor]:
        """``{"recon", "kl"}``, each ``(L, B)``: Σ_m w_m log p(x_m|z) and −β KL̄.

        ``components`` ``(B,)`` fixes each row's component index (into the guide's mixture) instead of choosing it.
        """
        beta = _check_beta(beta)
        weights = observation_weights(model, self.reconstruction_weights) if weighted else None
        locs, scales, mix_weights, active = mixture_components(guide.posterior(batch), "the MoPoE guide's q(z | X)")
        if components is None:
            components = choose_components(mix_weights, self.sampling)
        elif not bool(active.gather(1, components.view(-1, 1)).all()):
            raise InputError("components must index an active mixture component in every row")
        loc, scale = gather_component(locs, scales, components)
        replay = replay_terms(model, batch, loc, scale, beta, self.num_particles, weights)
        recon = masked_sum(replay.recon, batch.subset_mask(None))
        if self.kl == "sampled":
            return {"recon": recon, "kl": replay.log_p - replay.log_q}
        prior_loc, prior_scale = prior_gaussian(model, locs)
        per_component = gaussian_kl(locs, scales, prior_loc, prior_scale)  # (B, K)
        # where, not multiplication: an inactive component may hold a meaningless product.
        mean_kl = torch.where(active, mix_weights * per_component, torch.zeros_like(per_component)).sum(-1)
        return {"recon": recon, "kl": (-beta * mean_kl).expand_as(recon)}
