"""MVAE's sub-sampled objective.

From Wu & Goodman 2018, "Multimodal Generative Models for Scalable Weakly-Supervised Learning".

The MVAE is a :class:`~pyro_mmvae.models.MultimodalVAE` with a product-of-experts guide that always
includes a prior expert (:class:`~pyro_mmvae.guides.PoEGuide`). Its objective sums ELBOs of several
subsets S of the modalities, each with its own draw z_S ~ q(z | x_S) and reconstructing ONLY the
modalities in S (the ELBO of the marginal p(x_S))::

    ELBO_S = Σ_{m∈S∩M_b} w_m log p(x_m | z_S) + β [log p(z_S) − log q(z_S | x_{S∩M_b})]

    L̂ = ELBO_M + Σ_{m∈M} ELBO_{m} + Σ_{j=1}^{k} ELBO_{S_j}

with S_1..S_k drawn per call, WITHOUT replacement and shared by the rows of the batch, from the
subsets of size 2 to M − 1 of the M modalities (all of them when fewer than k exist; none for two
modalities). This is the sub-sampling of the JNF authors' implementation (MultiVae's ``MVAE``,
default k = 1); the paper's "k random subsets". Per data point with present modalities M_b, a subset
is intersected with M_b and a subset with S ∩ M_b = ∅ contributes exactly 0 (MultiVae drops those
rows). The terms come from
Pyro traces (:func:`~pyro_mmvae.infer.traces.draw_subset_terms`), so any guide answering
``guide(batch, subset=S)`` works; the loss is −mean_b L̂ (particles averaged).

With exact posteriors q(z | x_S) = p(z | x_S) and β = 1 every ELBO_S equals log p(x_S) for every
draw, so L̂ = Σ_S log p(x_S) with zero variance (``tests/infer/test_mvae.py``).
"""

from __future__ import annotations

import itertools

import torch

from ..data.batch import MultimodalBatch
from ..errors import check_int
from .baseline_terms import TermsELBO
from .elbo import _check_beta
from .traces import draw_subset_terms, masked_sum, observation_weights

__all__ = ["MVAEELBO", "mvae_subsets"]


def mvae_subsets(names: list[str], num_random: int, generator: torch.Generator | None = None) -> list[tuple[str, ...]]:
    """The subsets of one MVAE step: all of ``names``, each name alone, then ``num_random`` random subsets
    of size 2..len(names)−1 (without replacement; fewer when fewer exist)."""
    names = list(names)
    middle = [c for r in range(2, len(names)) for c in itertools.combinations(names, r)]
    k = min(num_random, len(middle))
    picked = torch.randperm(len(middle), generator=generator)[:k].tolist() if k else []
    return [tuple(names), *[(n,) for n in names], *[middle[i] for i in sorted(picked)]]


class MVAEELBO(TermsELBO):
    """Σ over the MVAE's subsets of ELBO_S (module docstring).

    Args:
        num_subsets: k, random subsets of size 2..M−1 per step (MultiVae's default 1).
        num_particles: L draws z_S per subset and data point (the bound is their mean).
        stl: evaluate log q with stop-gradient parameters (sticking the landing).
        reconstruction_weights: optional ``{modality: w}`` overriding ``model.reconstruction_weights``.
        generator: optional ``torch.Generator`` for the subset draws (default: torch's global RNG).
    """

    def __init__(
        self,
        num_subsets: int = 1,
        num_particles: int = 1,
        stl: bool = False,
        reconstruction_weights=None,
        generator: torch.Generator | None = None,
    ):
        num_particles = check_int(num_particles, "num_particles", minimum=1)
        super().__init__(num_particles=num_particles, max_plate_nesting=2, vectorize_particles=True)
        self.num_subsets = check_int(num_subsets, "num_subsets", minimum=0)
        self.stl = bool(stl)
        self.reconstruction_weights = reconstruction_weights
        self.generator = generator

    def subset_elbo(self, model, guide, batch: MultimodalBatch, subset, beta: float = 1.0, weighted: bool = True):
        """ELBO_S per particle and data point ``(L, B)`` for one subset S (names or per-row masks); 0 if S ∩ M_b = ∅."""
        beta = _check_beta(beta)
        weights = observation_weights(model, self.reconstruction_weights) if weighted else None
        masks = batch.subset_mask(subset)
        d = draw_subset_terms(model, guide, batch, masks, beta, self.num_particles, self.stl, weights, ("S",))
        elbo = masked_sum(d.recon_S, masks) + d.log_p_S - d.log_q_S
        nonempty = torch.stack(list(masks.values()), -1).any(-1)
        return torch.where(nonempty, elbo, torch.zeros_like(elbo))

    def terms(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, subsets=None, weighted: bool = True):
        """``{subset: ELBO_S (L, B)}`` over ``subsets`` (default: a fresh draw of :func:`mvae_subsets`)."""
        if subsets is None:
            subsets = mvae_subsets(batch.names, self.num_subsets, self.generator)
        return {tuple(s): self.subset_elbo(model, guide, batch, list(s), beta, weighted) for s in subsets}
