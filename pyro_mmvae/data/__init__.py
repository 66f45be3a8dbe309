"""Named-modality batches, datasets, validation (one path: :func:`validate_batch`), dataset generators and their
linear-Gaussian ground truth.
"""

from .batch import MultimodalBatch, Subset, collate
from .dataset import MultimodalDataset, get_batch, iterate_batches, num_batches
from .linear_gaussian import LinearGaussian
from .modality import Modality, reconstruction_weights
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
]
