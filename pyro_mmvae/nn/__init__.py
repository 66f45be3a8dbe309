"""Neural building blocks: MLPs, conv encoders/decoders, Gaussian heads."""

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

__all__ = [
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "FlatDecoder",
    "FlatEncoder",
    "GaussianHead",
    "default_decoder",
    "default_encoder",
]
