"""``MultimodalBatch``: named modality tensors with per-modality presence masks.

Shapes: ``data[name]`` is ``(B, *event_shape)``; ``present[name]`` is a bool tensor ``(B,)``;
``labels`` is an optional dict of ``(B, ...)`` tensors (class, sizes, ...). Every tensor keeps its
full batch shape; the presence mask says which rows are real. A missing row may hold anything:
:meth:`MultimodalBatch.validate` (the library's one validation path,
:func:`~pyro_mmvae.data.validation.validate_batch`) returns a copy with zeros there.

A *subset* selects which modalities an encoder may look at. Everywhere in the library a subset is
one of: ``None`` (every present modality), an iterable of names (the same subset for every row),
or a dict ``name -> BoolTensor(B,)`` (a per-row subset, as sampled by the masked objective).
:meth:`MultimodalBatch.subset_mask` turns any of them into the per-row form, intersected with
presence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from ..errors import InputError, InputTypeError, UnknownModalityError
from .modality import Modality

Subset = None | Iterable[str] | Mapping[str, torch.Tensor]

# Set while a training step is traced into a graph (fit(compile=True)): the tensors have no values. It
# holds the batches the tracer declared (trace_batch), which observe every modality in some row: the
# tracer only traces such batches.
_TRACED_BATCHES: ContextVar[list | None] = ContextVar("traced_batches", default=None)


@contextmanager
def tracing_step() -> Iterator[None]:
    """Inside the block, code runs on tensors without values (a training step being traced).

    :func:`is_tracing_step` tells code whose shapes would depend on values (e.g. selecting a modality's
    present rows) to compute on every row and mask instead. For a batch declared by :func:`trace_batch`,
    :meth:`MultimodalBatch.observed_names` answers without reading values; for any other batch it reads
    them, which a trace cannot do (the step is then not compiled). A nested block still knows the
    batches declared outside it; those it declares are forgotten when it ends.
    """
    token = _TRACED_BATCHES.set(list(_TRACED_BATCHES.get() or ()))
    try:
        yield
    finally:
        _TRACED_BATCHES.reset(token)


def is_tracing_step() -> bool:
    """Whether the code runs inside :func:`tracing_step`."""
    return _TRACED_BATCHES.get() is not None


def trace_batch(batch: MultimodalBatch) -> MultimodalBatch:
    """Declare, inside :func:`tracing_step`, that ``batch`` observes every modality it holds in some row."""
    traced = _TRACED_BATCHES.get()
    if traced is None:
        raise RuntimeError("trace_batch is only meaningful inside tracing_step()")
    traced.append(batch)
    return batch


@dataclass
class MultimodalBatch:
    data: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.data, Mapping) or not self.data:
            raise InputError("a MultimodalBatch needs at least one modality (data: a dict name -> tensor)")
        for name, x in self.data.items():
            if not isinstance(x, torch.Tensor):
                raise InputTypeError(
                    f"modality {name!r}: expected a torch.Tensor, got {type(x).__name__}; convert it with "
                    "torch.as_tensor(x) (float32 for continuous/bernoulli data, int64 for class indices)"
                )
        sizes = {name: x.shape[0] for name, x in self.data.items()}
        if len(set(sizes.values())) != 1:
            raise InputError(f"modalities disagree on the batch size (rows per modality): {sizes}")
        ref = next(iter(self.data.values()))
        for name in self.data:
            if name not in self.present:
                self.present[name] = torch.ones(ref.shape[0], dtype=torch.bool, device=ref.device)
        unknown = set(self.present) - set(self.data)
        if unknown:
            raise UnknownModalityError(f"presence masks given for unknown modalities {sorted(unknown)}")

    # ------------------------------------------------------------------ basics
    @property
    def names(self) -> list[str]:
        return list(self.data)

    @property
    def batch_size(self) -> int:
        return next(iter(self.data.values())).shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        return next(iter(self.data.values())).device

    def to(self, device=None, dtype: torch.dtype | None = None) -> MultimodalBatch:
        """Move every tensor; ``dtype`` converts floating-point modality tensors only."""

        def move(x):
            if dtype is not None and x.dtype.is_floating_point:
                return x.to(device=device, dtype=dtype)
            return x.to(device=device)

        return MultimodalBatch(
            {k: move(v) for k, v in self.data.items()},
            {k: v.to(device) for k, v in self.present.items()},
            {k: v.to(device) for k, v in self.labels.items()},
        )

    def __getitem__(self, index) -> MultimodalBatch:
        """Row selection: ``batch[idx]`` with a slice, an index tensor or a bool mask."""
        return MultimodalBatch(
            {k: v[index] for k, v in self.data.items()},
            {k: v[index] for k, v in self.present.items()},
            {k: v[index] for k, v in self.labels.items()},
        )

    def select(self, names: Iterable[str]) -> MultimodalBatch:
        """The same rows restricted to the modalities ``names``."""
        names = list(names)
        self._check_names(names)
        return MultimodalBatch({k: self.data[k] for k in names}, {k: self.present[k] for k in names}, dict(self.labels))

    def with_missing(self, names: Iterable[str]) -> MultimodalBatch:
        """A copy in which the modalities ``names`` are marked missing (and zeroed) in every row."""
        names = set(names)
        self._check_names(names)
        data = {k: (torch.zeros_like(v) if k in names else v) for k, v in self.data.items()}
        present = {k: (torch.zeros_like(v) if k in names else v) for k, v in self.present.items()}
        return MultimodalBatch(data, present, dict(self.labels))

    # ------------------------------------------------------------------ subsets
    def _check_names(self, names) -> None:
        unknown = [n for n in names if n not in self.data]
        if unknown:
            raise UnknownModalityError(f"unknown modality name(s) {unknown}; this batch has {self.names}")

    def observed_names(self, names: Iterable[str]) -> list[str]:
        """The modalities of ``names`` that the batch holds and observes in at least one row, in that order."""
        held = [n for n in names if n in self.data]
        if any(self is b for b in _TRACED_BATCHES.get() or ()):
            return held
        return [n for n in held if bool(self.present[n].any())]

    def subset_mask(self, subset: Subset = None) -> dict[str, torch.Tensor]:
        """Per-row subset masks ``name -> BoolTensor(B,)``, intersected with presence.

        Every modality of the batch appears in the result (False where not selected).
        """
        if subset is None:
            return dict(self.present)
        if isinstance(subset, str):
            subset = [subset]
        if isinstance(subset, Mapping):
            self._check_names(subset)
            out = {}
            for name in self.data:
                m = subset.get(name)
                if m is None:
                    out[name] = torch.zeros_like(self.present[name])
                    continue
                m = torch.as_tensor(m, device=self.device)
                if m.dtype != torch.bool or m.shape != (self.batch_size,):
                    raise InputError(
                        f"subset mask for {name!r} must be a bool tensor of shape ({self.batch_size},), "
                        f"got {m.dtype} {tuple(m.shape)}"
                    )
                out[name] = m & self.present[name]
            return out
        names = list(subset)
        self._check_names(names)
        return {
            name: (self.present[name] if name in names else torch.zeros_like(self.present[name])) for name in self.data
        }

    def stacked_mask(self, subset: Subset = None, order: Iterable[str] | None = None) -> torch.Tensor:
        """Subset mask as a bool tensor ``(B, M)`` with modalities in ``order`` (default: batch order)."""
        masks = self.subset_mask(subset)
        order = list(order) if order is not None else self.names
        return torch.stack([masks[n] for n in order], dim=-1)

    # ------------------------------------------------------------------ validation
    def validate(self, modalities: Iterable[Modality] | Mapping[str, Modality]) -> MultimodalBatch:
        """Check names, types, shapes, dtypes, masks and values against ``modalities``.

        Returns the safe batch of :func:`~pyro_mmvae.data.validation.validate_batch` (``self`` when
        every row is present; otherwise a copy whose missing rows hold zeros). The batch must hold
        every one of ``modalities``. Raises an :class:`~pyro_mmvae.errors.InputError` /
        :class:`~pyro_mmvae.errors.InputTypeError` / :class:`~pyro_mmvae.errors.UnknownModalityError`
        (a ``ValueError`` / ``TypeError`` / ``KeyError``) naming the offending modality. Non-finite
        and out-of-range values are only rejected in rows where the modality is present.
        """
        from .validation import validate_batch

        return validate_batch(self, modalities, require_all=True)


def collate(items) -> MultimodalBatch:
    """Collate dataset items ``{"data": {...}, "present": {...}, "labels": {...}}`` into a batch.

    A ``MultimodalBatch`` (what datasets with ``__getitems__`` return) passes through unchanged.
    """
    if isinstance(items, MultimodalBatch):
        return items
    if not items:
        raise InputError("cannot collate an empty list of items")
    first = items[0]

    def stack(key):
        return {k: torch.stack([torch.as_tensor(it[key][k]) for it in items]) for k in first.get(key, {})}

    return MultimodalBatch(stack("data"), stack("present"), stack("labels"))
