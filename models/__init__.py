"""Generative models as Pyro programs (installed as ``pyro_mmvae.models``)."""

from .multimodal_vae import MultimodalVAE

__all__ = ["MultimodalVAE"]
