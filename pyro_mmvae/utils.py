"""Small shared utilities: seeding, device resolution and atomic file writes.

- :func:`set_seed` seeds every random number generator the library touches (Python ``random``,
  NumPy's global generator, torch on CPU and every CUDA device, and Pyro, which draws from torch).
- :func:`resolve_device` turns ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:1"``/... into a
  ``torch.device`` and fails with a clear message when the device is not available; ``"auto"``
  picks CUDA when present. Nothing in the library hard-codes a device.
- :func:`atomic_write` / :func:`atomic_write_json` write through a temporary file in the target's
  own folder and ``os.replace`` it onto the target, so a crash or an error mid-write never leaves a
  truncated file behind and never clobbers the previous version. A process killed mid-write leaves
  its temporary file (named ``.<target>.pyro-mmvae-<12 hex>.tmp``); :func:`sweep_temporary_files`
  removes such leftovers when a run folder or stage is opened again (see :mod:`pyro_mmvae.tempfiles`).
- :func:`stage_seed` derives a stage's seed from the run seed and the stage name, so every stage of
  a multi-stage run starts from the same random state however the run was interrupted and resumed.
- :func:`kill_point` is a fault-injection hook for the crash-safety tests (SIGKILL at a named event).
- :func:`to_jsonable` turns results and configurations into plain JSON; :func:`run_record` is the
  command / date / machine header every results file (benchmarks, experiments) starts with.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import shlex
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyro
import torch

from .errors import RunFolderError
from .tempfiles import create_temporary
from .tempfiles import sweep_temporary_files as sweep_temporary_files  # re-exported


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


def stage_seed(run_seed: int, stage: str) -> int:
    """The seed of stage ``stage`` of a run seeded with ``run_seed``: an int in ``[0, 2**32)``.

    A stable hash (BLAKE2b of ``"<run_seed>/<stage>"``), the same in every process, Python version
    and platform (unlike ``hash()``), and different for different stages of one run. Seeding each
    stage with it right before its modules are built (and giving it to the stage's ``fit``) makes a
    stage's parameters independent of what earlier stages did to the global RNGs: a stage started
    fresh, resumed mid-way, or started after an earlier stage was resumed or skipped (finished)
    gives bit-identical parameters.

    Raises:
        TypeError: ``run_seed`` is not an int or ``stage`` not a non-empty string.
    """
    if isinstance(run_seed, bool) or not isinstance(run_seed, int | np.integer):
        raise TypeError(f"run_seed must be an int, got {type(run_seed).__name__} {run_seed!r}")
    if not isinstance(stage, str) or not stage:
        raise TypeError(f"stage must be a non-empty string, got {stage!r}")
    digest = hashlib.blake2b(f"{int(run_seed)}/{stage}".encode(), digest_size=4, person=b"pyro_mmvae.stage")
    return int.from_bytes(digest.digest(), "big")


KILL_ENV = "PYRO_MMVAE_KILL_AT"
KILL_RANK_ENV = "PYRO_MMVAE_KILL_RANK"  # restricts KILL_ENV to the process of that RANK
_kill_counts: dict[str, int] = {}


def kill_point(event: str, detail: str | None = None) -> None:
    """TEST HOOK (fault injection): SIGKILL this process at the n-th occurrence of an event.

    Does nothing unless the environment variable ``PYRO_MMVAE_KILL_AT`` is set to
    ``"<event>:<n>"`` or ``"<event>:<detail>:<n>"``; the n-th call (1-based, counted per process)
    whose ``event`` (and ``detail``) match then kills the process with ``SIGKILL`` (no clean-up,
    no ``finally`` blocks: what a power cut or the OOM killer does). The library's events:

    - ``atomic_write:mid:<file name>``: the content is written to the temporary file but not yet
      flushed or fsync-ed (a partial temporary file is left);
    - ``atomic_write:before_replace:<file name>``: the temporary file is complete and fsync-ed,
      the rename onto the target has not happened;
    - ``fit_step:<stage>``: after an optimizer step of ``fit`` (mid-epoch);
    - ``ensemble_step:<stage>``: after an optimizer step of ``fit_ensemble`` (mid-epoch);
    - ``stage_end:<stage>``: a stage of the CLI pipeline returned, the next has not begun.

    Under ``torchrun`` every process sees the variable; ``PYRO_MMVAE_KILL_RANK=<r>`` restricts the kill
    to the process whose ``RANK`` is r (a worker dying mid-epoch, the others alive).

    Used by ``tests/test_crash_safety.py``; reading one environment variable costs nanoseconds.

    Raises:
        ValueError: the variable is set but is not of the form ``<event>[:<detail>]:<n>`` with n >= 1.
    """
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    if not name or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{KILL_ENV} must be '<event>[:<detail>]:<n>' with n >= 1, got {spec!r}")
    if name != event and (detail is None or name != f"{event}:{detail}"):
        return
    rank = os.environ.get(KILL_RANK_ENV)
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    _kill_counts[spec] = _kill_counts.get(spec, 0) + 1
    if _kill_counts[spec] == int(count):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


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

    The temporary file (``.<name>.pyro-mmvae-<12 hex>.tmp``, see :mod:`pyro_mmvae.tempfiles`) lives
    in the same folder (``os.replace`` is atomic only within one file system), is locked while it is
    written so that :func:`sweep_temporary_files` leaves it alone, is flushed and fsync-ed before the
    rename, and is removed if ``write`` raises; in that case ``path`` keeps its previous content. A
    process killed mid-write leaves the temporary file behind (the target is untouched); the next
    sweep of the folder removes it. Parent folders are created. The file ends up with the
    permissions a plain ``open(path, "w")`` gives.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary(path)
    try:
        # the file stays open (and locked) until after the rename: a sweep never sees it unlocked
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            kill_point("atomic_write:mid", path.name)
            f.flush()
            os.fsync(f.fileno())
            kill_point("atomic_write:before_replace", path.name)
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


# ---------------------------------------------------------------------------------------- results files
def read_json(path: str | os.PathLike, required: Sequence[str] = (), what: str = "run-folder file") -> Any:
    """The JSON content of ``path``; a missing, unreadable or corrupt file, or a JSON object lacking one
    of the ``required`` keys, raises :class:`~pyro_mmvae.errors.RunFolderError` naming the path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RunFolderError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunFolderError(f"cannot read {what} {path}: {type(err).__name__}: {err}") from err
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise RunFolderError(
            f"{what} {path} is not valid JSON (corrupt or partially written): {err}; restore it or start a new run"
        ) from err
    if required:
        if not isinstance(obj, dict):
            raise RunFolderError(f"{what} {path} holds a JSON {type(obj).__name__}, expected an object")
        lacking = [k for k in required if k not in obj]
        if lacking:
            raise RunFolderError(f"{what} {path} lacks the entries {lacking}")
    return obj


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
