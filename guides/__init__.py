"""Encoders as Pyro guides (installed as ``pyro_mmvae.guides``)."""

from .aggregation import (
    MoEGuide,
    MoPoEGuide,
    PoEGuide,
    SelfAttentionGuide,
    SelfAttentionMixtureGuide,
    SumPoolingGuide,
    SumPoolingMixtureGuide,
)
from .base import MultimodalGuide
from .equivariant import (
    EquivariantPoEGuide,
    EquivariantSelfAttentionGuide,
    EquivariantSumPoolingGuide,
    PrivateLatentGuide,
)
from .flow import FlowExpertGuide
from .joint import JointGuide
from .laplace_moe import LaplaceMoEGuide
from .mmvaeplus import MMVAEPlusGuide
from .unimodal import UnimodalGaussianGuide

__all__ = [
    "MultimodalGuide",
    "JointGuide",
    "UnimodalGaussianGuide",
    "FlowExpertGuide",
    "PoEGuide",
    "MoEGuide",
    "MoPoEGuide",
    "SumPoolingGuide",
    "SelfAttentionGuide",
    "SumPoolingMixtureGuide",
    "SelfAttentionMixtureGuide",
    "PrivateLatentGuide",
    "EquivariantPoEGuide",
    "EquivariantSumPoolingGuide",
    "EquivariantSelfAttentionGuide",
    "LaplaceMoEGuide",
    "MMVAEPlusGuide",
]
