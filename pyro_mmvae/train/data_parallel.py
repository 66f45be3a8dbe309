"""Data-parallel training over ``torch.distributed`` processes (launched by ``torchrun``).

Launch any training the library runs — the ``pyro-mmvae train`` command or your own script that calls
:func:`~pyro_mmvae.train.fit` — with ``torchrun``::

    torchrun --standalone --nproc_per_node 2 -m pyro_mmvae.cli train --dataset toy --model jnf --out RUN

``torchrun`` starts N processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_from_env` (called by the CLI; call it yourself at the top of a script) joins
them into one process group: NCCL when the processes train on CUDA devices (process ``LOCAL_RANK`` takes
``cuda:LOCAL_RANK``), gloo on CPUs. Without those variables nothing changes: :func:`world` reports one
process and ``fit`` runs as always.

What ``fit`` does with W > 1 processes (see :class:`DataParallel`):

- Every process builds the same global batches (the epoch order depends only on ``(seed, epoch)``) and
  computes the loss on its own contiguous share of each batch's rows (:func:`shard_bounds`; for a
  dataset only those rows are read). The shares' gradients are summed with weights n_r / n (n_r rows of
  the batch on rank r), which is the gradient of the mean loss over the whole batch: the same objective
  as one process with the same batch size. The loss logged is that global mean.
- Rank 0 alone writes the stage's files (checkpoints, ``config.json``, ``log.csv``, TensorBoard) and shows
  progress; it reads a checkpoint to resume and sends it to the others, so no shared file system is needed.
  Stop decisions (early stopping, your callbacks) are rank 0's and are sent to every rank.
- Parameters start equal on every rank (rank 0's are broadcast), and stay equal: every rank takes the same
  optimizer step from the same averaged gradient.
- Random draws (the guide's reparameterised noise) come from one stream per rank, re-seeded at every
  epoch from ``(seed, epoch, rank)``. A resume therefore reproduces an uninterrupted run exactly with the
  same number of processes; with another number it continues the same objective from the same parameters
  and optimizer state, with other noise draws (well defined, not bit-identical).
- An error on one rank (bad data, NaN loss) stops every rank with an error; a rank that dies makes the others
  raise :class:`DistributedError` at their next collective call, naming the epoch and step and the last
  checkpoint, which is left as it was (checkpoints are written atomically by rank 0).

Why one process and W processes agree only to float32 rounding, not bit for bit: the sum over a batch's
rows is split into W partial sums and re-added in another order, and Adam amplifies rounding differences
over many steps. With stochastic objectives they also draw different noise (see above).

Objectives whose loss is not a mean of per-row terms (e.g. DCCA or contrastive projector losses, which use
batch statistics) see each rank's share as their batch under data parallelism.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

from .. import distributed as procs
from ..distributed import World, _collective
from ..utils import set_seed, stage_seed


class DataParallel:
    """The collective steps of one ``fit`` stage under data parallelism (used by the training loop).

    Args:
        w: the process group's :class:`World` (size > 1).
        device: this rank's device (collectives on NCCL need CUDA tensors).
        where: a function describing the current place in training, for error messages.
    """

    def __init__(self, w: World, device: torch.device, where: Callable[[], str]):
        self.world, self.device, self.where = w, device, where
        procs._current_place = where  # for the message of a stop by the launcher
        # gloo reduces CPU tensors; NCCL needs them on the rank's GPU
        self.comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """One random stream per rank and epoch (see the module docstring on resuming)."""
        set_seed(stage_seed(int(seed), f"epoch{epoch}/rank{self.world.rank}"))

    def broadcast_parameters(self, modules: Iterable[torch.nn.Module]) -> None:
        """Give every rank rank 0's parameters and buffers."""
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                buf = t.detach().to(self.comm_device)  # t's own storage when already on the comm device
                _collective("broadcast", lambda b=buf: dist.broadcast(b, src=0), self.where)
                if buf.data_ptr() != t.data_ptr():
                    with torch.no_grad():
                        t.copy_(buf.to(t.device))

    def sum_values(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks of a few numbers (loss sums, row counts, error flags)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        _collective("all_reduce", lambda: dist.all_reduce(t), self.where)
        return t.tolist()

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Sum the (already weighted) gradients over the ranks, in one flat buffer.

        A parameter without a gradient on every rank keeps ``grad=None`` (as one process would); one that
        has a gradient on some rank gets zeros elsewhere, so every rank ends with the same gradients.
        """
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.comm_device)
        _collective("all_reduce", lambda: dist.all_reduce(has), self.where)
        used = [p for p, h in zip(params, has.tolist()) if h > 0]
        if not used:
            return
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1).to(self.comm_device, torch.float64) for p in used])
        _collective("all_reduce", lambda: dist.all_reduce(flat), self.where)
        offset = 0
        for p in used:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad).to(p.grad.dtype))
            offset += n
