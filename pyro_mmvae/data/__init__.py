"""Named-modality batches, datasets, validation and dataset generators."""

from .batch import MultimodalBatch, Subset, collate
from .dataset import MultimodalDataset, get_batch, iterate_batches, num_batches
from .modality import Modality, reconstruction_weights
from .toy import CirclesSquares

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
]
