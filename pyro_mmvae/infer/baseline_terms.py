"""Pieces the product-of-experts baselines share (JMVAE, MVAE, MoPoE, MVTCAE, MMJSD).

- :func:`diag_normal` / :func:`gaussian_kl` / :func:`prior_gaussian`: diagonal Gaussians as
  ``(loc, scale)`` pairs ``(*batch, D)``, their closed-form KL summed over D, and the model's prior
  p(z) in that form;
- :func:`gaussian_guide`: a guide program that samples ``"z"`` ~ N(loc_b, diag scale_b²) row by
  row. An objective that picks its own q for every data point (one mixture component, one subset's
  product) replays the model on it with :func:`replay_terms`, which returns the same per-data-point
  pieces as every other objective of the library: ``{modality: w_m log p(x_m | z)}`` and the
  β-scaled ``log p(z)``, ``log q(z)``, each ``(L, B)`` (particles × data points);
- :func:`choose_components`: one mixture component per data point, "stratified" over the batch (as
  the MoPoE/mmJSD authors' code does: the rows are split into consecutive blocks, one per component,
  sized by the component weights) or drawn at random from the weights;
- :func:`mixture_components`: ``(locs, scales, weights, active)`` of a
  :class:`~pyro_mmvae.distributions.experts.DiagNormalMixture` posterior;
- :func:`pyro_module_context`: what ``PyroModule.__call__`` does for its parameters, for objectives
  that call a guide's methods (``posterior``, ``experts``) directly rather than run it as a program,
  so that ``pyro.infer.SVI`` sees (and trains) those parameters too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from ..data.batch import MultimodalBatch
from ..distributions.experts import DiagNormalMixture
from ..errors import InputError, InputTypeError
from ..sites import DATA_PLATE, LATENT_SITE
from .elbo import LossELBO
from .subset_posterior import diagonal_gaussian_params
from .traces import check_latent_sites, latent_log_prob, observed_log_probs, trace_guide, trace_model

SAMPLINGS = ("stratified", "random")
"""How :func:`choose_components` picks one component per data point."""


# ---------------------------------------------------------------------------------------------- Pyro modules
@contextmanager
def pyro_module_context(*modules) -> Iterator[None]:
    """Enter the Pyro context of every ``PyroModule`` among ``modules`` (others are skipped).

    Inside ``PyroModule.__call__`` every parameter a module reads is registered with Pyro's param store,
    which is how ``pyro.infer.SVI`` finds what to optimise; a guide's ``posterior``/``experts`` called
    directly would otherwise train nothing under SVI. (``fit`` and plain torch optimisers take the
    modules' ``parameters()`` and need no context.)
    """
    with ExitStack() as stack:
        for module in modules:
            context = getattr(module, "_pyro_context", None)
            if context is not None:
                stack.enter_context(context)
        yield


# ---------------------------------------------------------------------------------------------- Gaussians
def diag_normal(d, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale)`` of a diagonal Gaussian with event ``(D,)``; ``InputTypeError`` naming ``what`` otherwise."""
    params = diagonal_gaussian_params(d)
    if params is None:
        raise InputTypeError(
            f"{what} must be a diagonal Gaussian (Normal(loc, scale).to_event(1)), got {type(d).__name__}"
        )
    return params


def gaussian_kl(loc_p, scale_p, loc_q, scale_q) -> torch.Tensor:
    """KL(N(loc_p, diag scale_p²) ‖ N(loc_q, diag scale_q²)) summed over the last dim: ``(*batch, D) → (*batch,)``."""
    var_ratio = (scale_p / scale_q) ** 2
    mahalanobis = ((loc_p - loc_q) / scale_q) ** 2
    return 0.5 * (var_ratio + mahalanobis - 1 - torch.log(var_ratio)).sum(-1)


def prior_gaussian(model, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's prior p(z) as ``(loc, scale)`` broadcast to ``like`` ``(*batch, D)``.

    The model must offer ``prior_dist()`` (every library model does) returning a diagonal Gaussian.
    """
    prior_dist = getattr(model, "prior_dist", None)
    if not callable(prior_dist):
        raise InputTypeError(
            f"this objective needs the model's prior p(z) in closed form: the model ({type(model).__name__}) "
            "must have prior_dist() (e.g. pyro_mmvae.models.MultimodalVAE)"
        )
    loc, scale = diag_normal(prior_dist(), "the model's prior p(z)")
    return loc.to(like).expand_as(like), scale.to(like).expand_as(like)


# ---------------------------------------------------------------------------------------------- replaying the model
def gaussian_guide(loc: torch.Tensor, scale: torch.Tensor):
    """Guide program ``guide(batch, subset=None, beta=1.0)`` sampling ``"z"`` ~ N(loc, diag scale²), ``(B, D)``.

    ``subset`` is ignored: the caller already chose each row's q. β scales the site as in every guide.
    """

    def guide(batch: MultimodalBatch, subset=None, beta: float = 1.0):
        with pyro.plate(DATA_PLATE, batch.batch_size), poutine.scale(scale=beta):
            return pyro.sample(LATENT_SITE, dist.Normal(loc, scale).to_event(1))

    return guide


class Replay(NamedTuple):
    """One replay of the model on z ~ N(loc, diag scale²): ``recon`` ``{name: w_name log p(x_name | z)}``
    (zero where missing), ``log_p`` = β log p(z), ``log_q`` = β log N(z; loc, scale), each ``(L, B)``;
    ``z`` ``(L, B, D)``."""

    recon: dict[str, torch.Tensor]
    log_p: torch.Tensor
    log_q: torch.Tensor
    z: torch.Tensor


def replay_terms(
    model,
    batch: MultimodalBatch,
    loc: torch.Tensor,
    scale: torch.Tensor,
    beta: float,
    num_particles: int,
    weights: Mapping[str, float] | None,
) -> Replay:
    """Trace :func:`gaussian_guide` with ``num_particles`` particles and the model replayed on it.

    ``batch`` must already be validated (every objective validates it on the way in).
    """
    g = trace_guide(gaussian_guide(loc, scale), batch, None, beta, num_particles)
    m = trace_model(model, g, batch, beta, num_particles)
    check_latent_sites(g, m)
    b = batch.batch_size
    z = g.nodes[LATENT_SITE]["value"].reshape(-1, b, loc.shape[-1])
    return Replay(observed_log_probs(m, batch, weights), latent_log_prob(m, b), latent_log_prob(g, b), z)


# ---------------------------------------------------------------------------------------------- mixtures
def mixture_components(q, what: str = "the guide's posterior"):
    """``(locs (B, K, D), scales (B, K, D), weights (B, K), active (B, K) bool)`` of a mixture posterior."""
    if not isinstance(q, DiagNormalMixture):
        raise InputTypeError(
            f"{what} must be a mixture of diagonal Gaussians (DiagNormalMixture, e.g. MoPoEGuide or MoEGuide), "
            f"got {type(q).__name__}"
        )
    active = torch.isfinite(q.logits)
    return q.locs, q.scales, q.log_weights.exp(), active


def check_sampling(sampling: str) -> str:
    if sampling not in SAMPLINGS:
        raise InputError(f"sampling must be one of {list(SAMPLINGS)}, got {sampling!r}")
    return sampling


def choose_components(weights: torch.Tensor, sampling: str) -> torch.Tensor:
    """One component index per row, ``(B,)`` long, from mixture weights ``(B, K)`` (zero = off).

    ``"stratified"``: row b takes the component whose cumulative-weight interval holds (b + ½)/B, so
    consecutive rows share a component and each component gets a block of about B·w_k rows (the
    authors' ``mixture_component_selection``; the batch is shuffled, so the blocks are random rows).
    ``"random"``: an independent draw from the weights for every row.
    """
    check_sampling(sampling)
    if sampling == "random":
        return torch.distributions.Categorical(probs=weights).sample()
    b = weights.shape[0]
    position = (torch.arange(b, device=weights.device, dtype=weights.dtype) + 0.5) / b
    cumulative = weights.cumsum(-1)
    # the first component whose cumulative weight exceeds the position (clamped for rounding at the end)
    index = (cumulative <= position.unsqueeze(-1)).sum(-1)
    last_on = weights.shape[-1] - 1 - (weights > 0).flip(-1).int().argmax(-1)
    return torch.minimum(index, last_on)


def gather_component(locs: torch.Tensor, scales: torch.Tensor, index: torch.Tensor):
    """Component ``index[b]`` of every row: ``(locs, scales)`` ``(B, K, D)`` → each ``(B, D)``."""
    gather = index.view(-1, 1, 1).expand(-1, 1, locs.shape[-1])
    return locs.gather(1, gather).squeeze(1), scales.gather(1, gather).squeeze(1)


# ---------------------------------------------------------------------------------------------- objectives
class TermsELBO(LossELBO):
    """Base of the baselines' objectives: a subclass writes its bound as named per-data-point terms.

    ``terms(model, guide, batch, beta, weighted=True, **options) -> {name: (L, B)}``; the bound is their sum
    (:meth:`per_datapoint_bound`) and the loss its negative mean over data points and particles, computed
    inside the modules' Pyro context (:func:`pyro_module_context`) so that ``pyro.infer.SVI`` trains every
    parameter. ``options`` are the objective's own (e.g. fixed ``subsets`` or mixture ``components``).
    """

    def terms(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, weighted: bool = True, **options):
        raise NotImplementedError

    def per_datapoint_bound(
        self, model, guide, batch: MultimodalBatch, beta: float = 1.0, weighted: bool = True, **options
    ) -> torch.Tensor:
        """L̂ per particle and data point, ``(L, B)``: the sum of :meth:`terms`."""
        return sum(self.terms(model, guide, batch, beta, weighted=weighted, **options).values())

    def differentiable_loss(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, **options):
        """−mean over data points and particles of L̂."""
        with pyro_module_context(model, guide):
            return -self.per_datapoint_bound(model, guide, batch, beta, **options).mean()
