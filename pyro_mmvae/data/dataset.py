"""Datasets of named modalities and reproducible batching.

:class:`MultimodalDataset` holds tensors ``(N, *event_shape)`` per modality, presence masks
``(N,)`` and labels. Its ``__getitems__`` returns a whole :class:`MultimodalBatch` at once (torch's
``DataLoader`` uses it when present), which avoids per-item Python overhead.
:func:`iterate_batches` is the library's own deterministic batcher: the permutation of epoch ``e``
depends only on ``(seed, e)``, which makes interrupted-and-resumed training reproduce an
uninterrupted run exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

from .batch import MultimodalBatch, collate
from .modality import Modality
from .validation import validate_batch


class MultimodalDataset(torch.utils.data.Dataset):
    """In-memory multimodal dataset.

    Args:
        data: name -> tensor ``(N, *event_shape)``.
        present: optional name -> bool tensor ``(N,)`` (missing rows may hold anything; they are zeroed).
        labels: optional name -> tensor ``(N, ...)``.
        modalities: optional modality specs; when given the data are validated against them.
    """

    def __init__(
        self,
        data: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor] | None = None,
        labels: Mapping[str, torch.Tensor] | None = None,
        modalities: Iterable[Modality] | None = None,
    ):
        present = dict(present or {})
        data = dict(data)
        for name, p in present.items():
            if name in data and p.dtype == torch.bool and p.shape == data[name].shape[:1]:
                keep = p.reshape(-1, *([1] * (data[name].dim() - 1)))
                data[name] = torch.where(keep, data[name], torch.zeros_like(data[name]))
        self.full = MultimodalBatch(data, present, dict(labels or {}))
        self.modalities = list(modalities) if modalities is not None else None
        if self.modalities is not None:  # a one-off check: no mark keeps a second, zero-filled copy alive
            validate_batch(self.full, self.modalities, require_all=True, remember=False)

    def __len__(self) -> int:
        return self.full.batch_size

    @property
    def names(self) -> list[str]:
        return self.full.names

    def __getitem__(self, i: int) -> dict:
        f = self.full
        return {
            "data": {k: v[i] for k, v in f.data.items()},
            "present": {k: v[i] for k, v in f.present.items()},
            "labels": {k: v[i] for k, v in f.labels.items()},
        }

    def __getitems__(self, indices) -> MultimodalBatch:
        return self.full[torch.as_tensor(indices, dtype=torch.long)]

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0, **kwargs):
        """A torch ``DataLoader`` yielding :class:`MultimodalBatch` objects."""
        g = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(
            self, batch_size=batch_size, shuffle=shuffle, generator=g, collate_fn=collate, **kwargs
        )


def get_batch(dataset, indices) -> MultimodalBatch:
    """Fetch rows ``indices`` of any dataset (fast path through ``__getitems__``)."""
    if hasattr(dataset, "__getitems__"):
        return collate(dataset.__getitems__(indices))
    return collate([dataset[int(i)] for i in indices])


def iterate_batches(
    dataset, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0, drop_last: bool = False
) -> Iterator[MultimodalBatch]:
    """Yield batches of ``dataset``; with ``shuffle`` the order depends only on ``(seed, epoch)``."""
    n = len(dataset)
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    stop = n - (n % batch_size) if drop_last else n
    for start in range(0, stop, batch_size):
        yield get_batch(dataset, order[start : start + batch_size].tolist())


def num_batches(dataset, batch_size: int, drop_last: bool = False) -> int:
    n = len(dataset)
    return n // batch_size if drop_last else -(-n // batch_size)
