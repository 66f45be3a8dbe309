"""The one validation path every entry point runs on a batch, once, on the way in.

:func:`validate_batch` checks a :class:`~pyro_mmvae.data.MultimodalBatch` against the modalities of
the component that receives it (model, guide, objective, metric, sampler set-up) and returns a SAFE
batch: the same tensors where every row is present, and for each modality with missing rows a new
tensor in which those rows hold zeros (class 0 for a categorical modality). The user's tensors are
never modified. Downstream, every log-density of a missing row is then finite before the presence
mask zeroes it, so whatever a missing row held (NaN, inf, 1e30, a wrong class) changes neither a
value nor a gradient.

Checked, each error naming the modality (or rows) and the expected vs received value:

- types: a :class:`MultimodalBatch` of torch tensors (a numpy array → :class:`InputTypeError`);
- names: no modality the component does not know; with ``require_all`` none of its modalities missing;
- shape ``(B, *event_shape)`` and dtype (floats; integer class indices for ``categorical``);
- presence masks: bool tensors of shape ``(B,)`` on the data's device;
- labels: tensors with ``B`` rows;
- values, in PRESENT rows only: finite; bernoulli in ``[0, 1]``; class indices in ``[0, K)``;
- no row with every modality missing, and ``B >= 1``.

Cheap and idempotent: the checks are a few reductions per modality (not per Pyro site), and the
result is remembered on the batch (with the tensors' identities and in-place versions), so a second
entry point handed the same batch returns at once. :func:`declared_modalities` reads what a model or
guide declares (``.modalities``), so callers need not know the component's kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ..errors import InputError, InputTypeError, UnknownModalityError
from .batch import MultimodalBatch
from .modality import Modality

_MARK = "_validated"  # attribute holding (modalities checked, tensor stamp, safe batch or None for itself)


def as_modality_dict(modalities) -> dict[str, Modality] | None:
    """``{name: Modality}`` from a mapping or an iterable of :class:`Modality`; ``None`` stays ``None``."""
    if modalities is None:
        return None
    items = modalities.values() if isinstance(modalities, Mapping) else modalities
    out = {}
    for m in items:
        if not isinstance(m, Modality):
            raise InputTypeError(f"modalities must be Modality objects, got {type(m).__name__}")
        out[m.name] = m
    return out


def declared_modalities(*owners) -> dict[str, Modality] | None:
    """The union of the ``.modalities`` the ``owners`` declare (earlier owners win a name); ``None`` if none do."""
    out: dict[str, Modality] = {}
    found = False
    for owner in owners:
        mods = getattr(owner, "modalities", None) if owner is not None else None
        if not isinstance(mods, (Mapping, list, tuple)):
            continue  # not declared (or something else called "modalities")
        try:
            spec = as_modality_dict(mods)
        except InputTypeError:
            continue  # something else called "modalities": nothing declared
        found = True
        for name, m in spec.items():
            out.setdefault(name, m)
    return out if found else None


def validate_for(batch: MultimodalBatch, *owners, what: str = "batch", allow_unknown: bool = False) -> MultimodalBatch:
    """:func:`validate_batch` against the modalities the ``owners`` (model, guide, ...) declare."""
    return validate_batch(batch, declared_modalities(*owners), what=what, allow_unknown=allow_unknown)


def mark_validated(batch: MultimodalBatch, modalities: Mapping[str, Modality] | None) -> MultimodalBatch:
    """Mark ``batch`` as validated against ``modalities`` without checking it; returns ``batch``.

    For a batch assembled from batches that each passed :func:`validate_batch` (the ensemble trainer
    stacks its members' validated batches inside ``vmap``, where value checks cannot run).
    """
    key = None if modalities is None else dict(modalities)
    setattr(batch, _MARK, (key, _stamp(batch), None))
    return batch


def prepare_batch(batch, device, *owners, what: str = "batch") -> MultimodalBatch:
    """``batch`` moved to ``device`` and validated against the ``owners``' modalities (the trainer's step)."""
    if not isinstance(batch, MultimodalBatch):
        raise InputTypeError(
            f"{what} must yield MultimodalBatch objects, got {type(batch).__name__} (a DataLoader needs "
            "collate_fn=pyro_mmvae.data.collate)"
        )
    return validate_for(batch.to(device), *owners, what=what)


def _stamp(batch: MultimodalBatch) -> tuple:
    """Identity and in-place version of every tensor: a changed tensor invalidates the mark."""
    out = []
    for group in (batch.data, batch.present, batch.labels):
        for name, t in group.items():
            out.append((name, id(t), getattr(t, "_version", None)))
    return tuple(out)


def _covers(checked: dict[str, Modality] | None, wanted: dict[str, Modality] | None) -> bool:
    """Whether a batch checked against ``checked`` needs no new check against ``wanted``."""
    if wanted is None or not wanted:
        return True
    return checked is not None and all(checked.get(n) == m for n, m in wanted.items())


def _check_names(
    batch: MultimodalBatch, spec: dict[str, Modality] | None, require_all: bool, allow_unknown: bool, what: str
) -> None:
    if spec is None:
        return
    unknown = [n for n in batch.names if n not in spec]
    if unknown and not allow_unknown:
        raise UnknownModalityError(f"{what}: unknown modality name(s) {unknown}; expected some of {list(spec)}")
    if require_all:
        missing = [n for n in spec if n not in batch.data]
        if missing:
            raise UnknownModalityError(
                f"{what} lacks modalities {missing}; pass them as zeros with present=False to mark them missing"
            )


def validate_batch(
    batch: MultimodalBatch,
    modalities: Mapping[str, Modality] | Iterable[Modality] | None = None,
    *,
    require_all: bool = False,
    allow_unknown: bool = False,
    what: str = "batch",
    remember: bool = True,
) -> MultimodalBatch:
    """Check ``batch`` (see the module docstring) and return the safe batch (missing rows zero-filled).

    Args:
        batch: a :class:`MultimodalBatch`, ``data[name]`` of shape ``(B, *event_shape)``.
        modalities: the receiving component's modalities; ``None`` runs the checks that need none
            (types, masks, B >= 1, finite present rows) and the filling.
        require_all: also reject a batch that lacks one of ``modalities``.
        allow_unknown: accept (and check only structurally) modalities outside ``modalities``, for a
            component that reads some of the batch's modalities only (a guide's ``posterior``).
        what: how messages call the batch (``"train_data"``, ``"batch"``).
        remember: mark ``batch`` (and the safe batch) as validated; ``False`` for a one-off check of a
            whole dataset, whose zero-filled copy should not be kept alive by the mark.

    Raises:
        InputTypeError, InputError, UnknownModalityError: naming the modality, the rows or the argument.
    """
    if not isinstance(batch, MultimodalBatch):
        raise InputTypeError(
            f"{what} must be a MultimodalBatch, got {type(batch).__name__}; build one with "
            "MultimodalBatch(data, present, labels) from torch tensors"
        )
    spec = as_modality_dict(modalities)
    _check_names(batch, spec, require_all, allow_unknown, what)
    key = None if spec is None else {n: spec[n] for n in batch.names if n in spec}
    stamp = _stamp(batch)
    mark = batch.__dict__.get(_MARK)
    if mark is not None and mark[1] == stamp and _covers(mark[0], key):
        return batch if mark[2] is None else mark[2]
    _check_structure(batch, key, what)
    safe = _fill_missing(batch)
    _check_values(safe, key, what)
    if remember:
        setattr(safe, _MARK, (key, _stamp(safe), None))
        if safe is not batch:
            setattr(batch, _MARK, (key, stamp, safe))
    return safe


def _check_structure(batch: MultimodalBatch, key: dict[str, Modality] | None, what: str) -> None:
    """Types, shapes, dtypes, masks, labels, B >= 1 and rows with something present."""
    for name, x in batch.data.items():
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(
                f"{what}: modality {name!r} must be a torch.Tensor, got {type(x).__name__}; convert it with "
                "torch.as_tensor(x) (float32 for continuous/bernoulli data, int64 for class indices)"
            )
    b = batch.batch_size
    if b == 0:
        raise InputError(f"{what} is empty (batch size 0): every modality has 0 rows; pass at least one row")
    for name, x in batch.data.items():
        if key is not None and name in key:
            key[name].validate(x, b)
        _check_mask(name, batch.present[name], b, x.device, what)
    for name, y in batch.labels.items():
        if not isinstance(y, torch.Tensor):
            raise InputTypeError(f"{what}: label {name!r} must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() == 0 or y.shape[0] != b:
            raise InputError(f"{what}: label {name!r} must have {b} rows (shape ({b}, ...)), got {tuple(y.shape)}")
    any_present = torch.stack([p for p in batch.present.values()], -1).any(-1)
    if not bool(any_present.all()):
        rows = (~any_present).nonzero().flatten().tolist()
        raise InputError(
            f"{what}: rows {_rows(rows)} have every modality missing (present=False everywhere); drop them"
        )


def _check_mask(name: str, p, b: int, device: torch.device, what: str) -> None:
    if not isinstance(p, torch.Tensor):
        raise InputTypeError(
            f"{what}: presence mask of {name!r} must be a bool torch.Tensor of shape ({b},), got {type(p).__name__}"
        )
    if p.dtype != torch.bool:
        raise InputTypeError(
            f"{what}: presence mask of {name!r} must be a bool tensor of shape ({b},), got dtype {p.dtype}; "
            "convert with mask.bool()"
        )
    if tuple(p.shape) != (b,):
        raise InputError(
            f"{what}: presence mask of {name!r} must be a bool tensor of shape ({b},), got shape {tuple(p.shape)}"
        )
    if p.device != device:
        raise InputError(
            f"{what}: presence mask of {name!r} is on device {p.device}, but the modality's data is on {device}"
        )


def _fill_missing(batch: MultimodalBatch) -> MultimodalBatch:
    """The batch with zeros in every missing row (a new batch, new tensors only where rows are missing)."""
    complete = torch.stack([p.all() for p in batch.present.values()]).tolist()  # one host sync
    if all(complete):
        return batch
    data = {}
    for (name, x), full in zip(batch.data.items(), complete):
        if full:
            data[name] = x
            continue
        keep = batch.present[name].reshape(-1, *([1] * (x.dim() - 1)))
        data[name] = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return MultimodalBatch(data, dict(batch.present), dict(batch.labels))


def _value_checks(safe: MultimodalBatch, key: dict[str, Modality] | None):
    """``(name, kind, per-element bad flags (B, n))`` for every check that applies."""
    b = safe.batch_size
    for name, x in safe.data.items():
        flat = x.reshape(b, -1)
        if x.dtype.is_floating_point:
            yield name, "finite", flat, ~torch.isfinite(flat)
        m = None if key is None else key.get(name)
        if m is not None and m.likelihood == "bernoulli":
            yield name, "bernoulli", flat, (flat < 0) | (flat > 1)
        elif m is not None and m.is_discrete:
            yield name, "categorical", flat, (flat < 0) | (flat >= m.num_classes)


def _check_values(safe: MultimodalBatch, key: dict[str, Modality] | None, what: str) -> None:
    """Finite values and the likelihood's range; missing rows already hold zeros, so every row can be read.

    All flags are reduced on the device and read back with one host sync; details only on failure.
    """
    checks = [c for c in _value_checks(safe, key) if c[2].numel()]
    if not checks or not any(torch.stack([bad.any() for *_, bad in checks]).tolist()):
        return
    for name, kind, flat, bad in checks:
        if not bool(bad.any()):
            continue
        rows = _rows(bad.any(-1).nonzero().flatten().tolist())
        if kind == "finite":
            raise InputError(
                f"{what}: modality {name!r} has NaN/inf values in present rows {rows} "
                "(only rows marked missing may hold them)"
            )
        m = key[name]
        shown = "values in [0, 1]" if kind == "bernoulli" else f"class indices in [0, {m.num_classes})"
        raise InputError(
            f"{what}: modality {name!r} ({kind}) needs {shown}, got values in "
            f"[{flat.min().item():g}, {flat.max().item():g}] in present rows {rows}"
        )


def _rows(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, rows[:limit]))
    more = f", ... ({len(rows)} rows)" if len(rows) > limit else ""
    return f"[{shown}{more}]"
