"""Inference: ELBOs, trace utilities, the trainer."""

from .elbo import BetaELBO

__all__ = ["BetaELBO"]
