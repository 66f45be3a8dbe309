"""Sampler targets and their properness checks.

A *target* is what :class:`~pyro_mmvae.infer.mcmc.BatchedHMC` samples: any object with
``log_prob(z)``, ``z`` of shape ``(*lead, N, D)`` → ``(*lead, N)`` (N independent targets, e.g. the
data points of a :class:`~pyro_mmvae.infer.subset_posterior.SubsetPosterior`; ``lead`` e.g. chains).
That is the one required method (:class:`SamplerTarget`). Everything else is an optional capability,
declared by a ``runtime_checkable`` Protocol and detected with ``isinstance``:

- :class:`HasLogProbAndGrad`: ``log_prob_and_grad(z) -> (log_prob, grad)``, the gradient without autograd;
- :class:`HasInitialPoints`: ``initial_points(num_chains) -> (C, N, D)``, default starting points;
- :class:`HasApproximateVariance`: ``approximate_variance() -> (N, D)``, the sampler's initial metric;
- :class:`ClosedFormProperness`: ``is_gaussian`` and ``improper_points()``, an exact check;
- :class:`TailProbe`: ``rising_tails() -> (N,)`` bool, the tail probe.

A subset posterior p(z | x_S) ∝ p(z) Π_{j∈S} q_j(z | x_j) / p(z)^{|S|−1} need not be a distribution:
dividing by p(z)^{|S|−1} multiplies by a density that grows in every direction, and the experts'
product must fall off faster. :func:`improper_points` runs the exact check where a target offers it
(Gaussian experts: the product's precision) and the tail probe :func:`rising_tails` otherwise.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

__all__ = [
    "ClosedFormProperness",
    "HasApproximateVariance",
    "HasInitialPoints",
    "HasLogProbAndGrad",
    "ImproperPosteriorError",
    "ImproperPosteriorWarning",
    "SamplerTarget",
    "TailProbe",
    "TailProbeTarget",
    "check_precision",
    "highest_density_point",
    "improper_points",
    "nonpositive_precision_points",
    "rising_tails",
]


class ImproperPosteriorError(ValueError):
    """The subset posterior of some data points is not a distribution (not integrable)."""


class ImproperPosteriorWarning(UserWarning):
    """Some data points' subset posteriors are (or behave as) improper; their draws are meaningless."""


# ---------------------------------------------------------------------- the target interface
@runtime_checkable
class SamplerTarget(Protocol):
    """What a sampler needs: an unnormalised log density per target."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` ``(*lead, N, D)`` → ``(*lead, N)``; more generally ``(*B, D)`` → ``(*B,)``."""


