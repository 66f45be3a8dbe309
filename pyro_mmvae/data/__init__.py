"""Named-modality batches, datasets, validation (one path: :func:`validate_batch`), dataset generators and their
linear-Gaussian ground truth, MNIST's IDX files, seeded missingness, and the benchmark datasets: PolyMNIST,
Translated PolyMNIST, MNIST-SVHN, MNIST-SVHN-Text and MHD.
"""

from .batch import MultimodalBatch, Subset, collate
from .dataset import MultimodalDataset, get_batch, iterate_batches, num_batches, unit_interval
from .linear_gaussian import LinearGaussian
from .mhd import MHD, load_mhd, save_mhd
from .missingness import random_missing
from .mnist import load_mnist, save_idx
from .mnist_svhn import ALPHABET, MNISTSVHN, MNISTSVHNText, decode_text, encode_text, load_svhn, pair_by_label
from .modality import Modality, reconstruction_weights
from .polymnist import PolyMNIST, TranslatedPolyMNIST, build_polymnist
from .synthetic import (
    SyntheticData,
    bimodal_linear,
    ivae_bimodal,
    ivae_multimodal,
    multimodal_linear,
    partial_view_mask,
    table_data,
)
from .toy import CirclesSquares
from .validation import validate_batch

__all__ = [
    "MNISTSVHN",
    "MNISTSVHNText",
    "MHD",
    "ALPHABET",
    "encode_text",
    "decode_text",
    "load_svhn",
    "pair_by_label",
    "load_mhd",
    "save_mhd",
    "Modality",
    "MultimodalBatch",
    "MultimodalDataset",
    "CirclesSquares",
    "Subset",
    "collate",
    "get_batch",
    "iterate_batches",
    "num_batches",
    "reconstruction_weights",
    "SyntheticData",
    "LinearGaussian",
    "bimodal_linear",
    "multimodal_linear",
    "ivae_bimodal",
    "ivae_multimodal",
    "table_data",
    "partial_view_mask",
    "validate_batch",
    "load_mnist",
    "save_idx",
    "random_missing",
    "unit_interval",
    "PolyMNIST",
    "TranslatedPolyMNIST",
    "build_polymnist",
]
