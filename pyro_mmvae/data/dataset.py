"""Datasets of named modalities and reproducible batching.

:class:`MultimodalDataset` holds tensors ``(N, *event_shape)`` per modality, presence masks
``(N,)`` and labels. Its ``__getitems__`` returns a whole :class:`MultimodalBatch` at once (torch's
``DataLoader`` uses it when present), which avoids per-item Python overhead.
A modality may be STORED in a compact form and decoded per batch (``decode``): images kept as uint8
``(N, C, H, W)`` (a quarter of float32's memory) come out as float32 in [0, 1] via :func:`unit_interval`.
:func:`iterate_batches` is the library's own deterministic batcher: the permutation of epoch ``e``
depends only on ``(seed, e)``, which makes interrupted-and-resumed training reproduce an
uninterrupted run exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import torch

from ..errors import InputTypeError, UnknownModalityError
from .batch import MultimodalBatch, collate
from .modality import Modality
from .validation import as_modality_dict, validate_batch

PROBE_ROWS = 64  # rows decoded to validate a dataset with decoded modalities (their dtype, shape and range)


def unit_interval(x: torch.Tensor) -> torch.Tensor:
    """uint8 rows (0..255) -> float32 in [0, 1] (``x / 255``, as torchvision's ``ToTensor`` scales)."""
    if x.dtype != torch.uint8:
        raise InputTypeError(f"unit_interval decodes uint8 tensors, got {x.dtype}")
    return x.to(torch.float32).div_(255.0)


class MultimodalDataset(torch.utils.data.Dataset):
    """In-memory multimodal dataset.

    Args:
        data: name -> tensor ``(N, *event_shape)``.
        present: optional name -> bool tensor ``(N,)`` (missing rows may hold anything; they are zeroed).
        labels: optional name -> tensor ``(N, ...)``.
        modalities: optional modality specs; when given the data are validated against them.
        decode: optional name -> callable mapping STORED rows ``(B, ...)`` to the modality's tensor
            ``(B, *event_shape)``, applied by ``__getitems__``/``__getitem__`` (e.g. :func:`unit_interval`
            for uint8 images). :attr:`full` keeps the stored form. Validation then checks the decoded
            form of the first :data:`PROBE_ROWS` rows (dtype, shape, values) and the presence masks of
            every row, not every value of a large dataset.
    """

    def __init__(
        self,
        data: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor] | None = None,
        labels: Mapping[str, torch.Tensor] | None = None,
        modalities: Iterable[Modality] | None = None,
        decode: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    ):
        present = dict(present or {})
        data = dict(data)
        for name, p in present.items():
            if name in data and p.dtype == torch.bool and p.shape == data[name].shape[:1]:
                keep = p.reshape(-1, *([1] * (data[name].dim() - 1)))
                data[name] = torch.where(keep, data[name], torch.zeros_like(data[name]))
        self.full = MultimodalBatch(data, present, dict(labels or {}))
        self.decode = dict(decode or {})
        unknown = sorted(set(self.decode) - set(self.full.data))
        if unknown:
            raise UnknownModalityError(f"decode given for unknown modalities {unknown}; the data has {self.full.names}")
        self.modalities = list(modalities) if modalities is not None else None
        if self.modalities is not None:
            self.validate(self.modalities, require_all=True)

    def validate(self, modalities=None, what: str = "batch", require_all: bool = False) -> None:
        """Check the dataset against ``modalities`` (default: its own) with :func:`validate_batch`.

        Without ``decode`` every row is checked; with it the decoded first :data:`PROBE_ROWS` rows plus
        every row's presence masks and labels (cheap: no decoded copy of the whole dataset is made).
        """
        spec = as_modality_dict(modalities if modalities is not None else self.modalities)
        # one-off checks: remember=False, so no mark keeps a second, zero-filled copy alive
        if not self.decode:
            validate_batch(self.full, spec, require_all=require_all, what=what, remember=False)
            return
        rows = min(len(self), PROBE_ROWS)
        probe = self.__getitems__(list(range(rows)))
        validate_batch(
            probe, spec, require_all=require_all, what=f"{what} (decoded rows 0..{rows - 1})", remember=False
        )
        # masks and labels of every row, with zero-width stand-ins for the data
        f = self.full
        shells = {k: torch.empty(len(self), 0, device=v.device) for k, v in f.data.items()}
        validate_batch(MultimodalBatch(shells, dict(f.present), dict(f.labels)), what=what, remember=False)

    def __len__(self) -> int:
        return self.full.batch_size

    @property
    def names(self) -> list[str]:
        return self.full.names

    def _decoded(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """The modality's tensor of stored ``rows`` ``(B, ...)`` (the rows themselves when not decoded)."""
        fn = self.decode.get(name)
        return rows if fn is None else fn(rows)

    def __getitem__(self, i: int) -> dict:
        f = self.full
        return {
            "data": {k: self._decoded(k, v[i].unsqueeze(0))[0] for k, v in f.data.items()},
            "present": {k: v[i] for k, v in f.present.items()},
            "labels": {k: v[i] for k, v in f.labels.items()},
        }

    def __getitems__(self, indices) -> MultimodalBatch:
        rows = self.full[torch.as_tensor(indices, dtype=torch.long)]
        if not self.decode:
            return rows
        return MultimodalBatch({k: self._decoded(k, v) for k, v in rows.data.items()}, rows.present, rows.labels)

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


def batch_indices(
    n: int, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0, drop_last: bool = False
) -> Iterator[list[int]]:
    """The row indices of each batch of ``n`` rows; with ``shuffle`` the order depends only on ``(seed, epoch)``."""
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    stop = n - (n % batch_size) if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size].tolist()


def iterate_batches(
    dataset, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0, drop_last: bool = False
) -> Iterator[MultimodalBatch]:
    """Yield batches of ``dataset``; with ``shuffle`` the order depends only on ``(seed, epoch)``."""
    for indices in batch_indices(len(dataset), batch_size, shuffle, seed, epoch, drop_last):
        yield get_batch(dataset, indices)


def num_batches(dataset, batch_size: int, drop_last: bool = False) -> int:
    n = len(dataset)
    return n // batch_size if drop_last else -(-n // batch_size)
