"""Properness checks: the exact check for Gaussian experts, the tail probe, and the target Protocols."""

import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch

from pyro_mmvae.infer.properness import (
    ClosedFormProperness,
    HasApproximateVariance,
    HasInitialPoints,
    ImproperPosteriorError,
    SamplerTarget,
    TailProbe,
    improper_points,
    rising_tails,
)
from pyro_mmvae.infer.subset_posterior import SubsetPosterior


def test_improper_posterior_raises_naming_points():
    locs = torch.zeros(3, 4, 2)
    scales = torch.full((3, 4, 2), 0.5)
    scales[:, 2, 1] = 2.0  # precision 3·0.25 − 2 < 0 at point 2, dim 1
    target = SubsetPosterior.from_gaussians(torch.zeros(2), torch.ones(2), locs, scales)
    with pytest.raises(ImproperPosteriorError, match=r"data points 2 \(dims \[1\]\)"):
        target.closed_form()
    # initialisation and the mass-matrix guess still work (fall back to the experts)
    assert torch.isfinite(target.initial_point()).all()
    assert (target.approximate_variance() > 0).all()


def mixed_properness_experts(n=8, d=3, seed=0):
    """Gaussian experts ``(3, n, d)`` under a N(0, I) prior, improper exactly at the returned points."""
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(3, n, d, generator=g)
    scales = 0.3 + 0.4 * torch.rand(3, n, d, generator=g)
    improper = [1, 4, 5]
    for k, i in enumerate(improper):
        scales[:, i, k % d] = 2.0  # precision 3 / 4 − 2 < 0 in one dimension
    return locs, scales, improper


def test_improper_points_exact_for_gaussians():
    locs, scales, improper = mixed_properness_experts()
    target = SubsetPosterior.from_gaussians(torch.zeros(3), torch.ones(3), locs, scales)
    assert target.improper_points() == improper
    assert improper_points(target)[0] == improper
    # the proper points alone
    proper = SubsetPosterior.from_gaussians(torch.zeros(3), torch.ones(3), locs[:, [0, 2, 3]], scales[:, [0, 2, 3]])
    assert improper_points(proper)[0] == []


def test_tail_probe_finds_the_improper_points_of_non_gaussian_experts():
    """Experts the target cannot recognise as Gaussians (wrapped in an identity transform) go through the
    tail probe, which must flag exactly the points the closed form calls improper."""
    locs, scales, improper = mixed_properness_experts()
    wrapped = [
        dist.TransformedDistribution(dist.Normal(m, s).to_event(1), [T.AffineTransform(0.0, 1.0, event_dim=1)])
        for m, s in zip(locs, scales)
    ]
    target = SubsetPosterior(dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1), wrapped)
    assert not target.is_gaussian
    state = torch.get_rng_state()
    assert target.rising_tails().nonzero().flatten().tolist() == improper
    assert torch.equal(torch.get_rng_state(), state)  # deterministic, global RNG untouched
    bad, how = improper_points(target)
    assert bad == improper and "tail" in how
    with pytest.raises(ValueError, match="max_radius"):
        target.rising_tails(max_radius=2.0)


def test_tail_probe_ignores_a_far_rise_behind_a_barrier():
    """A target that is proper near the data but rises again far out, behind a wall of many nats (as
    flows with clamped log-scales do), is not flagged; with the barrier allowance raised past that wall
    it is."""

    class FarRise(dist.TorchDistribution):
        """N(0, 0.3²) in 2-D near the origin; beyond |z_0| = 20 the log density climbs linearly."""

        arg_constraints = {}
        support = dist.constraints.real_vector

        def __init__(self, n):
            super().__init__(torch.Size([n]), torch.Size([2]), validate_args=False)

        def log_prob(self, z):
            base = dist.Normal(0.0, 0.3).log_prob(z).sum(-1)
            return base + 1e4 * (z[..., 0].abs() - 20.0).clamp(min=0.0)

        def sample(self, sample_shape=torch.Size()):
            return 0.3 * torch.randn(*sample_shape, *self.batch_shape, 2)

    prior = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    target = SubsetPosterior(prior, [FarRise(3)])
    assert not target.rising_tails().any()  # the wall at 20 (≈ 67 sd) costs thousands of nats
    assert target.rising_tails(barrier=1e5).all()


# ---------------------------------------------------------------------- the declared target interface
class _LogProbOnly:
    """A user target with nothing but ``log_prob``: N = 3 standard Gaussians in 2-D."""

    def log_prob(self, z):
        return -0.5 * (z * z).sum(-1)


def test_subset_posterior_declares_every_capability():
    locs, scales, _ = mixed_properness_experts()
    target = SubsetPosterior.from_gaussians(torch.zeros(3), torch.ones(3), locs, scales)
    for protocol in (SamplerTarget, HasInitialPoints, HasApproximateVariance, ClosedFormProperness, TailProbe):
        assert isinstance(target, protocol), protocol.__name__


def test_a_log_prob_only_target_has_no_optional_capability_and_no_check():
    target = _LogProbOnly()
    assert isinstance(target, SamplerTarget)
    for protocol in (HasInitialPoints, HasApproximateVariance, ClosedFormProperness, TailProbe):
        assert not isinstance(target, protocol), protocol.__name__
    assert improper_points(target) == ([], "")
    assert not isinstance(object(), SamplerTarget)


def test_the_tail_probe_function_equals_the_method():
    locs, scales, improper = mixed_properness_experts()
    wrapped = [
        dist.TransformedDistribution(dist.Normal(m, s).to_event(1), [T.AffineTransform(0.0, 1.0, event_dim=1)])
        for m, s in zip(locs, scales)
    ]
    target = SubsetPosterior(dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1), wrapped)
    assert torch.equal(rising_tails(target, seed=3), target.rising_tails(seed=3))
    assert rising_tails(target).nonzero().flatten().tolist() == improper
