"""Running a model against a guide and reading per-data-point log densities from the traces.

Every ELBO of the library is built from :func:`run_pair`: trace the guide (with a subset and β),
replay the model on the guide's latent values, and return the two traces with ``log_prob``
computed. :func:`per_datapoint` then sums the chosen sites into ``(L, B)`` tensors (particles ×
data points). Site log-probs are read from ``site["log_prob"]``, which Pyro has already scaled
(β) and masked (presence).

Particles are vectorised with a plate of size ``L`` at dim −2 (left of the data plate), so models
and guides must broadcast over leading dimensions.

On top of these, the per-modality terms the subset objectives and the metrics share:
:func:`observed_log_probs` (``{modality: (L, B)}``), :func:`masked_sum` (selects terms per row with
``torch.where``), :func:`latent_log_prob` (Σ over latent sites, optionally under stop-gradient
parameters) and :func:`draw_subset_terms`, which traces z_S ~ q(·|x_S), z_M ~ q(·|x_M) and the
guide with subset S replayed on z_M (a :class:`SubsetDraw`). Site names follow
:mod:`pyro_mmvae.sites`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..data.batch import MultimodalBatch, Subset
from ..data.validation import validate_for
from ..distributions.detach import detach_distribution
from ..nn.shared_encodings import shared_encodings
from ..sites import (
    DATA_PLATE,
    LATENT_SITE,
    OBSERVED_PREFIX,
    PRIVATE_PREFIX,
    is_observed_site,
    modality_of,
    observed_site,
)

PARTICLE_PLATE = "particles"


def _with_particles(fn: Callable, num_particles: int) -> Callable:
    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-2):
            return fn(*args, **kwargs)

    return wrapped


def trace_guide(
    guide,
    batch: MultimodalBatch,
    subset: Subset = None,
    beta: float = 1.0,
    num_particles: int = 1,
    log_prob=True,
    outer: Messenger | None = None,
):
    """Trace ``guide(batch, subset=subset, beta=beta)`` with ``num_particles`` vectorised particles.

    ``log_prob=False`` leaves the sites' ``log_prob`` uncomputed (for callers that evaluate q otherwise,
    e.g. under stop-gradient parameters). ``outer``: a handler installed around the particle plate.
    """
    program = _with_particles(guide, num_particles)
    if outer is not None:
        program = outer(program)
    tr = poutine.trace(program).get_trace(batch, subset=subset, beta=beta)
    if log_prob:
        tr.compute_log_prob()
    return tr


def trace_model(model, guide_trace, batch: MultimodalBatch, beta: float = 1.0, num_particles: int = 1):
    """Trace ``model(batch, beta=beta)`` replayed on the latent values of ``guide_trace``."""
    replayed = poutine.replay(_with_particles(model, num_particles), trace=guide_trace)
    tr = poutine.trace(replayed).get_trace(batch, beta=beta)
    tr.compute_log_prob()
    return tr


def run_pair(model, guide, batch, subset: Subset = None, beta: float = 1.0, num_particles: int = 1):
    """``(guide_trace, model_trace)`` for one draw of ``num_particles`` particles from q(·|x_subset).

    ``batch`` is validated against the modalities of model and guide first (once: a validated batch
    passes at once), and the safe batch (missing rows zero-filled) is what both programs see.
    """
    batch = validate_for(batch, model, guide)
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
            f"pyro.plate({DATA_PLATE!r}, {batch_size}) (global latent variables are not supported by this ELBO)"
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
    return {observed_site(k): float(v) for k, v in w.items()}


# ---------------------------------------------------------------------------------------------- traces → terms
def modality_of_site(site: str, batch: MultimodalBatch) -> str:
    """The modality name of observed site ``"x_<name>"``; raises if the site breaks the convention."""
    if not is_observed_site(site):
        raise ValueError(f"observed site {site!r} does not follow the '{OBSERVED_PREFIX}<modality>' naming convention")
    name = modality_of(site)
    if name not in batch.data:
        raise KeyError(f"observed site {site!r} refers to modality {name!r}, which the batch lacks ({batch.names})")
    return name


def observed_log_probs(model_trace, batch: MultimodalBatch, weights: Mapping[str, float] | None = None):
    """``{name: (L, B)}``: w_name · log p(x_name | latents of the trace), already zero where missing."""
    b = batch.batch_size
    out = {}
    for site in sample_sites(model_trace, observed=True):
        name = modality_of_site(site, batch)
        lp = site_log_prob(model_trace, site, b)
        if weights is not None and site in weights:
            lp = lp * weights[site]
        out[name] = lp
    return out


def masked_sum(terms: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Σ_name where(masks[name], terms[name], 0): ``(L, B)`` from ``(L, B)`` terms and ``(B,)`` masks."""
    total = None
    for name, lp in terms.items():
        kept = torch.where(masks[name], lp, torch.zeros_like(lp))
        total = kept if total is None else total + kept
    if total is None:
        raise ValueError(f"the model trace has no observed '{OBSERVED_PREFIX}<name>' sites")
    return total


