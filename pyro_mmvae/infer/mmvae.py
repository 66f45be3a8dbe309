"""MMVAE's objective: the stratified K-sample importance-weighted bound of a mixture-of-experts guide.

MMVAE ("Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative Models", Shi et
al. 2019). For a data point with observed modalities M (per row: the present ones), draw K
particles from EACH unimodal expert, z_m^k ~ q(z | x_m), and weigh them against the mixture
q(z | X) = (1/|M|) Σ_{m∈M} q(z | x_m) (the guide with every observed modality):

    log w_m^k = Σ_{n∈M} λ_n log p(x_n | z_m^k) + β [log p(z_m^k) − log q(z_m^k | X)]

(λ_n: the training reconstruction weights, ``model.reconstruction_weights``; β through
``poutine.scale`` on the latent sites of model and guide). Two ways to combine them:

- ``bound="stratified"`` (the paper's and the authors' ``--looser`` objective, used for their
  results): (1/|M|) Σ_{m∈M} log (1/K) Σ_k w_m^k;
- ``bound="pooled"`` (the authors' default ``m_iwae``/``m_dreg``): log (1/(|M|K)) Σ_{m,k} w_m^k.

Both are lower bounds on log p(X). The pooled one is an importance-weighted bound with the stratified
mixture as proposal and converges to log p(X) as K → ∞. The stratified one converges to
(1/|M|) Σ_m log E_{q(z|x_m)}[p(X, z) / q(z | X)] ≤ log p(X) (Jensen, equality when every expert
gives the same expectation); with a single observed modality both are the IWAE bound of log p(x_m).

Gradients: ``dreg=True`` (default, as the authors) evaluates log q(z | X) with stop-gradient
parameters and applies the DReG estimator of :mod:`pyro_mmvae.infer.dreg` within each stratum
(``stratified``) or over all |M|K particles (``pooled``). NOTE: the DReG identity needs the density in
the weights to be the sampling density of each particle; a particle of stratum m is drawn from
q(z | x_m) but weighed by the mixture, so DReG here is the authors' estimator, not an unbiased one
(``tests/infer/test_mmvae.py`` measures the difference); ``dreg=False`` gives the plain IWAE gradient.

Every term comes from Pyro traces: the guide traced with subset {m} and K vectorised particles,
the model replayed on it, the guide with every observed modality replayed on it (→ log q(z | X)),
so any model/guide pair following the site convention works (the guide must be a mixture whose
subset {m} posterior is the expert of m, e.g. :class:`~pyro_mmvae.guides.MoEGuide`,
:class:`~pyro_mmvae.guides.laplace_moe.LaplaceMoEGuide`; a guide with ``reuse_encodings()`` runs each
encoder once per loss evaluation instead of 2M times). Missing modalities: a row's strata and
reconstruction terms are its observed modalities only (``torch.where``, never multiplication, so a
non-finite value in a missing row cannot leak). :class:`Stratum` and :func:`combine_strata` are
shared with MMVAE+ (:mod:`pyro_mmvae.infer.mmvaeplus`).

Shapes: log-weights ``(K, B)``; latent draws ``(K, B, *event)``; the bound per data point ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from pyro import poutine

from ..data.batch import MultimodalBatch
from ..data.validation import validate_for
from ..errors import check_int
from .dreg import (
    dreg_log_mean_exp,
    encoder_gradient_scale,
    log_mean_exp,
    normalized_weights,
    scale_gradient,
    straight_through,
)
from .elbo import LossELBO, _check_beta
from .traces import (
    check_latent_sites,
    latent_log_prob,
    observation_weights,
    observed_log_probs,
    sample_sites,
    trace_guide,
    trace_model,
)

BOUNDS = ("stratified", "pooled")


@dataclass
class Stratum:
    """The K particles drawn from one modality's expert.

    ``name``: the modality m; ``log_w``: log-weights ``(K, B)``; ``rows``: bool ``(B,)``, the rows
    where m is observed (the others are ignored); ``draws``: the reparameterised latent draws
    ``(K, B, *event)`` the log-weights depend on (DReG scales their gradients).
    """

    name: str
    log_w: torch.Tensor
    rows: torch.Tensor
    draws: list[torch.Tensor] = field(default_factory=list)


def check_bound(bound: str) -> str:
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    return bound


def _stacked(strata: Sequence[Stratum]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_w (S, K, B), rows (S, B))`` of the strata."""
    if not strata:
        raise ValueError("no strata: the batch observes none of the guide's modalities")
    return torch.stack([s.log_w for s in strata]), torch.stack([s.rows for s in strata])


