"""Small shared utilities: seeding, device resolution and atomic file writes.

- :func:`set_seed` seeds every random number generator the library touches (Python ``random``,
  NumPy's global generator, torch on CPU and every CUDA device, and Pyro, which draws from torch).
- :func:`resolve_device` turns ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:1"``/... into a
  ``torch.device`` and fails with a clear message when the device is not available; ``"auto"``
  picks CUDA when present. Nothing in the library hard-codes a device.
- :func:`atomic_write` / :func:`atomic_write_json` write through a temporary file in the target's
  own folder and ``os.replace`` it onto the target, so a crash or an error mid-write never leaves a
  truncated file behind and never clobbers the previous version.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyro
import torch


def set_seed(seed: int) -> None:
    """Seed Python ``random``, NumPy, torch (CPU and all CUDA devices) and Pyro with ``seed``.

    Raises:
        TypeError / ValueError: ``seed`` is not a non-negative integer below 2**32 (NumPy's limit).
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    pyro.set_rng_seed(seed)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` meant by ``device``.

    Args:
        device: ``"auto"`` (or ``None``): CUDA when available, else CPU; otherwise anything
            ``torch.device`` accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device``).

    Raises:
        ValueError: the string is not a device name.
        RuntimeError: the device exists in torch but not on this machine (no CUDA, index out of range, no MPS).
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(device, str):
        try:
            dev = torch.device(device.strip())
        except RuntimeError as err:
            raise ValueError(
                f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:<index>' or another torch device"
            ) from err
    elif isinstance(device, torch.device):
        dev = device
    else:
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(dev)!r} requested but CUDA is not available here "
                "(torch.cuda.is_available() is False); use device='auto' or 'cpu'"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise RuntimeError(f"device {str(dev)!r} requested but only {count} CUDA device(s) are visible")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeError(f"device {str(dev)!r} requested but MPS is not available here")
    return dev


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], binary: bool = True) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file next to ``path``, then it replaces ``path``.

    The temporary file lives in the same folder (``os.replace`` is atomic only within one file
    system), is flushed and fsync-ed before the rename, and is removed if ``write`` raises; in
    that case ``path`` keeps its previous content. Parent folders are created.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Persist a rename on POSIX file systems (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (see :func:`atomic_write`).

    The object is serialised to a string BEFORE the file is touched, so an object that is not
    JSON-serialisable raises without creating or changing anything.
    """
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=True) + "\n"
    return atomic_write(path, lambda f: f.write(text), binary=False)
