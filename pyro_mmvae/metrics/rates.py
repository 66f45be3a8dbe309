"""Multimodal rates and distortions (the information-theoretic quantities of Table 1).

Table 1 of "Learning multi-modal generative models with permutation-invariant encoders and tighter
variational objectives".

For a data point with observed modalities M and a subset S ⊆ M (\\S = M ∖ S), with single draws
z_M ~ q(·|x_M) and z_S ~ q(·|x_S)::

    full reconstruction   −D_M     = Σ_{s∈M}  log p(x_s | z_M)
    full rate              R_M     = log q(z_M | x_M) − log p(z_M)
    cross prediction      −D^c_\\S  = Σ_{s∈\\S} log p(x_s | z_S)
    cross rate             R_\\S    = log q(z_M | x_M) − log q(z_M | x_S)

Densities cover every latent site of the model/guide pair (shared ``"z"`` and private
``"w_<name>"``). β = 1 and no reconstruction weights (evaluation of the plain model). Rows with
S = M contribute 0 to both cross terms. ``num_samples`` > 1 averages several draws per point.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.batch import MultimodalBatch, Subset
from ..data.dataset import iterate_batches
from ..data.validation import validate_for
from ..errors import check_int
from ..infer.masks import make_mask_sampler
from ..infer.traces import draw_subset_terms, masked_sum

QUANTITIES = ("full_reconstruction", "full_rate", "cross_prediction", "cross_rate")


def _resolve_subset(batch: MultimodalBatch, subset) -> dict:
    if subset is None:
        raise ValueError("give the conditioning subset S (names, per-row masks, or a mask sampler such as 'uniform')")
    if isinstance(subset, str) and subset in ("paper", "uniform", "singletons", "all") and subset not in batch.data:
        subset = make_mask_sampler(subset)
    if callable(subset):
        return batch.subset_mask(subset(batch))
    return batch.subset_mask(subset)


def rates_and_distortions(
    model, guide, batch: MultimodalBatch, subset: Subset | str | Callable, num_samples: int = 1
) -> dict[str, torch.Tensor]:
    """The four quantities per data point, ``{name: (B,)}`` (no gradients).

    ``subset``: S as names or per-row masks, or a mask sampler (a callable ``batch -> masks`` or
    one of ``"paper"``, ``"uniform"``, ``"singletons"``, ``"all"``) to draw S per data point.
    """
    num_samples = check_int(num_samples, "num_samples", minimum=1)
    batch = validate_for(batch, model, guide)
    with torch.no_grad():
        s = _resolve_subset(batch, subset)
        d = draw_subset_terms(model, guide, batch, s, beta=1.0, num_particles=num_samples, stl=False)
        out = {
            "full_reconstruction": masked_sum(d.recon_M, d.present),
            "full_rate": d.log_q_M - d.log_p_M,
            "cross_prediction": masked_sum(d.recon_S, d.rest),
            "cross_rate": d.log_q_M - d.log_q_M_given_S,
        }
        rest_nonempty = torch.stack(list(d.rest.values()), -1).any(-1)
        for k in ("cross_prediction", "cross_rate"):
            out[k] = torch.where(rest_nonempty, out[k], torch.zeros_like(out[k]))
        return {k: v.mean(0) for k, v in out.items()}


def dataset_rates_and_distortions(
    model, guide, dataset, subset: Subset | str | Callable, batch_size: int = 500, num_samples: int = 1
) -> dict[str, float]:
    """Dataset averages of :func:`rates_and_distortions` (subset: names or a mask sampler)."""
    if isinstance(subset, dict):
        raise TypeError("dataset_rates_and_distortions takes names or a mask sampler, not per-row masks")
    device = next((p.device for p in model.parameters()), None) if hasattr(model, "parameters") else None
    sums = dict.fromkeys(QUANTITIES, 0.0)
    n = 0
    for batch in iterate_batches(dataset, batch_size, shuffle=False):
        if device is not None:
            batch = batch.to(device)
        r = rates_and_distortions(model, guide, batch, subset, num_samples)
        for k in QUANTITIES:
            sums[k] += r[k].double().sum().item()
        n += batch.batch_size
    return {k: v / n for k, v in sums.items()}
