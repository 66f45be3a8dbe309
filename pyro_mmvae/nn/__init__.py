"""Neural building blocks: MLPs, conv encoders/decoders, Gaussian heads, and the papers' per-dataset
architectures (:mod:`pyro_mmvae.nn.architectures`).
"""

from . import architectures
from .flows import FLOW_KINDS, ConditionalFlow
from .networks import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    FlatDecoder,
    FlatEncoder,
    GaussianHead,
    default_decoder,
    default_encoder,
)
from .projectors import FrozenProjector, freeze, make_projector, make_projectors

__all__ = [
    "architectures",
    "ConditionalFlow",
    "FLOW_KINDS",
    "FrozenProjector",
    "freeze",
    "make_projector",
    "make_projectors",
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "FlatDecoder",
    "FlatEncoder",
    "GaussianHead",
    "default_decoder",
    "default_encoder",
]