def combine_strata(strata: Sequence[Stratum], bound: str = "stratified", dreg: bool = False, beta: float = 1.0):
    """The per-row bound ``(B,)`` from the strata (see the module docstring); DReG gradients with ``dreg``."""
    log_w, rows = _stacked(strata)
    count = rows.sum(0).to(log_w.dtype)  # observed modalities per row, >= 1 in a validated batch
    if check_bound(bound) == "stratified":
        per_stratum = [dreg_log_mean_exp(s.log_w, s.draws, beta) if dreg else log_mean_exp(s.log_w, 0) for s in strata]
        kept = torch.where(rows, torch.stack(per_stratum), torch.zeros_like(log_w[:, 0]))
        return kept.sum(0) / count
    # pooled: one importance-weighted bound over the |M| K particles of each row
    k = log_w.shape[1]
    on = rows.unsqueeze(1).expand_as(log_w)
    masked = torch.where(on, log_w, torch.full_like(log_w, -math.inf))
    value = torch.logsumexp(masked.flatten(0, 1), 0) - torch.log(count * k)
    if not dreg:
        return value
    weights = normalized_weights(masked.flatten(0, 1), 0).reshape(log_w.shape)
    scales = encoder_gradient_scale(weights, beta)
    for s, stratum in enumerate(strata):
        for draw in stratum.draws:
            scale_gradient(draw, scales[s])
    surrogate = torch.where(on, weights * log_w, torch.zeros_like(log_w)).sum((0, 1))
    return straight_through(value, surrogate)


class StratifiedMixtureELBO(LossELBO):
    """Base of MMVAE's and MMVAE+'s objectives: draws K particles per observed modality, combines strata.

    Subclasses implement :meth:`stratum` (one modality's log-weights from its traces).

    Args:
        num_particles: K, particles per modality (10 in the JNF paper's baselines).
        dreg: DReG gradients (log q with stop-gradient parameters); plain IWAE gradients otherwise.
        bound: ``"stratified"`` or ``"pooled"`` (module docstring).
        stl: without ``dreg``, still evaluate log q with stop-gradient parameters.
        reconstruction_weights: optional ``{modality: λ}`` overriding ``model.reconstruction_weights``.
    """

    def __init__(
        self,
        num_particles: int = 10,
        dreg: bool = True,
        bound: str = "stratified",
        stl: bool = False,
        reconstruction_weights: Mapping[str, float] | None = None,
    ):
        num_particles = check_int(num_particles, "num_particles", minimum=1)
        super().__init__(num_particles=num_particles, max_plate_nesting=2, vectorize_particles=True)
        self.dreg, self.bound, self.stl = bool(dreg), check_bound(bound), bool(stl)
        self.reconstruction_weights = reconstruction_weights

    @property
    def detach_q(self) -> bool:
        """Whether log q is evaluated with stop-gradient parameters."""
        return self.dreg or self.stl

    def stratum(self, model, guide, batch: MultimodalBatch, name: str, beta: float, weights) -> Stratum:
        raise NotImplementedError

    def strata(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, weighted: bool = True):
        """One :class:`Stratum` per modality of the guide observed in some row of ``batch``."""
        beta = _check_beta(beta)
        batch = validate_for(batch, model, guide)
        weights = observation_weights(model, self.reconstruction_weights) if weighted else None
        names = batch.observed_names(guide.names)
        # 2M guide traces on one batch: a guide that can reuse its unimodal encodings runs each encoder once
        reuse = getattr(guide, "reuse_encodings", None)
        with reuse() if reuse is not None else nullcontext():
            return [self.stratum(model, guide, batch, n, beta, weights) for n in names]

    def per_datapoint_bound(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, weighted: bool = True):
        """The bound per data point, ``(B,)`` (with DReG gradients when ``dreg``)."""
        strata = self.strata(model, guide, batch, beta, weighted)
        return combine_strata(strata, self.bound, self.dreg, _check_beta(beta))

    def differentiable_loss(self, model, guide, batch: MultimodalBatch, beta: float = 1.0):
        """−mean over data points of the bound; a scalar tensor with gradients."""
        return -self.per_datapoint_bound(model, guide, batch, beta).mean()


class MMVAEELBO(StratifiedMixtureELBO):
    """MMVAE's stratified importance-weighted bound with a mixture-of-experts guide (module docstring).

    Arguments as in :class:`StratifiedMixtureELBO`. Every latent site of the model enters the weights
    (p over the model's latent sites, q over the guide's, the latter at subset = every observed modality).
    """

    def stratum(self, model, guide, batch: MultimodalBatch, name: str, beta: float, weights) -> Stratum:
        b, k = batch.batch_size, self.num_particles
        g = trace_guide(guide, batch, [name], beta, k)  # z ~ q(z | x_name), K particles
        m = trace_model(model, g, batch, beta, k)
        check_latent_sites(g, m)
        recon = sum(observed_log_probs(m, batch, weights).values())  # zero where a modality is missing
        # q(z | X): the guide with every observed modality, replayed on the draws of q(z | x_name)
        mixture = trace_guide(poutine.replay(guide, trace=g), batch, None, beta, k)
        log_w = recon + latent_log_prob(m, b) - latent_log_prob(mixture, b, detach=self.detach_q)
        draws = [g.nodes[s]["value"] for s in sample_sites(g, observed=False)]
        return Stratum(name, log_w, batch.subset_mask([name])[name], draws)
