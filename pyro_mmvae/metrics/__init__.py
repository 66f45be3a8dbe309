"""Evaluation metrics: coherence, likelihoods, MCC, rates and distortions, latent probes."""

from .coherence import conditional_coherence, joint_coherence

__all__ = ["conditional_coherence", "joint_coherence"]
