"""Evaluation metrics: classifiers and coherence over every subset, FID/MFD, likelihoods, MCC, rates and
distortions, latent probes."""

from .classifiers import (
    ARCHITECTURES,
    Classifier,
    ClassifierNet,
    build_network,
    load_classifier,
    load_mnist_svhn_text_classifiers,
    load_polymnist_classifiers,
    save_classifier,
    train_classifier,
)
from .coherence import (
    CoherenceReport,
    conditional_coherence,
    enumerate_subsets,
    joint_coherence,
    prior_joint_coherence,
    subset_coherence,
)
from .fid import (
    FeatureMoments,
    InceptionFeatures,
    InceptionWeightsError,
    extract_statistics,
    feature_statistics,
    fid,
    frechet_distance,
    mfd,
)
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
    "Classifier",
    "ClassifierNet",
    "ARCHITECTURES",
    "build_network",
    "load_polymnist_classifiers",
    "load_mnist_svhn_text_classifiers",
    "train_classifier",
    "save_classifier",
    "load_classifier",
    "subset_coherence",
    "CoherenceReport",
    "enumerate_subsets",
    "prior_joint_coherence",
    "conditional_coherence",
    "joint_coherence",
    "frechet_distance",
    "feature_statistics",
    "FeatureMoments",
    "extract_statistics",
    "fid",
    "mfd",
    "InceptionFeatures",
    "InceptionWeightsError",
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
