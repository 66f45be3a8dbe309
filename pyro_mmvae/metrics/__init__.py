"""Evaluation metrics: coherence, likelihoods, MCC, rates and distortions, latent probes."""

from .coherence import conditional_coherence, joint_coherence
from .likelihood import conditional_log_likelihood, dataset_log_likelihood, log_likelihood
from .linear_gaussian import (
    LinearGaussian,
    gaussian_mle,
    linear_decoder_model,
    ppca_mle,
    relative_llh_gap,
)
from .mcc import MCCResult, encode_dataset_with_private, fit_cca, latent_mcc, mcc
from .probe import LinearProbe, encode_dataset, latent_linear_probe, linear_probe_accuracy
from .rates import dataset_rates_and_distortions, rates_and_distortions

__all__ = [
    "conditional_coherence",
    "joint_coherence",
    "log_likelihood",
    "conditional_log_likelihood",
    "dataset_log_likelihood",
    "LinearGaussian",
    "gaussian_mle",
    "ppca_mle",
    "linear_decoder_model",
    "relative_llh_gap",
    "mcc",
    "latent_mcc",
    "encode_dataset_with_private",
    "fit_cca",
    "MCCResult",
    "rates_and_distortions",
    "dataset_rates_and_distortions",
    "LinearProbe",
    "linear_probe_accuracy",
    "latent_linear_probe",
    "encode_dataset",
]
