"""Subset objectives of permutation-invariant multimodal VAEs: the masked bound and its siblings.

From "Learning multi-modal generative models with permutation-invariant encoders and tighter
variational objectives" ("the paper" below).

For every data point with observed modalities M, a mask sampler ρ draws S ⊆ M (see
:mod:`pyro_mmvae.infer.masks`); \\S = M ∖ S. Two independent draws are made,
z_S ~ q(·|x_S) and z_M ~ q(·|x_M), and q̄ is q with stop-gradient parameters (STL).

Masked bound (``MaskedELBO``, paper Algorithm 1 / Eq. 3 + Eq. 5)::

    L̂ = Σ_{s∈S} w_s log p(x_s|z_S) + β log p(z_S) − β log q̄(z_S|x_S)              [L_S]
      + Σ_{s∈\\S} w_s log p(x_s|z_M) + β log q(z_M|x_S) − β log q̄(z_M|x_M)           [L_\\S]

Mixture bound (``MixtureELBO``, Eq. 1)::

    L̂ = Σ_{s∈M} w_s log p(x_s|z_S) + β log p(z_S) − β log q̄(z_S|x_S)

TC bound (``TCELBO``, Remark 17)::

    L̂ = Σ_{s∈M} w_s log p(x_s|z_M) − β log q̄(z_M|x_M) + β log q(z_M|x_S)

Generic formulation. Every term comes from Pyro traces, so any model/guide pair following the
site convention works: ``model(batch, beta)`` with latent site ``"z"`` (plus optional private
latents ``"w_<name>"``) and observed sites ``"x_<name>"``; ``guide(batch, subset, beta)``. The
guide is traced with S = M (→ z_M), then with subset S and twice the particles: the first L are
fresh draws z_S, the last L REPLAY the M-trace's latent values, which gives log q(z_M | x_S) summed
over all latent sites, in the same run. For a guide with private latents, which samples w_s from the
prior p(w_s | z′) for s ∉ S, that replay is exactly Algorithm 2's
β[log q(z′_M|x_S) + log q(z̃_{M,S}|z′_M, x_S) + log p(z̃_{M,\\S}|z′_M)].
The model, which does not depend on S, is replayed once on all 2L particles (z_S and z_M): three
program runs per evaluation (:func:`~pyro_mmvae.infer.traces.draw_subset_terms`). Per-row masks
select likelihood terms with ``torch.where`` (never multiplication, so a non-finite masked entry
cannot leak). β enters through
the sites' ``poutine.scale`` in model and guide, so it multiplies every log p(z) and log q term.
Reconstruction weights w_s multiply log p(x_s|·) in training only (``weighted=False`` evaluates
the plain bound).

Special cases: S = M ⇒ ``L_\\S = 0`` (set exactly, which also drops its zero-mean STL score noise);
S = ∅ ⇒ L_∅ = β[log p(z_∅) − log q̄(z_∅|∅)], a one-sample estimate of −β KL(q(·|∅) ‖ p).

With L particles the loss is −mean_b [logsumexp_l L̂_{b,l} − log L] (importance weighting of the
SUM of both terms; S is shared by the particles of a data point). L = 1 is the plain bound.

All ELBOs subclass ``pyro.infer.ELBO``: use them with ``pyro.infer.SVI`` (``svi.step(batch, beta)``)
or as ``MaskedELBO()(model, guide)`` → an ``nn.Module`` for plain torch optimisers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from ..data.batch import MultimodalBatch, Subset
from .elbo import LossELBO, _check_beta
from .masks import make_mask_sampler
from .traces import SubsetDraw, draw_subset_terms, masked_sum, observation_weights


def _nonempty(masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(masks.values()), -1).any(-1)


# ---------------------------------------------------------------------------------------------- ELBOs
class _SubsetELBO(LossELBO):
    """Shared machinery: mask sampling, trace drawing, importance-weighted loss."""

    parts: tuple[str, ...] = ()

    def __init__(
        self,
        num_particles: int = 1,
        stl: bool = True,
        mask_sampler: str | Callable = "paper",
        reconstruction_weights: Mapping[str, float] | None = None,
    ):
        if int(num_particles) < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        super().__init__(num_particles=int(num_particles), max_plate_nesting=2, vectorize_particles=True)
        self.stl = bool(stl)
        self.mask_sampler = make_mask_sampler(mask_sampler)
        self.reconstruction_weights = reconstruction_weights

    # -- masks
    def sample_mask(self, batch: MultimodalBatch) -> dict:
        """A fresh S ⊆ M per data point from the mask sampler: ``{name: BoolTensor(B,)}``."""
        return batch.subset_mask(self.mask_sampler(batch))

    def _resolve_mask(self, batch: MultimodalBatch, mask: Subset) -> dict:
        # ``mask=None`` means "sample one"; pass ``batch.names`` for S = M.
        return self.sample_mask(batch) if mask is None else batch.subset_mask(mask)

    # -- bounds
    def draw(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, mask: Subset = None, weighted=True):
        """The traced pieces of one draw (see :class:`SubsetDraw`)."""
        beta = _check_beta(beta)
        weights = observation_weights(model, self.reconstruction_weights) if weighted else None
        subset = self._resolve_mask(batch, mask)
        return draw_subset_terms(model, guide, batch, subset, beta, self.num_particles, self.stl, weights, self.parts)

    def combine(self, d: SubsetDraw) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def terms(
        self, model, guide, batch: MultimodalBatch, beta: float = 1.0, mask: Subset = None, weighted: bool = True
    ) -> dict[str, torch.Tensor]:
        """The bound's named terms, each ``(L, B)``; ``mask=None`` samples S, otherwise S = ``mask`` ∩ M."""
        return self.combine(self.draw(model, guide, batch, beta, mask, weighted))

    def per_datapoint_bound(
        self, model, guide, batch: MultimodalBatch, beta: float = 1.0, mask: Subset = None, weighted: bool = True
    ) -> torch.Tensor:
        """L̂ per particle and data point, ``(L, B)`` (the sum of :meth:`terms`)."""
        return sum(self.terms(model, guide, batch, beta, mask, weighted).values())

    def differentiable_loss(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, mask: Subset = None):
        """−mean_b [logsumexp_l L̂_{b,l} − log L]; a scalar tensor with gradients."""
        bound = self.per_datapoint_bound(model, guide, batch, beta, mask)
        per_point = torch.logsumexp(bound, 0) - math.log(bound.shape[0])
        return -per_point.mean()