def latent_log_prob(trace, batch_size: int, detach: bool = False) -> torch.Tensor:
    """Σ over the latent sites of a trace of their (β-scaled) log-densities, ``(L, B)``.

    ``detach=True`` evaluates them under stop-gradient parameters (q̄, STL); gradients then flow
    only through the sampled values.
    """
    names = sample_sites(trace, observed=False)
    if not names:
        raise ValueError(f"the trace has no latent sample sites (expected at least {LATENT_SITE!r})")
    return per_datapoint(trace, names, batch_size, fn_override=detach_distribution if detach else None)


def check_latent_sites(guide_trace, model_trace) -> None:
    """Raise unless the guide samples every latent site of the model (same names)."""
    guide_sites = set(sample_sites(guide_trace, observed=False))
    missing = [s for s in sample_sites(model_trace, observed=False) if s not in guide_sites]
    if missing:
        raise ValueError(
            f"model latent site(s) {missing} are not sampled by the guide; every latent site of the model "
            f"({LATENT_SITE!r}, '{PRIVATE_PREFIX}<name>') needs a guide site of the same name "
            f"(guide has {sorted(guide_sites)})"
        )


@dataclass
class SubsetDraw:
    """The per-data-point pieces of one draw, each ``(L, B)`` (particles × data points).

    ``subset``/``rest``: per-row masks S and M∖S (``{name: BoolTensor(B,)}``).
    ``recon_S``/``recon_M``: ``{name: w_name log p(x_name | z_S or z_M)}`` for EVERY present modality.
    ``log_p_S``/``log_p_M``: β log p of the latents of each draw. ``log_q_S``/``log_q_M``: β log q(z_S|x_S),
    β log q(z_M|x_M) (stop-gradient parameters when drawn with ``stl``). ``log_q_M_given_S``:
    β log q(z_M | x_S), never detached. Parts that were not requested are ``None``.
    """

    subset: dict
    rest: dict
    present: dict
    recon_S: dict | None = None
    log_p_S: torch.Tensor | None = None
    log_q_S: torch.Tensor | None = None
    recon_M: dict | None = None
    log_p_M: torch.Tensor | None = None
    log_q_M: torch.Tensor | None = None
    log_q_M_given_S: torch.Tensor | None = None


def draw_subset_terms(
    model,
    guide,
    batch: MultimodalBatch,
    subset: Mapping[str, torch.Tensor],
    beta: float = 1.0,
    num_particles: int = 1,
    stl: bool = False,
    weights: Mapping[str, float] | None = None,
    parts: Iterable[str] = ("S", "M", "cross"),
) -> SubsetDraw:
    """Trace guide and model for z_S ~ q(·|x_S) (part ``"S"``), z_M ~ q(·|x_M) (part ``"M"``) and
    replay the guide with subset S on z_M (part ``"cross"``, needs ``"M"``).

    ``subset`` must already be per-row masks within presence (``batch.subset_mask(...)``).
    ``batch`` is validated as in :func:`run_pair`. With all three parts, three programs run: the
    guide for z_M; the guide with subset S on 2L particles, L fresh (z_S) and L replaying z_M (the
    cross term in the same run); the model on those 2L particles. The guide runs share one encoding
    of each modality (:func:`~pyro_mmvae.nn.shared_encodings.shared_encodings`).
    """
    with shared_encodings():
        return _draw_subset_terms(model, guide, batch, subset, beta, num_particles, stl, weights, parts)


