"""Running a model against a guide and reading per-data-point log densities from the traces.

Every ELBO of the library is built from :func:`run_pair`: trace the guide (with a subset and β),
replay the model on the guide's latent values, and return the two traces with ``log_prob``
computed. :func:`per_datapoint` then sums the chosen sites into ``(L, B)`` tensors (particles ×
data points). Site log-probs are read from ``site["log_prob"]``, which Pyro has already scaled
(β) and masked (presence).

Particles are vectorised with a plate of size ``L`` at dim −2 (left of the data plate), so models
and guides must broadcast over leading dimensions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..data.batch import MultimodalBatch, Subset

PARTICLE_PLATE = "particles"


def _with_particles(fn: Callable, num_particles: int) -> Callable:
    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-2):
            return fn(*args, **kwargs)

    return wrapped


def trace_guide(guide, batch: MultimodalBatch, subset: Subset = None, beta: float = 1.0, num_particles: int = 1):
    """Trace ``guide(batch, subset=subset, beta=beta)`` with ``num_particles`` vectorised particles."""
    tr = poutine.trace(_with_particles(guide, num_particles)).get_trace(batch, subset=subset, beta=beta)
    tr.compute_log_prob()
    return tr


def trace_model(model, guide_trace, batch: MultimodalBatch, beta: float = 1.0, num_particles: int = 1):
    """Trace ``model(batch, beta=beta)`` replayed on the latent values of ``guide_trace``."""
    replayed = poutine.replay(_with_particles(model, num_particles), trace=guide_trace)
    tr = poutine.trace(replayed).get_trace(batch, beta=beta)
    tr.compute_log_prob()
    return tr


def run_pair(model, guide, batch, subset: Subset = None, beta: float = 1.0, num_particles: int = 1):
    """``(guide_trace, model_trace)`` for one draw of ``num_particles`` particles from q(·|x_subset)."""
    g = trace_guide(guide, batch, subset, beta, num_particles)
    m = trace_model(model, g, batch, beta, num_particles)
    return g, m


def sample_sites(trace, observed: bool | None = None) -> list[str]:
    """Names of the sample sites of ``trace`` (only observed / only latent when ``observed`` is set)."""
    out = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_do_not_score"):
            continue
        if observed is None or bool(site["is_observed"]) == observed:
            out.append(name)
    return out


def site_log_prob(trace, name: str, batch_size: int, fn_override=None) -> torch.Tensor:
    """Per-data-point ``log_prob`` of one site, shape ``(L, B)``.

    ``fn_override(site_fn)`` may replace the site's distribution (e.g. a stop-gradient copy); the
    site's scale and mask are then re-applied.
    """
    site = trace.nodes[name]
    if fn_override is None:
        lp = site["log_prob"]
    else:
        lp = fn_override(site["fn"]).log_prob(site["value"])
        if site["mask"] is not None:
            lp = torch.where(site["mask"], lp, torch.zeros_like(lp))
        lp = lp * site["scale"]
    if lp.dim() == 0 or lp.shape[-1] != batch_size:
        raise ValueError(
            f"site {name!r} has log_prob of shape {tuple(lp.shape)}: every site must lie inside "
            f"pyro.plate('data', {batch_size}) (global latent variables are not supported by this ELBO)"
        )
    return lp.reshape(-1, batch_size) if lp.dim() != 2 else lp


def per_datapoint(trace, names: Iterable[str], batch_size: int, weights=None, fn_override=None) -> torch.Tensor:
    """Σ over sites ``names`` of per-data-point log-probs (times ``weights[name]`` when given): ``(L, B)``."""
    total = None
    for name in names:
        lp = site_log_prob(trace, name, batch_size, fn_override)
        if weights is not None and name in weights:
            lp = lp * weights[name]
        total = lp if total is None else total + lp
    if total is None:
        raise ValueError("no sample sites to sum")
    return total


def observation_weights(model, override: dict | None = None) -> dict[str, float]:
    """Reconstruction weights keyed by observed site name ``x_<modality>``."""
    w = dict(getattr(model, "reconstruction_weights", None) or {})
    w.update(override or {})
    return {f"x_{k}": float(v) for k, v in w.items()}
