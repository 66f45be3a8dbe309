"""Subset posteriors of many data points in fixed chunks, split across processes (or run one after another).

::

    def make_target(start, stop):                       # the data points [start, stop)
        return SubsetPosterior.from_guide(experts, batch[start:stop], given, prior)

    run = sample_sharded(make_target, num_points=N, num_samples=500, warmup_steps=150, chunk_size=1000, seed=0)
    run.samples                                           # (C, S, N, D), on every process

The N points are cut into chunks of ``chunk_size`` consecutive points; chunk k is sampled by
:func:`~pyro_mmvae.infer.mcmc.sample_subset_posterior` seeded with ``stage_seed(seed, "chunk<k>")``.
Under ``torchrun`` with W processes, process r samples the chunks k ≡ r (mod W) and every process
receives all draws. A chunk's draws depend only on its points, ``seed`` and ``k`` — not on how many
processes share the work — so the same seed gives the same draws per data point with 1 or W processes
(BatchedHMC's adaptation uses statistics of the whole batch it samples, e.g. the median step size; a
fixed chunk keeps them fixed too). ``chunk_size`` also bounds memory on one device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...distributed import DistributedError, all_gather_objects, world
from ...errors import check_int
from ...utils import stage_seed
from .run import sample_subset_posterior


@dataclass
class ShardedRun:
    """Draws ``samples`` ``(C, S, N, D)`` (CPU) of every point; per chunk: bounds, owning rank, wall time, escapes."""

    samples: torch.Tensor
    chunks: list[tuple[int, int]]
    ranks: list[int]
    wall_time: list[float]
    escaped_points: list[int]


def chunk_bounds(num_points: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of consecutive chunks of ``chunk_size`` points (the last may be shorter)."""
    return [(a, min(a + chunk_size, num_points)) for a in range(0, num_points, chunk_size)]


def sample_sharded(
    make_target: Callable[[int, int], object],
    num_points: int,
    num_samples: int,
    warmup_steps: int,
    *,
    chunk_size: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    progress: bool = False,
    **kwargs,
) -> ShardedRun:
    """Sample the targets of ``num_points`` points chunk by chunk, the chunks spread over the processes.

    Args:
        make_target: ``(start, stop) -> target`` of the points ``[start, stop)`` (a
            :class:`~pyro_mmvae.infer.subset_posterior.SubsetPosterior` or any sampler target).
        num_points, num_samples, warmup_steps, num_chains: as in
            :func:`~pyro_mmvae.infer.mcmc.sample_subset_posterior` (which gets ``kwargs`` too).
        chunk_size: points per BatchedHMC run.
        seed: the run's seed; chunk k uses ``stage_seed(seed, f"chunk{k}")``.

    Returns:
        :class:`ShardedRun` on every process. An error in any chunk (e.g. an improper subset posterior
        with ``improper="raise"``) is raised on every process.
    """
    num_points = check_int(num_points, "num_points", minimum=1)
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    w = world()
    bounds = chunk_bounds(num_points, chunk_size)
    mine: dict[int, tuple] = {}
    error = None
    for k in range(w.rank, len(bounds), w.size):
        a, b = bounds[k]
        try:
            run = sample_subset_posterior(
                make_target(a, b),
                num_samples=num_samples,
                warmup_steps=warmup_steps,
                num_chains=num_chains,
                seed=stage_seed(int(seed), f"chunk{k}"),
                progress=progress,
                **kwargs,
            )
        except Exception as err:  # every process must hear of it, or the others would wait forever
            error = err
            break
        mine[k] = (run.samples.detach().cpu(), run.wall_time, [a + i for i in run.escaped_points])
    parts = [(mine, error)] if not w.distributed else all_gather_objects((mine, error))
    errors = [(r, e) for r, (_, e) in enumerate(parts) if e is not None]
    if errors:
        rank, err = errors[0]
        if rank == w.rank or not w.distributed:
            raise err
        raise DistributedError(f"rank {w.rank}: sampling failed on rank {rank}: {type(err).__name__}: {err}") from err
    done = {k: (r, v) for r, (m, _) in enumerate(parts) for k, v in m.items()}
    ordered = [done[k] for k in range(len(bounds))]
    return ShardedRun(
        samples=torch.cat([v[0] for _, v in ordered], dim=2),
        chunks=bounds,
        ranks=[r for r, _ in ordered],
        wall_time=[v[1] for _, v in ordered],
        escaped_points=[i for _, v in ordered for i in v[2]],
    )
