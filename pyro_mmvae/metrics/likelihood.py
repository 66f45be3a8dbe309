"""Importance-sampled log-likelihoods of multimodal VAEs: joint, marginal over a subset, conditional.

For a subset A of the observed modalities (per data point), with proposals z^l ~ q(· | x_A)::

    log p̂(x_A) = logsumexp_l [Σ_{s∈A} log p(x_s | z^l) + log p(z^l) − log q(z^l | x_A)] − log L

where p(z) and q cover every latent site of the model/guide pair (``"z"`` and any private
``"w_<name>"``; a private guide samples w_s ~ p(w_s | z′) for s ∉ A, whose terms then cancel).
Joint: A = M (every present modality). Marginal: A = S. Conditional:
log p̂(x_E | x_C) = log p̂(x_{E∪C}) − log p̂(x_C); with E = M this is log p̂(x) − log p̂(x_C).
Rows with A = ∅ get log p(x_∅) = 0 exactly.

Tables cited below are those of "Learning multi-modal generative models with permutation-invariant
encoders and tighter variational objectives". Reconstruction weights are NOT applied (evaluation
sees the plain model) and β = 1. Particles are processed ``chunk`` at a time (vectorised by a
plate left of the data plate) to bound memory.
"""

from __future__ import annotations

import math

import torch

from ..data.batch import MultimodalBatch, Subset
from ..data.dataset import iterate_batches
from ..data.validation import validate_for
from ..errors import check_int
from ..infer.traces import check_latent_sites, latent_log_prob, masked_sum, observed_log_probs, run_pair


def _stacked(masks: dict) -> torch.Tensor:
    return torch.stack(list(masks.values()), -1)


def log_weights(model, guide, batch: MultimodalBatch, subset: Subset = None, num_particles: int = 1) -> torch.Tensor:
    """Importance log-weights log p(x_A, z^l) − log q(z^l | x_A), ``(L, B)``, with z^l ~ q(·|x_A)."""
    masks = batch.subset_mask(subset)
    g, m = run_pair(model, guide, batch, masks, 1.0, num_particles)
    check_latent_sites(g, m)
    b = batch.batch_size
    return masked_sum(observed_log_probs(m, batch), masks) + latent_log_prob(m, b) - latent_log_prob(g, b)


def _log_marginal(model, guide, batch, masks: dict, num_particles: int, chunk: int) -> torch.Tensor:
    pieces, left = [], num_particles
    while left > 0:
        n = min(chunk, left)
        pieces.append(log_weights(model, guide, batch, masks, n))
        left -= n
    lw = torch.cat(pieces, 0)
    est = torch.logsumexp(lw, 0) - math.log(num_particles)
    return torch.where(_stacked(masks).any(-1), est, torch.zeros_like(est))


def log_likelihood(
    model,
    guide,
    batch: MultimodalBatch,
    subset_eval: Subset = None,
    subset_condition: Subset = None,
    num_particles: int = 512,
    chunk: int = 64,
) -> torch.Tensor:
    """Importance-sampled log-likelihood per data point, ``(B,)`` (no gradients).

    Args:
        subset_eval: the modalities E whose likelihood is estimated (default every present one);
            names or per-row masks ``{name: BoolTensor(B,)}``, always intersected with presence.
        subset_condition: ``None`` → log p̂(x_E) (joint when E = M, marginal otherwise);
            otherwise C, and the result is the conditional log p̂(x_E | x_C) = log p̂(x_{E∪C}) − log p̂(x_C).
        num_particles: L importance samples per data point (64 for Table 3, 512 for Tables 4-5).
        chunk: particles evaluated at once.
    """
    num_particles = check_int(num_particles, "num_particles", minimum=1)
    chunk = check_int(chunk, "chunk", minimum=1)
    batch = validate_for(batch, model, guide)
    with torch.no_grad():
        eval_masks = batch.subset_mask(subset_eval)
        if subset_condition is None:
            return _log_marginal(model, guide, batch, eval_masks, num_particles, chunk)
        cond = batch.subset_mask(subset_condition)
        union = {n: eval_masks[n] | cond[n] for n in eval_masks}
        joint = _log_marginal(model, guide, batch, union, num_particles, chunk)
        return joint - _log_marginal(model, guide, batch, cond, num_particles, chunk)


def conditional_log_likelihood(
    model, guide, batch: MultimodalBatch, subset_condition: Subset, num_particles: int = 512, chunk: int = 64
) -> torch.Tensor:
    """log p̂(x) − log p̂(x_C) per data point, ``(B,)``: every present modality given C."""
    return log_likelihood(model, guide, batch, None, subset_condition, num_particles, chunk)


def dataset_log_likelihood(
    model,
    guide,
    dataset,
    batch_size: int = 250,
    subset_eval: Subset = None,
    subset_condition: Subset = None,
    num_particles: int = 512,
    chunk: int = 64,
) -> torch.Tensor:
    """:func:`log_likelihood` over a whole dataset (in order), ``(N,)``.

    Subsets must be names (per-row masks do not survive batching). The papers report the SUM
    (Tables 3-4: in units of 10³ nats, i.e. ``out.sum() / 1e3``).
    """
    for s in (subset_eval, subset_condition):
        if isinstance(s, dict):
            raise TypeError("dataset_log_likelihood takes modality names as subsets, not per-row masks")
    device = next((p.device for p in model.parameters()), None) if hasattr(model, "parameters") else None
    out = []
    for batch in iterate_batches(dataset, batch_size, shuffle=False):
        if device is not None:
            batch = batch.to(device)
        out.append(log_likelihood(model, guide, batch, subset_eval, subset_condition, num_particles, chunk).cpu())
    return torch.cat(out)
