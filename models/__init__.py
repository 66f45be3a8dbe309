"""Generative models as Pyro programs (installed as ``pyro_mmvae.models``)."""

from .multimodal_vae import MultimodalVAE
from .private import PrivateLatentVAE

__all__ = ["MultimodalVAE", "PrivateLatentVAE"]
