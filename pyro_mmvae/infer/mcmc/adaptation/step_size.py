"""Step-size adaptation by dual averaging, one step size per target.

Nesterov's dual averaging as used for HMC step sizes in "The No-U-Turn Sampler: Adaptively Setting
Path Lengths in Hamiltonian Monte Carlo" (Hoffman & Gelman, 2014, Algorithm 5): after iteration t
with acceptance probability α_t,

    h̄_t = (1 − η_t) h̄_{t−1} + η_t (δ − α_t),        η_t = 1 / (t + t0)
    log ε_t = μ − √t / γ · h̄_t                        (the iterate, used during warmup)
    log ε̄_t = t^{−κ} log ε_t + (1 − t^{−κ}) log ε̄_{t−1}   (the average, used after warmup)

with δ the target acceptance and μ = log(10 ε_0) the shrinkage point. Every quantity is a tensor of
the targets' batch shape ``(*B,)``; ``t`` is shared (all targets adapt in lockstep).
"""

from __future__ import annotations

import math

import torch

__all__ = ["DualAveraging"]


class DualAveraging:
    """Per-target dual averaging of log step sizes.

    Args:
        target_accept: δ, the acceptance probability the iterates are driven to.
        gamma, t0, kappa: γ (how strongly the iterate is shrunk towards μ), t0 (damps the first
            updates), κ (the average's forgetting exponent); Stan's defaults.

    Call :meth:`reset` with the starting log step sizes (after every metric change: the step size
    the old metric needed says little about the new one), then :meth:`step` once per iteration.
    """

    def __init__(self, target_accept: float, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75):
        self.target_accept, self.gamma, self.t0, self.kappa = target_accept, gamma, t0, kappa

    def reset(self, log_eps: torch.Tensor) -> None:
        """Restart from log step sizes ``(*B,)``: μ = log(10 ε_0), h̄ = log ε̄ = 0, t = 0."""
        self.mu = log_eps + math.log(10.0)
        self.h_bar = torch.zeros_like(log_eps)
        self.log_eps_bar = torch.zeros_like(log_eps)
        self.t = 0

    @property
    def has_updates(self) -> bool:
        """Whether :meth:`step` ran since the last :meth:`reset` (before that ``log_eps_bar`` is 0)."""
        return self.t > 0

    def step(self, accept_prob: torch.Tensor) -> torch.Tensor:
        """Update with this iteration's acceptance probabilities ``(*B,)``; return the next log step sizes."""
        self.t += 1
        eta = 1.0 / (self.t + self.t0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target_accept - accept_prob)
        log_eps = self.mu - math.sqrt(self.t) / self.gamma * self.h_bar
        w = self.t ** (-self.kappa)
        self.log_eps_bar = w * log_eps + (1 - w) * self.log_eps_bar
        return log_eps