class MaskedELBO(_SubsetELBO):
    """The masked multimodal bound ``L_S + L_\\S`` (Algorithms 1 and 2 of the permutation-invariant MVAE paper).

    Args:
        num_particles: L importance particles per data point (L = 1: the plain bound).
        stl: evaluate the entropy-type terms log q(z_S|x_S), log q(z_M|x_M) with stop-gradient
            parameters (sticking the landing). log q(z_M | x_S) is never detached.
        mask_sampler: ``"paper"`` (γ ~ U(0,1), m_j ~ Bern(γ)), ``"uniform"`` (each observed modality
            kept with probability ½, as in the paper's published code), ``"singletons"``, ``"all"``,
            or a callable ``batch -> {name: BoolTensor(B,)}``. Fresh masks are drawn every call.
        reconstruction_weights: optional ``{modality: w}`` overriding ``model.reconstruction_weights``.

    Call signature: ``differentiable_loss(model, guide, batch, beta=1.0, mask=None)``; ``mask``
    fixes S (a subset as in :meth:`MultimodalBatch.subset_mask`) instead of sampling it.
    """

    parts = ("S", "M", "cross")

    def combine(self, d: SubsetDraw) -> dict[str, torch.Tensor]:
        l_s = masked_sum(d.recon_S, d.subset) + d.log_p_S - d.log_q_S
        l_rest = masked_sum(d.recon_M, d.rest) + d.log_q_M_given_S - d.log_q_M
        # S = M: the conditional term is log p(x_∅ | x_M) = 0 exactly.
        l_rest = torch.where(_nonempty(d.rest), l_rest, torch.zeros_like(l_rest))
        return {"L_S": l_s, "L_rest": l_rest}


class MixtureELBO(_SubsetELBO):
    """Mixture-based bound: Σ_{s∈M} w_s log p(x_s|z_S) + β log p(z_S) − β log q̄(z_S|x_S), z_S ~ q(·|x_S).

    Same arguments as :class:`MaskedELBO`.
    """

    parts = ("S",)

    def combine(self, d: SubsetDraw) -> dict[str, torch.Tensor]:
        return {"recon": masked_sum(d.recon_S, d.present), "latent": d.log_p_S - d.log_q_S}


class TCELBO(_SubsetELBO):
    """TC-style bound: Σ_{s∈M} w_s log p(x_s|z_M) − β log q̄(z_M|x_M) + β log q(z_M|x_S), z_M ~ q(·|x_M).

    Same arguments as :class:`MaskedELBO`.
    """

    parts = ("M", "cross")

    def combine(self, d: SubsetDraw) -> dict[str, torch.Tensor]:
        return {"recon": masked_sum(d.recon_M, d.present), "latent": d.log_q_M_given_S - d.log_q_M}
