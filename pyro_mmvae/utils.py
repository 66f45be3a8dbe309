"""Small shared utilities: seeding, device resolution and atomic file writes.

- :func:`set_seed` seeds every random number generator the library touches (Python ``random``,
  NumPy's global generator, torch on CPU and every CUDA device, and Pyro, which draws from torch).
- :func:`resolve_device` turns ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:1"``/... into a
  ``torch.device`` and fails with a clear message when the device is not available; ``"auto"``
  picks CUDA when present. Nothing in the library hard-codes a device.
- :func:`atomic_write` / :func:`atomic_write_json` write through a temporary file in the target's
  own folder and ``os.replace`` it onto the target, so a crash or an error mid-write never leaves a
  truncated file behind and never clobbers the previous version.
- :func:`to_jsonable` turns results and configurations into plain JSON; :func:`run_record` is the
  command / date / machine header every results file (benchmarks, experiments) starts with.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
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
    that case ``path`` keeps its previous content. Parent folders are created. The file ends up
    with the permissions a plain ``open(path, "w")`` gives (see :func:`_create_beside`).

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
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


def _create_beside(path: Path) -> tuple[int, str]:
    """Create a new, uniquely named temporary file next to ``path``: ``(fd open for writing, its name)``.

    Its permissions are those ``open(path, "w")`` would give: a new file gets 0o666 minus the umask,
    a file that replaces an existing one keeps that file's mode. (``tempfile.mkstemp`` creates
    0o600 files, which made every run's config, metrics and checkpoints unreadable to other users.)
    Passing 0o666 to ``os.open`` lets the kernel apply the umask (and a folder's default ACL) itself,
    so the process-global umask is never read or changed, which keeps this safe with threads.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            pass  # a new file: the umask already applied
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        return fd, tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")


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


# ---------------------------------------------------------------------------------------- results files
def to_jsonable(x: Any, non_finite: str = "null") -> Any:
    """``x`` with every part turned into plain JSON: dicts (keys as strings), lists, numbers, strings, None.

    Tuples become lists, NumPy scalars Python numbers, a tensor ``{"tensor": shape, "dtype": dtype}``
    (its description, not its values) and any other object ``"<TypeName>"``.

    Args:
        non_finite: what NaN and ±inf become: ``"null"`` (``None``, as results files record a failed
            metric) or ``"repr"`` (the strings ``"nan"``, ``"inf"``, ``"-inf"``, as run configurations
            record them so that they stay distinguishable).
    """
    if non_finite not in ("null", "repr"):
        raise ValueError(f"non_finite must be 'null' or 'repr', got {non_finite!r}")
    if x is None or isinstance(x, bool | str):
        return x
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        x = float(x)
        if math.isfinite(x):
            return x
        return None if non_finite == "null" else repr(x)
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v, non_finite) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v, non_finite) for v in x]
    if isinstance(x, torch.Tensor):
        return {"tensor": list(x.shape), "dtype": str(x.dtype)}
    return f"<{type(x).__qualname__}>"


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """``python <script> <arguments>`` as a shell would need it typed (``argv`` defaults to ``sys.argv[1:]``)."""
    return "python " + shlex.join([script, *(sys.argv[1:] if argv is None else argv)])


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none): how busy a shared host was."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record(device: str | torch.device | None = "cpu", threads: int | None = None) -> dict:
    """The machine a result was measured on: CPU, cores, versions, torch threads, device (and GPU), load."""
    dev = resolve_device(device)
    out = {
        "cpu": _cpu_name(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "threads": torch.get_num_threads() if threads is None else threads,
        "device": str(dev),
        "load_average": load_average(),
    }
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def run_record(
    command: str, device: str | torch.device | None = "cpu", threads: int | None = None, **extra: Any
) -> dict:
    """The header of a results file: ``{"command", "date" (UTC, ISO 8601), "machine": machine_record(...), **extra}``.

    Args:
        command: the command that produced the results (see :func:`command_line`).
        device, threads: the torch device and CPU threads the results were measured with.
        extra: further top-level entries (settings, worker counts, ...), kept in the given order.
    """
    return {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_record(device, threads),
        **extra,
    }
