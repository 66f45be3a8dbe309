"""Likelihood families p(x_m | decoder output) for each modality.

A :class:`Likelihood` turns the decoder output for one modality into a Pyro distribution whose
event shape is the modality's event shape. It owns the learned observation scale when there is
one (a per-dimension parameter, shared across data points).

Shapes: ``params`` is ``(*batch, *param_shape)`` where ``param_shape`` is the modality shape, or
``(*shape, K)`` for class-index (``"categorical"``) modalities; the returned distribution has
batch shape ``batch`` and event shape ``modality.shape``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from ..data.modality import Modality

MIN_SCALE = 1e-3


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class Likelihood(nn.Module):
    """Observation model of one modality, built from its :class:`Modality`."""

    def __init__(self, modality: Modality):
        super().__init__()
        self.modality = modality
        self.kind = modality.likelihood
        if self.kind in ("normal", "laplace"):
            init = torch.full(modality.shape, _inv_softplus(max(modality.scale - MIN_SCALE, 1e-6)))
            if modality.learn_scale:
                self.raw_scale = nn.Parameter(init)
            else:
                self.register_buffer("fixed_scale", torch.tensor(float(modality.scale)))

    @property
    def param_shape(self) -> tuple[int, ...]:
        """Shape of the decoder output for one data point."""
        if self.kind == "categorical":
            return (*self.modality.shape, self.modality.num_classes)
        return self.modality.shape

    def scale(self) -> torch.Tensor:
        if self.modality.learn_scale:
            return MIN_SCALE + softplus(self.raw_scale)
        return self.fixed_scale

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        n_event = len(self.modality.shape)
        if self.kind == "normal":
            return dist.Normal(params, self.scale().to(params.dtype).expand_as(params)).to_event(n_event)
        if self.kind == "laplace":
            return dist.Laplace(params, self.scale().to(params.dtype).expand_as(params)).to_event(n_event)
        if self.kind == "bernoulli":
            # validate_args off: grey-level targets in [0, 1] are common (the batch validator checks the range).
            return dist.Bernoulli(logits=params, validate_args=False).to_event(n_event)
        if self.kind == "categorical":
            return dist.Categorical(logits=params).to_event(n_event)
        return dist.OneHotCategorical(logits=params).to_event(n_event - 1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The reconstruction shown to people: the mean (class probabilities argmax for categorical)."""
        if self.kind in ("normal", "laplace"):
            return params
        if self.kind == "bernoulli":
            return torch.sigmoid(params)
        if self.kind == "categorical":
            return params.argmax(-1)
        return torch.nn.functional.one_hot(params.argmax(-1), params.shape[-1]).to(params.dtype)
