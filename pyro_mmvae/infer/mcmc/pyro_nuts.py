"""The reference sampler: stock Pyro NUTS with one joint potential over all N targets.

What putting the data points under one plate gives: one step size, one diagonal mass matrix over the
N·D coordinates, one tree and one accept/reject per iteration for all N targets. Used by the tests
and ``benchmarks/subset_posterior.py`` to compare :class:`~pyro_mmvae.infer.mcmc.BatchedHMC` with.
"""

from __future__ import annotations

import time

import pyro
import torch

from ...sites import LATENT_SITE
from ..properness import SamplerTarget
from .run import HMCRun, PhaseClock

__all__ = ["run_pyro_nuts"]


class _CountedPotential:
    """``−Σ_n log p(z_n | x_S)`` over all N targets, counting its calls (one gradient each)."""

    def __init__(self, target, name):
        self.target, self.name, self.calls = target, name, 0

    def __call__(self, params):
        self.calls += 1
        return -self.target.log_prob(params[self.name]).sum()


class _NUTSWithInitialMetric(pyro.infer.NUTS):
    """Stock NUTS whose diagonal inverse mass matrix starts from a given vector instead of ones.

    Why a subclass that overrides a private method: Pyro 1.9.2 has no public route. The metric itself
    can be set publicly (``kernel.mass_matrix_adapter.inverse_mass_matrix = {...}``), but ``setup``,
    which ``MCMC.run`` calls right before the first iteration, re-creates it as ones in
    ``_initialize_adapter`` (with ``full_mass=False`` too), and no hook runs between ``setup`` and
    the first step. The step-size search must then be rerun for the new metric, and the warmup
    adapter that does it is reachable only as ``kernel._adapter``.
    """

    def __init__(self, *args, initial_inverse_mass: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._initial_inverse_mass = initial_inverse_mass

    def _initialize_adapter(self):
        super()._initialize_adapter()
        if self._initial_inverse_mass is not None:
            (site,) = self.initial_params
            self.mass_matrix_adapter.inverse_mass_matrix = {(site,): self._initial_inverse_mass.reshape(-1)}
            if self._adapter.adapt_step_size:  # re-find the step size for the new metric
                self._adapter.reset_step_size_adaptation(self._initial_params)


def run_pyro_nuts(
    target: SamplerTarget,
    num_samples: int,
    warmup_steps: int,
    num_chains: int = 4,
    seed: int | None = None,
    progress: bool = True,
    initial_params: torch.Tensor | None = None,
    inverse_mass_matrix: torch.Tensor | None = None,
    **nuts_kwargs,
) -> HMCRun:
    """The reference: stock ``pyro.infer.NUTS`` with one joint potential over all N targets.

    ``potential_fn({"z": z (N, D)}) = −Σ_n log p(z_n | x_S)``: one step size, one diagonal mass matrix
    over the N·D coordinates, one tree and one accept/reject per iteration for all N targets (what
    putting the data points under one plate gives). The C chains run one after another in this
    process (no multiprocessing), each from ``initial_params[c]`` ``(N, D)``. ``inverse_mass_matrix``
    ``(N, D)`` optionally sets the initial diagonal metric (as
    :func:`~pyro_mmvae.infer.mcmc.sample_subset_posterior` does by default), so that both samplers start
    from the same information.

    Returns:
        :class:`~pyro_mmvae.infer.mcmc.HMCRun` with ``samples`` ``(C, S, N, D)``, ``step_size`` ``(C,)``,
        ``num_grad_evals`` (gradients of the joint potential, all chains), the per-chain divergence lists in
        ``extra["divergences"]`` and the warm-up's gradients in ``extra["warmup_grad_evals"]``.
    """
    if seed is not None:
        pyro.set_rng_seed(seed)
    if initial_params is None:
        initial_params = target.initial_points(num_chains)
    draws, steps, divs = [], [], []
    potential = _CountedPotential(target, LATENT_SITE)
    clock = PhaseClock(warmup_steps, count=lambda: potential.calls)
    start = time.perf_counter()
    for c in range(num_chains):
        kernel = _NUTSWithInitialMetric(potential_fn=potential, initial_inverse_mass=inverse_mass_matrix, **nuts_kwargs)
        mcmc = pyro.infer.MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            initial_params={LATENT_SITE: initial_params[c]},
            disable_progbar=not progress,
            hook_fn=clock,
        )
        clock.start()
        mcmc.run()
        clock.stop()
        draws.append(mcmc.get_samples()[LATENT_SITE].cpu())
        steps.append(float(kernel.step_size))
        divs.append(list(mcmc.diagnostics()["divergences"]["chain 0"]))
    wall = time.perf_counter() - start
    return HMCRun(
        samples=torch.stack(draws),
        step_size=torch.tensor(steps),
        wall_time=wall,
        sampling_time=clock.sampling_time,
        num_grad_evals=potential.calls,
        extra={"divergences": divs, "warmup_grad_evals": clock.warmup_count},
    )