class _ReplayTrailingParticles(Messenger):
    """Draw the leading particles of every latent site afresh and take the trailing ones from ``trace``.

    Installed OUTSIDE the particle plate (so each site's distribution is already expanded to
    ``(2L, B)`` when it is reached): a run of a guide with 2L particles, ``trace`` holding L, gives L
    fresh draws and, on the last L particles, the guide evaluated at the values of ``trace``, exactly
    as a separate ``poutine.replay`` run would. The particle plate sits at dim −2 of the batch dims,
    so a site with event dim e concatenates along dim ``-(e + 2)``.
    """

    def __init__(self, trace):
        super().__init__()
        self.trace = trace

    def _pyro_sample(self, msg):
        if msg["is_observed"] or site_is_subsample(msg) or msg["name"] not in self.trace.nodes:
            return
        fn = msg["fn"]
        fresh = fn.rsample() if fn.has_rsample else fn.sample()
        dim = fresh.dim() - fn.event_dim - 2
        replayed = self.trace.nodes[msg["name"]]["value"]
        msg["value"] = torch.cat([fresh.narrow(dim, 0, fresh.shape[dim] - replayed.shape[dim]), replayed], dim)
        msg["done"] = True


def _draw_subset_terms(model, guide, batch, subset, beta, num_particles, stl, weights, parts) -> SubsetDraw:
    batch = validate_for(batch, model, guide)
    parts = set(parts)
    unknown = parts - {"S", "M", "cross"}
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; expected a subset of ('S', 'M', 'cross')")
    b, n = batch.batch_size, num_particles
    present = batch.subset_mask(None)
    rest = {k: present[k] & ~subset[k] for k in present}
    out = SubsetDraw(subset=dict(subset), rest=rest, present=present)
    # With STL the draws' own log q are evaluated under stop-gradient parameters only. Traces:
    # q(·|x_M) for z_M; q(·|x_S) for z_S, in the same run evaluated at z_M (2L particles: L fresh,
    # L replayed); the model once on all 2L particles (it does not depend on the subset).
    g_m = None
    if "M" in parts or "cross" in parts:
        g_m = trace_guide(guide, batch, None, beta, n, log_prob=not stl)
        if "M" in parts:
            out.log_q_M = latent_log_prob(g_m, b, detach=stl)
    if "cross" in parts and "S" in parts:
        # particles [:L] are z_S ~ q(·|x_S), particles [L:] are z_M with q(z_M|x_S) never detached
        both = trace_guide(guide, batch, subset, beta, 2 * n, outer=_ReplayTrailingParticles(g_m))
        _check_same_latent_sites(both, g_m)
        log_q = latent_log_prob(both, b)
        out.log_q_M_given_S = log_q[n:]
        out.log_q_S = latent_log_prob(both, b, detach=True)[:n] if stl else log_q[:n]
        g_s = both
    elif "cross" in parts:
        cross = trace_guide(poutine.replay(guide, trace=g_m), batch, subset, beta, n)
        _check_same_latent_sites(cross, g_m)
        out.log_q_M_given_S = latent_log_prob(cross, b)
        g_s = None
    elif "S" in parts:
        g_s = trace_guide(guide, batch, subset, beta, n, log_prob=not stl)
        out.log_q_S = latent_log_prob(g_s, b, detach=stl)
    else:
        g_s = None
    if g_s is not None:  # the model on z_S (and on z_M when g_s holds both: it does not depend on S)
        holds_m = "cross" in parts
        m = trace_model(model, g_s, batch, beta, 2 * n if holds_m else n)
        check_latent_sites(g_s, m)
        recon, log_p = observed_log_probs(m, batch, weights), latent_log_prob(m, b)
        if holds_m:
            out.recon_S = {k: v[:n] for k, v in recon.items()}
            out.log_p_S = log_p[:n]
            if "M" in parts:
                out.recon_M = {k: v[n:] for k, v in recon.items()}
                out.log_p_M = log_p[n:]
        else:
            out.recon_S, out.log_p_S = recon, log_p
    if "M" in parts and out.recon_M is None:
        m = trace_model(model, g_m, batch, beta, n)
        check_latent_sites(g_m, m)
        out.recon_M, out.log_p_M = observed_log_probs(m, batch, weights), latent_log_prob(m, b)
    return out


def _check_same_latent_sites(cross, g_m) -> None:
    if set(sample_sites(cross, observed=False)) != set(sample_sites(g_m, observed=False)):
        raise ValueError(
            "the guide samples different latent sites for subset S than for all modalities "
            f"({sorted(sample_sites(cross, observed=False))} vs {sorted(sample_sites(g_m, observed=False))}); "
            "q(z_M | x_S) needs every site (sample private latents of modalities outside S from their prior)"
        )
