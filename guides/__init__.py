"""Encoders as Pyro guides (installed as ``pyro_mmvae.guides``)."""

from .base import MultimodalGuide
from .joint import JointGuide
from .unimodal import UnimodalGaussianGuide

__all__ = ["MultimodalGuide", "JointGuide", "UnimodalGaussianGuide"]
