"""pyro_mmvae: multimodal variational autoencoders written as Pyro programs."""

__version__ = "0.1.0"
