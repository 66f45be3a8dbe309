"""Stop-gradient copies of distributions, for STL ("sticking the landing") estimators.

``detach_distribution(q)`` returns a distribution with the same density whose parameters are
detached, so ``detach_distribution(q).log_prob(z)`` passes gradients only through ``z``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch.distributions as tdist
from pyro.distributions.torch_distribution import ExpandedDistribution

_DETACHERS = {}


def register_detacher(cls):
    """Decorator registering ``fn(d) -> detached d`` for distribution class ``cls`` (and subclasses)."""

    def deco(fn):
        _DETACHERS[cls] = fn
        return fn

    return deco


def detach_distribution(d):
    for cls in type(d).__mro__:
        if cls in _DETACHERS:
            return _DETACHERS[cls](d)
    raise NotImplementedError(
        f"no stop-gradient rule for {type(d).__name__}; register one with "
        "pyro_mmvae.distributions.detach.register_detacher or train with stl=False"
    )


@register_detacher(tdist.Independent)
def _independent(d):
    return dist.Independent(detach_distribution(d.base_dist), d.reinterpreted_batch_ndims)


@register_detacher(tdist.Normal)
def _normal(d):
    return dist.Normal(d.loc.detach(), d.scale.detach())


@register_detacher(tdist.Laplace)
def _laplace(d):
    return dist.Laplace(d.loc.detach(), d.scale.detach())


@register_detacher(tdist.MultivariateNormal)
def _mvn(d):
    return dist.MultivariateNormal(d.loc.detach(), scale_tril=d.scale_tril.detach())


@register_detacher(tdist.Categorical)
def _categorical(d):
    return dist.Categorical(logits=d.logits.detach())


@register_detacher(tdist.MixtureSameFamily)
def _mixture(d):
    return dist.MixtureSameFamily(
        detach_distribution(d.mixture_distribution), detach_distribution(d.component_distribution)
    )


@register_detacher(dist.MaskedDistribution)
def _masked(d):
    return dist.MaskedDistribution(detach_distribution(d.base_dist), d._mask)


@register_detacher(ExpandedDistribution)
def _expanded(d):
    return detach_distribution(d.base_dist).expand(d.batch_shape)
