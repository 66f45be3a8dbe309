"""Checkpoint I/O: atomic saves, ``weights_only`` loads, RNG states as plain tensors, and shape checks.

Every checkpoint the library writes holds only tensors and plain Python values (dicts, lists,
tuples, str, int, float, bool, None), so it loads with ``torch.load(..., weights_only=True)``:
loading never executes pickled code. RNG states are stored in that form too — torch's (and each
CUDA device's) as byte tensors, NumPy's Mersenne-Twister state as an int64 tensor plus ints, and
Python's ``random`` state as a list of ints.

Writes go through :func:`pyro_mmvae.utils.atomic_write` (temporary file in the same folder, then
``os.replace``): a crash or an error while writing leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunFolderError
from ..utils import atomic_write

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError, RunFolderError):
    """A checkpoint file is unreadable (corrupt, partial, or not written by this library)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model/guide it is loaded into (parameter names or shapes differ)."""


# ---------------------------------------------------------------------- files


_PLAIN_SCALARS = (str, int, float, bool, type(None))


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the offending key unless ``obj`` is loadable with ``weights_only=True``.

    Allowed: tensors, ``torch.Size``, dicts (plain keys), lists, tuples, and exact ``str``/``int``/
    ``float``/``bool``/``None`` (subclasses such as ``torch.__version__``'s type would need pickling).
    """
    if isinstance(obj, torch.Tensor | torch.Size) or type(obj) in _PLAIN_SCALARS:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) not in _PLAIN_SCALARS:
                raise TypeError(
                    f"{where} has a key of type {type(k).__qualname__}; weights_only loading needs plain keys"
                )
            check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints may hold only tensors and plain "
        "Python values so that they load with torch.load(..., weights_only=True)"
    )


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; the previous file survives any failure.

    ``obj`` is checked with :func:`check_plain` first, so a checkpoint that could not be loaded
    with ``weights_only=True`` is never written.
    """
    obj = dict(obj)
    check_plain(obj)
    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with clear errors.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file cannot be read as a weights-only checkpoint (corrupt, truncated,
            or holding pickled objects).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt/unsafe files
        raise CheckpointError(
            f"cannot read checkpoint {path} with weights_only=True (corrupt, partially written, or it holds "
            f"pickled objects): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


# ---------------------------------------------------------------------- RNG states


def get_rng_state() -> dict:
    """The states of torch (CPU and every CUDA device), NumPy's global generator and Python ``random``.

    Shapes/types: ``torch`` uint8 tensor; ``cuda`` list of uint8 tensors (empty without CUDA);
    ``numpy`` dict with ``keys`` int64 tensor (624,), ``pos``/``has_gauss`` ints, ``cached_gaussian``
    float; ``python`` dict with ``version`` int, ``state`` list of 625 ints, ``gauss_next`` float or None.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": [int(v) for v in state], "gauss_next": gauss_next},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states saved by :func:`get_rng_state`.

    CUDA states are restored when this machine has the same number of CUDA devices; a checkpoint
    written on another kind of machine cannot reproduce its CUDA random stream anyway.
    """
    torch.set_rng_state(state["torch"].cpu())
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].cpu().numpy().astype(np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["cached_gaussian"]),
        )
    )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"]))


# ---------------------------------------------------------------------- state-dict signatures


def state_signature(module: torch.nn.Module) -> dict[str, list[int]]:
    """``{state-dict key: shape}`` of a module (parameters and buffers): what a checkpoint must match."""
    return {k: list(v.shape) for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def check_signature(saved: Mapping[str, list[int]], module: torch.nn.Module, what: str, source: str = "") -> None:
    """Raise :class:`CheckpointMismatchError` unless ``module`` has exactly the keys and shapes of ``saved``.

    Args:
        saved: the signature stored in the checkpoint (see :func:`state_signature`).
        module: the module about to receive the weights.
        what: ``"model"``/``"guide"``, named in the message.
        source: the checkpoint path, named in the message.
    """
    current = state_signature(module)
    missing = [k for k in saved if k not in current]
    unexpected = [k for k in current if k not in saved]
    shapes = [
        f"{k}: checkpoint {tuple(saved[k])} vs {what} {tuple(current[k])}"
        for k in saved
        if k in current and tuple(saved[k]) != tuple(current[k])
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"in the checkpoint but not in the {what}: {_few(missing)}")
    if unexpected:
        parts.append(f"in the {what} but not in the checkpoint: {_few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {_few(shapes)}")
    where = f" {source}" if source else ""
    raise CheckpointMismatchError(
        f"checkpoint{where} does not match this {what} ({type(module).__name__}); " + "; ".join(parts)
    )


def _few(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def load_weights(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str = "") -> None:
    """Check the signature of ``state`` against ``module``, then ``module.load_state_dict(state)``."""
    check_signature({k: list(v.shape) for k, v in state.items()}, module, what, source)
    module.load_state_dict(state)


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module.state_dict()`` (same device), safe from later in-place updates."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
