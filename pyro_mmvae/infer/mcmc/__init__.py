"""MCMC for subset posteriors: the batched HMC kernel, its adaptation pieces, and sampling runs.

- :mod:`pyro_mmvae.infer.mcmc.adaptation`: dual averaging (step size), Welford variance with Stan's shrinkage (metric),
  Stan's warmup windows, the U-turn trajectory-length adapter;
- :mod:`pyro_mmvae.infer.mcmc.kernel`: :class:`BatchedHMC`, one Pyro ``MCMCKernel`` running an independent HMC chain per
  target (per-target step size, metric, trajectory length and accept/reject);
- :mod:`pyro_mmvae.infer.mcmc.run`: :func:`sample_subset_posterior` and its result :class:`HMCRun`;
- :mod:`pyro_mmvae.infer.mcmc.pyro_nuts`: :func:`run_pyro_nuts`, the stock-Pyro NUTS reference.
"""

from .adaptation import AdaptationWindows, DualAveraging, TrajectoryLengthAdapter, WelfordVariance, adaptation_windows
from .kernel import BatchedHMC
from .pyro_nuts import run_pyro_nuts
from .run import HMCRun, sample_subset_posterior

__all__ = [
    "AdaptationWindows",
    "BatchedHMC",
    "DualAveraging",
    "HMCRun",
    "TrajectoryLengthAdapter",
    "WelfordVariance",
    "adaptation_windows",
    "run_pyro_nuts",
    "sample_subset_posterior",
]
