"""Generative models as Pyro programs (installed as ``pyro_mmvae.models``)."""

from .function import FunctionModel, UnregisteredParameterError, as_model, multimodal_model
from .mmvaeplus import MMVAEPlus
from .multimodal_vae import MultimodalVAE
from .private import PrivateLatentVAE

__all__ = [
    "MultimodalVAE",
    "PrivateLatentVAE",
    "MMVAEPlus",
    "FunctionModel",
    "multimodal_model",
    "as_model",
    "UnregisteredParameterError",
]
