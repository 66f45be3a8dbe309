"""Subset-posterior sampling runs: :func:`sample_subset_posterior` and its result :class:`HMCRun`.

One ``pyro.infer.MCMC`` run of :class:`~pyro_mmvae.infer.mcmc.BatchedHMC` samples all N targets with
C chains as a batch dimension of one Pyro chain; draws come back as ``(C, S, N, D)``. Before sampling
the targets' properness is checked (:func:`~pyro_mmvae.infer.properness.improper_points`) under a
raise / warn / ignore policy.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import pyro
import torch

from ...diagnostics import to_inference_data
from ...errors import InputError, check_int
from ...sites import LATENT_SITE
from ..properness import (
    HasApproximateVariance,
    ImproperPosteriorError,
    ImproperPosteriorWarning,
    SamplerTarget,
    improper_points,
)
from .kernel import BatchedHMC

__all__ = ["HMCRun", "PhaseClock", "sample_subset_posterior"]


@dataclass
class HMCRun:
    """Draws and per-target statistics of an MCMC run over N targets with C chains.

    ``samples`` ``(C, S, N, D)``; ``accept_prob``, ``diverging``, ``num_steps`` ``(C, S, N)`` (``None``
    for samplers that do not report them per target); ``escaped`` ``(C, N)``: chains frozen after
    running away (their draws are meaningless); ``step_size`` ``(C, N)`` or ``(C,)``;
    ``wall_time`` in seconds (warmup + sampling) and ``sampling_time`` (after warmup);
    ``num_grad_evals`` gradient evaluations of the whole batch.
    """

    samples: torch.Tensor
    accept_prob: torch.Tensor | None = None
    diverging: torch.Tensor | None = None
    num_steps: torch.Tensor | None = None
    step_size: torch.Tensor | None = None
    inverse_mass_matrix: torch.Tensor | None = None
    trajectory_length: torch.Tensor | None = None
    escaped: torch.Tensor | None = None
    wall_time: float = float("nan")
    sampling_time: float = float("nan")
    num_grad_evals: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def escaped_points(self) -> list[int]:
        """Data points (indices along N) where some chain escaped."""
        return [] if self.escaped is None else self.escaped.any(0).nonzero().flatten().tolist()

    @property
    def divergences(self) -> torch.Tensor | None:
        """Divergent transitions per chain and target ``(C, N)``."""
        return None if self.diverging is None else self.diverging.sum(1)

    def to_inference_data(self, target_ids=None, var_name: str = LATENT_SITE):
        """ArviZ ``InferenceData`` (see :func:`pyro_mmvae.diagnostics.to_inference_data`)."""
        stats = {}
        if self.accept_prob is not None:
            stats = {"acceptance_rate": self.accept_prob, "diverging": self.diverging, "n_steps": self.num_steps}
        return to_inference_data(self.samples, stats, target_ids=target_ids, var_name=var_name)


class PhaseClock:
    """An ``MCMC`` hook that adds up the time spent after warmup (from the last warmup iteration on).

    With ``count`` (a callable returning a running count, e.g. of gradient evaluations) it also adds
    up how much of that count each run's warmup used (``warmup_count``).
    """

    def __init__(self, warmup_steps: int, count=None):
        self.warmup_steps, self.sampling_time, self._start = warmup_steps, 0.0, None
        self._count, self.warmup_count, self._base = count, 0, 0

    def start(self) -> None:
        self._start = time.perf_counter() if self.warmup_steps == 0 else None
        self._base = self._count() if self._count is not None else 0

    def __call__(self, kernel, params, stage, i) -> None:
        if stage.startswith("Warmup") and i == self.warmup_steps - 1:
            self._start = time.perf_counter()
            if self._count is not None:
                self.warmup_count += self._count() - self._base

    def stop(self) -> None:
        if self._start is not None:
            self.sampling_time += time.perf_counter() - self._start
        self._start = None


def _chain_first(x: torch.Tensor) -> torch.Tensor:
    """``(S, C, ...)`` → ``(C, S, ...)`` on the CPU."""
    return x.transpose(0, 1).cpu()


def sample_subset_posterior(
    target: SamplerTarget,
    num_samples: int,
    warmup_steps: int,
    num_chains: int = 4,
    seed: int | None = None,
    progress: bool = True,
    initial_params: torch.Tensor | None = None,
    improper: str = "raise",
    **kernel_kwargs,
) -> HMCRun:
    """Sample every target of ``target`` (e.g. a :class:`~pyro_mmvae.infer.subset_posterior.SubsetPosterior`)
    with :class:`~pyro_mmvae.infer.mcmc.BatchedHMC`.

    Runs ``pyro.infer.MCMC(BatchedHMC(target, ...), num_samples, warmup_steps)`` with the C chains as
    a batch dimension of one Pyro chain.

    Args:
        target: a :class:`~pyro_mmvae.infer.properness.SamplerTarget`, ``log_prob(z (C, N, D)) -> (C, N)``,
            with ``initial_points(C) -> (C, N, D)`` (:class:`~pyro_mmvae.infer.properness.HasInitialPoints`)
            unless ``initial_params`` are given.
        seed: seeds Pyro/torch/numpy's global RNGs (``pyro.set_rng_seed``) when given.
        initial_params: optional starting points ``(C, N, D)``.
        improper: what to do, before sampling, with data points whose target is improper
            (:func:`~pyro_mmvae.infer.properness.improper_points`: exactly for Gaussian experts, else by
            the tail probe): ``"raise"`` (default) an
            :class:`~pyro_mmvae.infer.properness.ImproperPosteriorError` naming them, ``"warn"`` an
            :class:`~pyro_mmvae.infer.properness.ImproperPosteriorWarning` and sample anyway (their chains
            are frozen once they escape, see ``HMCRun.escaped``), ``"ignore"`` no check.
        kernel_kwargs: passed to :class:`~pyro_mmvae.infer.mcmc.BatchedHMC`; ``inverse_mass_matrix``
            defaults to ``target.approximate_variance()`` when the target has it
            (:class:`~pyro_mmvae.infer.properness.HasApproximateVariance`), and ``pool_metric_dim`` to 0:
            each warmup window's metric is estimated from all C chains of a data point (C times the
            draws; after warmup the chains stay independent, with that metric fixed).

    Returns:
        :class:`HMCRun` with ``samples`` ``(C, S, N, D)`` and per-target statistics. Chains that
        escaped during the run (``HMCRun.escaped``) are reported with an ``ImproperPosteriorWarning``
        unless ``improper="ignore"``.

    Raises:
        ImproperPosteriorError: ``improper="raise"`` and the target is improper for some data points.
    """
    if improper not in ("raise", "warn", "ignore"):
        raise InputError(f"improper must be 'raise', 'warn' or 'ignore', got {improper!r}")
    num_samples = check_int(num_samples, "num_samples", minimum=1)
    warmup_steps = check_int(warmup_steps, "warmup_steps", minimum=0)
    num_chains = check_int(num_chains, "num_chains", minimum=1)
    if seed is not None:
        pyro.set_rng_seed(seed)
    if improper != "ignore":
        with torch.random.fork_rng():  # the check's random draws must not shift the sampler's stream
            bad, how = improper_points(target)
        if bad:
            msg = f"the subset posterior is improper ({how}) for data points {_list_points(bad)}"
            if improper == "raise":
                raise ImproperPosteriorError(msg + "; pass improper='warn' to sample the others anyway")
            warnings.warn(msg + "; their chains will run away and be frozen", ImproperPosteriorWarning, stacklevel=2)
    if initial_params is None:
        initial_params = target.initial_points(num_chains)
    if "inverse_mass_matrix" not in kernel_kwargs and isinstance(target, HasApproximateVariance):
        kernel_kwargs["inverse_mass_matrix"] = target.approximate_variance()
    kernel_kwargs.setdefault("pool_metric_dim", 0)
    kernel = BatchedHMC(target, num_chains=num_chains, **kernel_kwargs)
    mcmc = pyro.infer.MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        initial_params={kernel.param_name: initial_params},
        disable_progbar=not progress,
        hook_fn=(clock := PhaseClock(warmup_steps)),
    )
    start = time.perf_counter()
    clock.start()
    mcmc.run()
    clock.stop()
    wall = time.perf_counter() - start
    draws = mcmc.get_samples(group_by_chain=True)[kernel.param_name][0]  # (S, C, N, D)
    stats = kernel.sample_stats()
    run = HMCRun(
        samples=_chain_first(draws),
        accept_prob=_chain_first(stats["accept_prob"]),
        diverging=_chain_first(stats["diverging"]),
        num_steps=_chain_first(stats["num_steps"]),
        step_size=stats["step_size"].cpu(),
        inverse_mass_matrix=stats["inverse_mass_matrix"].cpu(),
        trajectory_length=stats["trajectory_length"].cpu(),
        escaped=stats["escaped"].cpu(),
        wall_time=wall,
        sampling_time=clock.sampling_time,
        num_grad_evals=kernel.num_grad_evals,
        extra={
            "num_loop_steps": kernel.num_loop_steps,
            "warmup_grad_evals": kernel.num_warmup_grad_evals,
            "diagnostics": kernel.diagnostics(),
        },
    )
    if improper != "ignore" and run.escaped_points:
        warnings.warn(
            f"chains escaped beyond {kernel.escape_radius:g} initial standard deviations (an improper target) "
            f"and were frozen at data points {_list_points(run.escaped_points)}; their draws are meaningless",
            ImproperPosteriorWarning,
            stacklevel=2,
        )
    return run


def _list_points(points: list[int], shown: int = 20) -> str:
    more = f" and {len(points) - shown} more" if len(points) > shown else ""
    return ", ".join(map(str, points[:shown])) + more
