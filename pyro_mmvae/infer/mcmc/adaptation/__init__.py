"""Warmup adaptation for :class:`~pyro_mmvae.infer.mcmc.BatchedHMC`, one small state object per piece.

- :mod:`~pyro_mmvae.infer.mcmc.adaptation.step_size`: :class:`DualAveraging`, per-target step sizes
  (Hoffman & Gelman's dual averaging);
- :mod:`~pyro_mmvae.infer.mcmc.adaptation.welford`: :class:`WelfordVariance` and
  :func:`shrink_variance`, the diagonal mass matrix;
- :mod:`~pyro_mmvae.infer.mcmc.adaptation.windows`: :func:`adaptation_windows` /
  :class:`AdaptationWindows`, Stan's warmup schedule;
- :mod:`~pyro_mmvae.infer.mcmc.adaptation.trajectory`: :class:`TrajectoryLengthAdapter`, integration
  times from U-turns and the loop length shared by all targets.

Every state tensor has the targets' batch shape ``(*B,)`` (or ``(*B, D)`` for the metric).
"""

from .step_size import DualAveraging
from .trajectory import INITIAL_UTURN_TIME, TrajectoryLengthAdapter
from .welford import WelfordVariance, shrink_variance
from .windows import AdaptationWindows, adaptation_windows

__all__ = [
    "INITIAL_UTURN_TIME",
    "AdaptationWindows",
    "DualAveraging",
    "TrajectoryLengthAdapter",
    "WelfordVariance",
    "adaptation_windows",
    "shrink_variance",
]