@runtime_checkable
class HasLogProbAndGrad(Protocol):
    """A target that returns its log density together with the gradient in z (no autograd needed)."""

    def log_prob_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` ``(*B, D)`` → ``(log_prob (*B,), ∂ log_prob / ∂z (*B, D))``."""


@runtime_checkable
class HasInitialPoints(Protocol):
    """A target that proposes starting points in its bulk."""

    def initial_points(self, num_chains: int) -> torch.Tensor:
        """Starting points ``(C, N, D)``, one set per chain, drawn from the global torch RNG."""


@runtime_checkable
class HasApproximateVariance(Protocol):
    """A target that knows a rough diagonal posterior variance (the sampler's initial metric)."""

    def approximate_variance(self) -> torch.Tensor:
        """A per-target diagonal variance ``(N, D)``."""


class TailProbeTarget(SamplerTarget, HasInitialPoints, HasApproximateVariance, Protocol):
    """What :func:`rising_tails` needs: a log density, starting points and approximate variances."""


@runtime_checkable
class ClosedFormProperness(Protocol):
    """A target whose properness is settled exactly when ``is_gaussian`` (e.g. Gaussian experts)."""

    @property
    def is_gaussian(self) -> bool:
        """Whether :meth:`improper_points` applies."""

    def improper_points(self) -> list[int]:
        """Indices along N of the improper targets."""


@runtime_checkable
class TailProbe(Protocol):
    """A target that can probe its own tails (see :func:`rising_tails`)."""

    def rising_tails(self) -> torch.Tensor:
        """Bool ``(N,)``: targets whose log density still rises far from the data."""


# ---------------------------------------------------------------------- exact check (Gaussian experts)
def nonpositive_precision_points(precision: torch.Tensor) -> list[int]:
    """Targets (indices along N) whose Gaussian product has a non-positive precision ``(N, D)`` in some
    dimension (NaN counts as non-positive)."""
    return (~(precision > 0)).any(-1).nonzero().flatten().tolist()


def check_precision(precision: torch.Tensor, shown: int = 10) -> None:
    """Raise :class:`ImproperPosteriorError` naming the targets and dimensions where the Gaussian product's
    precision ``(N, D)`` (Σ_j Λ_j − (|S|−1) Λ_prior) is not positive; the first ``shown`` are listed."""
    bad = ~(precision > 0)
    if bool(bad.any()):
        points = bad.any(-1).nonzero().flatten().tolist()
        listed = ", ".join(f"{n} (dims {bad[n].nonzero().flatten().tolist()})" for n in points[:shown])
        more = f" and {len(points) - shown} more" if len(points) > shown else ""
        raise ImproperPosteriorError(
            f"the Gaussian subset posterior is improper (precision Σ_j Λ_j − (|S|−1) Λ_prior is not positive) "
            f"for data points {listed}{more}: the experts there are broader than the prior"
        )


# ---------------------------------------------------------------------- tail probe
@torch.no_grad()
def highest_density_point(target: SamplerTarget, candidates: torch.Tensor) -> torch.Tensor:
    """Per target, the candidate ``(K, N, D)`` with the highest log density (NaN counts as −∞) → ``(N, D)``."""
    lp = target.log_prob(candidates)
    lp = torch.where(torch.isnan(lp), torch.full_like(lp, -float("inf")), lp)
    idx = lp.argmax(0)
    num_data, dim = candidates.shape[-2:]
    return candidates.gather(0, idx[None, :, None].expand(1, num_data, dim)).squeeze(0)


@torch.no_grad()
def rising_tails(
    target: TailProbeTarget,
    max_radius: float = 100.0,
    barrier: float = 20.0,
    num_directions: int = 64,
    num_radii: int = 24,
    num_bulk: int = 4,
    seed: int = 0,
) -> torch.Tensor:
    """Bool ``(N,)``: targets whose log density still rises far out, with no barrier on the way there.

    Gaussian experts are settled exactly by the precision of their product; flow experts have tails
    that training never sees. What matters for sampling is whether a chain started near the data can
    run off. This probe starts, per target, at the best of ``num_bulk`` starting points
    (``target.initial_points``) and walks out along ``num_directions`` random unit directions and the
    ± coordinate axes, through ``num_radii`` radii spaced geometrically from 0.5 to ``max_radius``
    approximate posterior standard deviations (``target.approximate_variance()``). A target is flagged
    when along some ray the log density at ``max_radius`` is at least the highest value seen near the
    data (the start and every probe out to ``max_radius / 10``), while on the way out it never fell
    more than ``barrier`` nats below the start: nothing holds a chain back from that region. A proper
    target is thousands of nats lower at 100 standard deviations (the approximate standard deviations
    can be off several-fold: the bulk of a flow target may reach 10 of them, hence the comparison with
    the best value near the data rather than with the start).

    Far regions behind a high barrier are not flagged on purpose: flows whose log-scales are clamped
    (as Pyro's are) often rise again hundreds of standard deviations out, behind barriers of millions
    of nats that no chain crosses; such targets are improper in the strict sense yet sample well. A
    target that rises only between the probed rays, or that is flat rather than rising, is not flagged
    either; sampling then reports its chains as escaped (see
    :class:`~pyro_mmvae.infer.mcmc.BatchedHMC`). The probe is deterministic given ``seed`` and does
    not touch the global random state.
    """
    if not max_radius > 5.0 or barrier < 0 or num_directions < 0 or num_radii < 2:
        raise ValueError(
            f"need max_radius > 5, barrier >= 0, num_directions >= 0, num_radii >= 2; got {max_radius}, "
            f"{barrier}, {num_directions}, {num_radii}"
        )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        centre = highest_density_point(target, target.initial_points(num_bulk))  # (N, D)
        num_data, dim = centre.shape
        sd = target.approximate_variance().sqrt().to(centre)
        eye = torch.eye(dim, dtype=centre.dtype, device=centre.device)
        dirs = torch.randn(num_directions, dim, dtype=centre.dtype, device=centre.device)
        dirs = torch.cat([dirs / dirs.norm(dim=-1, keepdim=True), eye, -eye])  # (K, D)
    start = torch.nan_to_num(target.log_prob(centre), nan=-float("inf"))  # (N,)
    radii = torch.logspace(math.log10(0.5), math.log10(max_radius), num_radii).tolist()
    best_near = start.clone()  # highest log density seen near the data, (N,)
    lowest = torch.full((dirs.shape[0], num_data), float("inf"), dtype=centre.dtype, device=centre.device)
    for r in radii:
        lp = torch.nan_to_num(target.log_prob(centre + r * sd * dirs[:, None, :]), nan=-float("inf"))  # (K, N)
        lowest = torch.minimum(lowest, lp)
        if r <= max_radius / 10:
            best_near = torch.maximum(best_near, lp.amax(0))
    open_path = lowest >= start - barrier
    return ((lp >= best_near) & open_path).any(0)


# ---------------------------------------------------------------------- the check samplers run
def improper_points(target: SamplerTarget) -> tuple[list[int], str]:
    """``(points, check)``: the targets (indices along N) that are improper, and the check used.

    Exact where the target offers it (:class:`ClosedFormProperness` with ``is_gaussian``: the closed
    form's precision); the target's tail probe (:class:`TailProbe`, e.g.
    :meth:`SubsetPosterior.rising_tails <pyro_mmvae.infer.subset_posterior.SubsetPosterior.rising_tails>`)
    otherwise; ``([], "")`` for targets with neither.
    """
    if isinstance(target, ClosedFormProperness) and target.is_gaussian:
        return target.improper_points(), "precision Σ_j Λ_j − (|S|−1) Λ_prior not positive"
    if isinstance(target, TailProbe):
        bad = target.rising_tails()
        return bad.nonzero().flatten().tolist(), "the log density rises far from the data (tail probe)"
    return [], ""
