"""Processes of one run under ``torch.distributed`` (launched by ``torchrun``): who am I, collectives, sharding.

``torchrun`` starts N processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_from_env` (the CLI calls it; call it yourself at the top of a script) joins
them into one process group: NCCL when the processes work on CUDA devices (process ``LOCAL_RANK`` takes
``cuda:LOCAL_RANK``), gloo on CPUs. Without those variables nothing changes: :func:`world` reports one
process and everything runs as always.

Used by data-parallel training (:mod:`pyro_mmvae.train.data_parallel`) and by sharded subset-posterior
sampling and evaluation (:mod:`pyro_mmvae.infer.mcmc.sharded`). A failed collective (a peer died) raises
:class:`DistributedError` saying where; ``torchrun``'s SIGTERM to the survivors raises it too.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import InputError

__all__ = [
    "World",
    "world",
    "init_from_env",
    "shutdown",
    "check_joined",
    "shard_bounds",
    "rank_device",
    "DistributedError",
    "all_gather_objects",
    "broadcast_object",
    "on_main",
]

DEFAULT_TIMEOUT = timedelta(minutes=30)

# Where the running fit stage is (epoch, step, last checkpoint), for the message of a stop by torchrun.
_current_place: Callable[[], str] | None = None


class DistributedError(RuntimeError):
    """A collective operation failed: another process died, was killed, or raised an error."""


@dataclass(frozen=True)
class World:
    """The processes of this run: ``rank`` in ``[0, size)``; ``local_rank`` on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The current process group (one process when ``torch.distributed`` is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def check_joined() -> None:
    """Raise when ``torchrun`` started this process (``WORLD_SIZE`` > 1) but it has not joined the group.

    Otherwise every process would train alone and all of them would write the same run folder.
    """
    if _env_world_size() > 1 and not (dist.is_available() and dist.is_initialized()):
        raise DistributedError(
            f"this process was started by torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}) but has not joined the "
            "process group: call pyro_mmvae.distributed.init_from_env() before training"
        )


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise InputError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from err


def init_from_env(device: str | torch.device | None = "auto", timeout: timedelta = DEFAULT_TIMEOUT) -> World:
    """Join the process group ``torchrun`` describes in the environment; a no-op for a single process.

    Args:
        device: where this process will train: ``"auto"``/``"cuda"`` use NCCL and the GPU ``LOCAL_RANK``
            when CUDA is available; ``"cpu"`` (or no CUDA) uses gloo.
        timeout: how long a collective waits for a silent peer before failing.

    Returns:
        this process's :class:`World`.
    """
    if _env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    wants_cuda = str(device).startswith("cuda") or (str(device) in ("auto", "None") and torch.cuda.is_available())
    backend = "nccl" if wants_cuda and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timeout)
    signal.signal(signal.SIGTERM, _stopped_by_launcher)
    return world()


def _stopped_by_launcher(signum, frame):
    """torchrun sends SIGTERM to every process when one fails: stop with an error that says so and where."""
    place = "" if _current_place is None else f" {_current_place()}"
    raise DistributedError(
        f"rank {world().rank}: stopped by the launcher (SIGTERM){place}; torchrun stops every process when one "
        "of them fails (see that rank's message). Rerun the same command with --resume to continue from the last "
        "checkpoint"
    )


def shutdown() -> None:
    """Leave the process group (when one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, w: World | None = None) -> torch.device:
    """``device`` for this rank: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` under data parallelism."""
    w = world() if w is None else w
    if w.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", w.local_rank)
    return device


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` rows (shares differ by ≤ 1 row)."""
    base, extra = divmod(int(n), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _collective(what: str, fn: Callable[[], Any], where: Callable[[], str] | None = None):
    """Run a collective; a failure (a peer died) becomes a :class:`DistributedError` that says where."""
    try:
        return fn()
    except (RuntimeError, ConnectionError) as err:  # gloo/NCCL raise RuntimeError subclasses
        place = "" if where is None else f" {where()}"
        raise DistributedError(
            f"rank {world().rank}: the collective {what} failed{place}: another process died, was killed or "
            f"stopped with an error ({type(err).__name__}: {err}). Rerun the same command with --resume "
            "(resume=True) to continue from the last checkpoint"
        ) from err


def broadcast_object(obj: Any, src: int = 0, where: Callable[[], str] | None = None) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; tensors travel on the CPU)."""
    box = [obj]
    _collective("broadcast_object_list", lambda: dist.broadcast_object_list(box, src=src), where)
    return box[0]


def all_gather_objects(obj: Any, where: Callable[[], str] | None = None) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    out: list = [None] * world().size
    _collective("all_gather_object", lambda: dist.all_gather_object(out, obj), where)
    return out


def on_main(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` on rank 0 alone (e.g. checks and writes of a run folder); the others wait.

    An exception raised on rank 0 is raised on every rank, so all of them stop with the same message.
    Returns ``fn``'s result on every rank (it must pickle); one process simply calls ``fn``.
    """
    w = world()
    if not w.distributed:
        return fn(*args, **kwargs)
    result, error = None, None
    if w.is_main:
        try:
            result = fn(*args, **kwargs)
        except Exception as err:  # re-raised everywhere below
            error = err
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result
