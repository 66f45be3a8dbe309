"""``BetaELBO``: the β-weighted evidence lower bound of a multimodal VAE.

Per data point, with z ~ q(z | x_S) (S = the guide's subset, default every present modality):

    L̂ = Σ_m w_m log p(x_m | z) + β [log p(z) − log q(z | x_S)]

β enters through ``poutine.scale`` on the ``"z"`` site of model AND guide; w_m are the training
reconstruction weights (``model.reconstruction_weights``, overridable). The loss is the NEGATIVE
MEAN over data points (and particles), so learning rates do not depend on the batch size.

It subclasses ``pyro.infer.ELBO`` and implements ``differentiable_loss``: use it with
``pyro.infer.SVI`` or as ``BetaELBO()(model, guide)`` → an ``nn.Module`` for plain torch optimisers.
That module's ``parameters()`` are those of the model and guide MODULES it is given: networks that a
plain function model registers with ``pyro.module`` live in Pyro's param store and are not among them.
Wrap such a function in :class:`~pyro_mmvae.models.FunctionModel` (which adopts them) before building
an optimizer over ``BetaELBO()(model, guide).parameters()``, or train with :func:`~pyro_mmvae.train.fit`.
"""

from __future__ import annotations

import functools

import torch
from pyro.infer import ELBO

from ..data.batch import MultimodalBatch, Subset
from ..data.validation import validate_for
from ..distributions.detach import detach_distribution
from .dreg import dreg_log_mean_exp
from .traces import observation_weights, per_datapoint, run_pair, sample_sites


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (poutine.scale(0) is invalid; anneal from a small value), got {beta}")
    return beta


def _validating(loss_fn):
    """Wrap ``differentiable_loss(self, model, guide, batch, ...)``: validate ``batch`` once per call.

    The batch is checked against the modalities model and guide declare
    (:func:`~pyro_mmvae.data.validation.validate_for`) and replaced by the safe batch (missing rows
    zero-filled), so no missing row reaches a log-density; a batch validated before passes at once.
    """

    @functools.wraps(loss_fn)
    def differentiable_loss(self, model, guide, *args, **kwargs):
        if args:
            args = (validate_for(args[0], model, guide), *args[1:])
        elif "batch" in kwargs:
            kwargs["batch"] = validate_for(kwargs["batch"], model, guide)
        return loss_fn(self, model, guide, *args, **kwargs)

    differentiable_loss._validates_batch = True
    return differentiable_loss


class LossELBO(ELBO):
    """Base of the library's objectives: subclasses implement ``differentiable_loss`` only.

    ``loss`` and ``loss_and_grads`` (what ``pyro.infer.SVI`` calls) are derived from it, and
    ``ELBO()(model, guide)`` gives an ``nn.Module`` for plain torch optimisers. The objectives build
    their own traces, so Pyro's generic ``_get_trace`` is not used.

    Every subclass's ``differentiable_loss`` validates its batch on the way in, once per call
    (:func:`_validating`): the one validation path of every objective.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("differentiable_loss")
        if fn is not None and not getattr(fn, "_validates_batch", False):
            cls.differentiable_loss = _validating(fn)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError(f"{type(self).__name__} builds its own traces")


class BetaELBO(LossELBO):
    """β-ELBO with vectorised particles, optional STL and importance weighting.

    Args:
        num_particles: L, particles per data point.
        stl: evaluate log q with stop-gradient parameters (sticking-the-landing estimator).
        iwae: combine particles with log-mean-exp (importance-weighted bound) instead of the mean.
        dreg: with ``iwae``, doubly reparameterised gradients (:mod:`~pyro_mmvae.infer.dreg`; log q is
            then evaluated with stop-gradient parameters).
        reconstruction_weights: optional ``{modality: w}`` overriding ``model.reconstruction_weights``.
    """

    def __init__(
        self,
        num_particles: int = 1,
        stl: bool = False,
        iwae: bool = False,
        reconstruction_weights=None,
        dreg: bool = False,
    ):
        super().__init__(num_particles=num_particles, max_plate_nesting=2, vectorize_particles=True)
        if dreg and not iwae:
            raise ValueError("dreg=True is an estimator of the importance-weighted bound: pass iwae=True as well")
        self.stl, self.iwae, self.dreg = stl, iwae, dreg
        self.reconstruction_weights = reconstruction_weights

    def per_datapoint_bound(
        self, model, guide, batch: MultimodalBatch, beta: float = 1.0, subset: Subset = None, weighted: bool = True
    ) -> torch.Tensor:
        """The per-particle, per-data-point bound L̂, shape ``(L, B)``."""
        return self._bound_and_guide_trace(model, guide, batch, beta, subset, weighted)[0]

    def _bound_and_guide_trace(self, model, guide, batch, beta, subset, weighted=True):
        beta = _check_beta(beta)
        g, m = run_pair(model, guide, batch, subset, beta, self.num_particles)
        b = batch.batch_size
        weights = observation_weights(model, self.reconstruction_weights) if weighted else None
        recon = per_datapoint(m, sample_sites(m, observed=True), b, weights)
        log_p = per_datapoint(m, sample_sites(m, observed=False), b)
        detach = self.stl or self.dreg
        log_q = per_datapoint(g, sample_sites(g), b, fn_override=detach_distribution if detach else None)
        return recon + log_p - log_q, g

    def differentiable_loss(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, subset: Subset = None):
        bound, g = self._bound_and_guide_trace(model, guide, batch, beta, subset)
        if self.iwae and self.dreg:
            draws = [g.nodes[name]["value"] for name in sample_sites(g, observed=False)]
            per_point = dreg_log_mean_exp(bound, draws, beta)
        elif self.iwae:
            per_point = torch.logsumexp(bound, 0) - torch.log(bound.new_tensor(float(bound.shape[0])))
        else:
            per_point = bound.mean(0)
        return -per_point.mean()
