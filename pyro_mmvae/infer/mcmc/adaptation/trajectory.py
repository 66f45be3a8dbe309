"""Trajectory-length adaptation from U-turn times, and the loop length all targets share.

In the spirit of "Faster Hamiltonian Monte Carlo by Learning Leapfrog Scale" (eHMC; Wu, Stoehr &
Robert, 2018): during warmup the kernel follows some trajectories until they make a U-turn (the first
time ℓ ε with (z_ℓ − z_0) · p_ℓ < 0: the distance from the start, in the mass-matrix metric, stops
growing) and :meth:`TrajectoryLengthAdapter.record` collects those times per target. At each refresh
T_u = mean + one standard deviation of the recorded times (:meth:`~TrajectoryLengthAdapter.update`).
Iterations then integrate for a time t ~ Uniform[(1 − j) c T_u, (1 + j) c T_u] (``trajectory_scale``
c, ``jitter`` j).

Why c T_u rather than T_u: on a Gaussian in the adapted metric the dynamics rotate each coordinate by
the angle t, so draws have lag-1 autocorrelation E[cos t] for the mean and E[cos² t] for the variance,
and T_u ≈ 3.3-3.6 for D ≥ 2. With c = 0.4, j = 0.3, t ∈ [1.0, 1.8] around π/2: E[cos t] ≈ 0.17,
E[cos² t] ≈ 0.08, while "uniform up to the U-turn" (c = 0.5, j = 1) gives E[cos t] = 0 but
E[cos² t] = 1/2, and a longer loop. The defaults were chosen by ESS per gradient evaluation on the
targets of ``benchmarks/subset_posterior.py``; its results for them are in
``benchmarks/results/subset_posterior_cpu.md``.

All targets advance in lockstep, so the loop runs as many leapfrog steps as the longest trajectory
needs (:meth:`~TrajectoryLengthAdapter.loop_lengths`); the targets' own step counts are masks.
"""

from __future__ import annotations

import torch

__all__ = ["INITIAL_UTURN_TIME", "TrajectoryLengthAdapter"]

# T_u of a standard Gaussian in a matching metric (≈ π + its spread): the first trajectories' guess
INITIAL_UTURN_TIME = 3.5


class TrajectoryLengthAdapter:
    """Per-target U-turn time T_u ``(*B,)`` learned from recorded U-turns, and the shared loop lengths.

    Args:
        like: a tensor of the targets' batch shape ``(*B,)`` (dtype and device).
        trajectory_scale: c, the mean integration time is c × T_u.
        jitter: j in (0, 1]: integration times are uniform on [(1 − j) c T_u, (1 + j) c T_u].
        max_num_steps: cap on the leapfrog steps of one iteration.
        initial_time: T_u before any U-turn is recorded.
        explore_factor: exploring iterations integrate for ``explore_factor`` × T_u, long enough to see
            most U-turns (a censored one lengthens the next exploring loop).
    """

    def __init__(
        self,
        like: torch.Tensor,
        trajectory_scale: float,
        jitter: float,
        max_num_steps: int,
        initial_time: float = INITIAL_UTURN_TIME,
        explore_factor: float = 1.5,
    ):
        self.trajectory_scale, self.jitter = trajectory_scale, jitter
        self.max_num_steps, self.explore_factor = max_num_steps, explore_factor
        self.time = torch.full_like(like, initial_time)
        self.reset_statistics()

    @property
    def mean_time(self) -> torch.Tensor:
        """The mean integration time c × T_u ``(*B,)``."""
        return self.trajectory_scale * self.time

    def reset_statistics(self) -> None:
        """Forget the recorded U-turns (after a metric change they were measured in another metric)."""
        self._sum = torch.zeros_like(self.time)
        self._sq = torch.zeros_like(self.time)
        self._count = torch.zeros_like(self.time)

    def record(self, uturn_time: torch.Tensor, valid: torch.Tensor) -> None:
        """Add one exploring iteration's U-turn times ``(*B,)`` where ``valid`` ``(*B,)`` is set."""
        self._sum = self._sum + torch.where(valid, uturn_time, 0.0)
        self._sq = self._sq + torch.where(valid, uturn_time * uturn_time, 0.0)
        self._count = self._count + valid.to(self._count.dtype)

    def rescale(self, factor: torch.Tensor) -> None:
        """Multiply T_u by ``factor`` ``(*B,)`` (e.g. how far a new metric moved the posterior scales)."""
        self.time = self.time * factor

    def update(self, final: bool = False, min_count: int = 4) -> None:
        """T_u ← mean + sd of the recorded U-turn times, where at least ``min_count`` were recorded
        (any number when ``final``); those targets' records are cleared, the others' kept."""
        n = self._count
        mean = self._sum / n.clamp(min=1)
        sd = (self._sq / n.clamp(min=1) - mean * mean).clamp(min=0).sqrt() * torch.where(n > 1, 1.0, 0.0)
        update = n > 0 if final else n >= min_count
        self.time = torch.where(update, mean + sd, self.time)
        keep = (~update).to(n.dtype)
        self._sum, self._sq, self._count = self._sum * keep, self._sq * keep, n * keep

    def loop_lengths(
        self, eps: torch.Tensor, explore_eps: torch.Tensor, live: torch.Tensor, quantile: float | None
    ) -> tuple[int, int]:
        """``(plain, explore)`` leapfrog steps per iteration for all targets (reads the host once).

        ``plain`` covers the longest jittered trajectory (1 + j) c T_u / ε over the ``live`` targets
        (flattened bool ``(prod B,)``: escaped targets take no steps and must not set everyone's loop),
        or its ``quantile`` over them (``None`` or ≥ 1: the maximum). ``explore`` covers
        ``explore_factor`` × T_u at the exploring step sizes ``explore_eps`` for EVERY live target (a
        censored U-turn would bias the hardest targets' T_u low), and is at least ``plain``.
        """
        # the live targets are selected by boolean indexing: this refresh reads the host anyway
        plain = (1 + self.jitter) * self.trajectory_scale * (self.time / eps).flatten()[live]
        explore = (self.explore_factor * self.time / explore_eps).flatten()[live]
        if plain.numel() == 0:  # every target escaped: nothing left to integrate
            plain = explore = torch.ones(1, dtype=eps.dtype, device=eps.device)
        if quantile is None or quantile >= 1:
            plain = plain.max()
        else:
            plain = torch.quantile(plain, quantile)
        explore = explore.max()
        plain, explore = torch.stack([plain, explore]).ceil().clamp(1, self.max_num_steps).tolist()
        return int(plain), max(int(plain), int(explore))
