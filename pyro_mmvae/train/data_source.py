"""Training and validation data as the trainer sees it: a dataset to batch, or an iterable of batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset, batch_indices, get_batch, iterate_batches
from ..data.validation import validate_batch
from ..errors import InputError, InputTypeError


class DataSource:
    """``data`` for the trainer; ``what`` (``"train_data"``, ``"val_data"``) names it in errors.

    Accepted: a dataset (``__len__`` plus ``__getitems__``/``__getitem__``, e.g. ``MultimodalDataset``),
    batched by :func:`~pyro_mmvae.data.dataset.iterate_batches` with an epoch order that depends
    only on ``(seed, epoch)``; a ``MultimodalBatch`` (a small in-memory dataset); or a re-iterable of
    ``MultimodalBatch`` (list, ``DataLoader``) used as it is every epoch.
    """

    def __init__(self, data, what: str):
        self.what = what
        if isinstance(data, MultimodalBatch):
            data = MultimodalDataset(data.data, data.present, data.labels)
        if hasattr(data, "__getitems__") or (isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__")):
            self.kind = "dataset"
        elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            self.kind = "batches" if len(data) and isinstance(data[0], MultimodalBatch) else "dataset"
        elif hasattr(data, "__iter__"):
            if iter(data) is data:
                raise InputTypeError(
                    f"{what} is a one-shot iterator; it cannot be re-iterated every epoch. Pass a dataset "
                    "(with __len__ and __getitem__/__getitems__), a list of MultimodalBatch, or a DataLoader"
                )
            self.kind = "batches"
        else:
            raise InputTypeError(
                f"{what} must be a dataset (__len__ and __getitem__/__getitems__) or an iterable of MultimodalBatch, "
                f"got {type(data).__name__}"
            )
        self.data = data
        self.size = len(data) if hasattr(data, "__len__") else None
        if self.size == 0:
            raise InputError(f"{what} is empty (0 rows)")

    def check(self, modalities) -> None:
        """Validate the data against ``modalities`` up front where that is cheap (raises naming ``what``).

        A :class:`~pyro_mmvae.data.MultimodalDataset` is checked whole (errors name dataset rows), a list
        of batches batch by batch; other iterables are checked batch by batch during training.
        """
        if isinstance(self.data, MultimodalDataset):
            self.data.validate(modalities, what=self.what)  # decoded (uint8-stored) modalities checked decoded
        elif self.kind == "batches" and isinstance(self.data, (list, tuple)):
            for i, batch in enumerate(self.data):
                validate_batch(batch, modalities, what=f"{self.what}[{i}]", remember=False)

    def batches(self, batch_size: int, shuffle: bool, seed: int, epoch: int) -> Iterable[MultimodalBatch]:
        """The batches of epoch ``epoch`` (0-based)."""
        if self.kind == "dataset":
            return iterate_batches(self.data, batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
        return iter(self.data)

    def shards(
        self, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int, size: int
    ) -> Iterator[tuple[MultimodalBatch | None, int]]:
        """Rank ``rank``'s share of every batch of epoch ``epoch``: ``(rows or None when empty, batch rows)``.

        Every rank walks the same batches (the order depends only on ``(seed, epoch)``) and takes its
        contiguous share (:func:`~pyro_mmvae.distributed.shard_bounds`); from a dataset only those
        rows are read. Needs a dataset or a list/tuple of batches: another iterable (a shuffling
        ``DataLoader``) may yield different batches on different ranks.
        """
        from ..distributed import shard_bounds

        if self.kind == "dataset":
            for indices in batch_indices(len(self.data), batch_size, shuffle, seed, epoch):
                a, b = shard_bounds(len(indices), rank, size)
                yield (get_batch(self.data, indices[a:b]) if b > a else None), len(indices)
            return
        if not isinstance(self.data, (list, tuple)):
            raise InputTypeError(
                f"{self.what} is a {type(self.data).__name__}; data-parallel training needs a dataset (or a list of "
                "MultimodalBatch), so that every rank sees the same batches and reads only its share"
            )
        for batch in self.data:
            a, b = shard_bounds(batch.batch_size, rank, size)
            yield (batch[a:b] if b > a else None), batch.batch_size

    def describe(self) -> dict:
        return {"kind": self.kind, "type": type(self.data).__qualname__, "size": self.size}
