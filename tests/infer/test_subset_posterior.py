"""The subset-posterior target: formula (exponent |S| − 1), closed form, masks, constructors, errors."""

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_mmvae.distributions.priors import StandardNormalPrior
from pyro_mmvae.guides.unimodal import UnimodalGaussianGuide
from pyro_mmvae.infer.subset_posterior import SubsetPosterior
from tests.common import small_batch, small_modalities


def random_gaussian_target(num_experts=3, n=5, d=4, seed=0, dtype=torch.float32, mask=None):
    """Experts with scales in [0.05, 5]; expert 0 narrow enough (≤ 0.35) that any subset containing it
    is proper (its precision ≥ 8 exceeds (|S| − 1) × the prior's ≤ 3 × 1.6)."""
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(num_experts, n, d, generator=g, dtype=torch.float64)
    log_scales = torch.empty(num_experts, n, d, dtype=torch.float64).uniform_(
        math.log(0.05), math.log(5.0), generator=g
    )
    log_scales[0].uniform_(math.log(0.05), math.log(0.35), generator=g)
    prior_loc = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    prior_scale = 0.8 + 0.4 * torch.rand(d, generator=g, dtype=torch.float64)
    return SubsetPosterior.from_gaussians(
        prior_loc.to(dtype), prior_scale.to(dtype), locs.to(dtype), log_scales.exp().to(dtype), mask=mask
    )


def test_closed_form_matches_hand_computation():
    # one data point, D = 2, |S| = 3, prior N(0, 1): precision Σ 1/σ_j² − 2, mean (Σ μ_j/σ_j²) / precision
    locs = torch.tensor([[[1.0, 0.0]], [[-1.0, 2.0]], [[2.0, -1.0]]], dtype=torch.float64)
    scales = torch.tensor([[[0.5, 0.25]], [[1.0, 0.5]], [[2.0, 1.0]]], dtype=torch.float64)
    target = SubsetPosterior.from_gaussians(torch.zeros(2), torch.ones(2), locs, scales)
    cf = target.closed_form()
    prec = torch.tensor([4 + 1 + 0.25 - 2, 16 + 4 + 1 - 2], dtype=torch.float64)
    mean = torch.tensor([(4 * 1 - 1 + 0.25 * 2) / prec[0], (0 + 4 * 2 - 1) / prec[1]], dtype=torch.float64)
    assert torch.allclose(cf.mean[0], mean)
    assert torch.allclose(cf.variance[0], 1 / prec)
    assert cf.batch_shape == (1,) and cf.event_shape == (2,)


def test_closed_form_with_non_standard_prior():
    # |S| = 2, D = 1: Λ = Λ1 + Λ2 − Λ0, η = Λ1 μ1 + Λ2 μ2 − Λ0 μ0
    target = SubsetPosterior.from_gaussians(
        torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([[[0.5]], [[3.0]]]), torch.tensor([[[1.0]], [[0.5]]])
    )
    prec = 1 + 4 - 0.25
    eta = 0.5 + 4 * 3.0 - 0.25 * 1.0
    cf = target.closed_form()
    assert cf.mean.item() == pytest.approx(eta / prec, rel=1e-6)
    assert cf.variance.item() == pytest.approx(1 / prec, rel=1e-6)


@pytest.mark.parametrize("num_experts", [1, 2, 3, 4])
def test_log_prob_is_closed_form_up_to_a_constant(num_experts):
    # log target − log closed form must not depend on z: the prior exponent is exactly 1 − |S|
    target = random_gaussian_target(num_experts, n=5, d=3, dtype=torch.float64)
    cf = target.closed_form()
    z = cf.sample((7,)) * 3.0
    diff = target.log_prob(z) - cf.log_prob(z)
    assert diff.shape == (7, 5)
    assert torch.allclose(diff, diff[:1].expand_as(diff), atol=1e-8)


def test_log_prob_formula_and_wrong_exponent_detectable():
    target = random_gaussian_target(3, n=4, d=2, dtype=torch.float64)
    z = torch.randn(6, 4, 2, dtype=torch.float64)
    prior_lp = target.prior.log_prob(z)
    expected = prior_lp + sum(e.log_prob(z) - prior_lp for e in target.experts.values())
    assert torch.allclose(target.log_prob(z), expected)
    # dividing by p(z) once (exponent 1, correct only for |S| = 2) is NOT proportional to the target
    once = sum(e.log_prob(z) for e in target.experts.values()) - prior_lp
    d = once - target.closed_form().log_prob(z)
    assert not torch.allclose(d, d[:1].expand_as(d), atol=1e-3)


def test_per_datapoint_masks_select_subsets():
    n = 4
    mask = torch.tensor([[True, True, False, True], [True, False, True, True], [False, True, True, True]])
    masked = random_gaussian_target(3, n=n, d=2, seed=3, dtype=torch.float64, mask=mask)
    full = random_gaussian_target(3, n=n, d=2, seed=3, dtype=torch.float64)
    cf = masked.closed_form()
    for i in range(n):
        experts = [e for j, e in enumerate(full.experts.values()) if mask[j, i]]
        locs = torch.stack([e.base_dist.loc[i : i + 1] for e in experts])
        scales = torch.stack([e.base_dist.scale[i : i + 1] for e in experts])
        ref = SubsetPosterior.from_gaussians(
            full.prior.base_dist.loc, full.prior.base_dist.scale, locs, scales
        ).closed_form()
        assert torch.allclose(cf.mean[i], ref.mean[0]) and torch.allclose(cf.variance[i], ref.variance[0])
    z = torch.randn(3, n, 2, dtype=torch.float64)
    diff = masked.log_prob(z) - cf.log_prob(z)
    assert torch.allclose(diff, diff[:1].expand_as(diff), atol=1e-8)
    assert masked.subset_sizes.tolist() == [2, 2, 2, 3]


def test_mask_as_dict_equals_tensor_mask():
    mask = torch.tensor([[True, False, True], [True, True, False]])
    a = random_gaussian_target(2, n=3, d=2, mask=mask)
    b = random_gaussian_target(2, n=3, d=2, mask={"0": mask[0], "1": mask[1]})
    z = torch.randn(2, 3, 2)
    assert torch.equal(a.log_prob(z), b.log_prob(z))


def test_point_without_experts_is_the_prior():
    mask = torch.tensor([[True, False], [True, False]])
    target = random_gaussian_target(2, n=2, d=2, mask=mask)
    z = torch.randn(5, 2, 2)
    assert torch.allclose(target.log_prob(z)[:, 1], target.prior.log_prob(z)[:, 1])


def test_closed_form_needs_gaussians():
    target = SubsetPosterior(
        dist.Normal(torch.zeros(2), 1.0).to_event(1), [dist.Laplace(torch.zeros(3, 2), 1.0).to_event(1)]
    )
    assert not target.is_gaussian
    with pytest.raises(TypeError, match="expert '0' is Independent"):
        target.closed_form()


def test_shape_errors():
    prior = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    with pytest.raises(ValueError, match="expert 'b' must have batch shape"):
        SubsetPosterior(
            prior,
            {
                "a": dist.Normal(torch.zeros(3, 2), 1.0).to_event(1),
                "b": dist.Normal(torch.zeros(4, 2), 1.0).to_event(1),
            },
        )
    with pytest.raises(ValueError, match="event shape"):
        SubsetPosterior(prior, [dist.Normal(torch.zeros(3, 5), 1.0).to_event(1)])
    with pytest.raises(ValueError, match="batch shape \\(N,\\)"):
        SubsetPosterior(prior, [dist.Normal(torch.zeros(2), 1.0).to_event(1)])
    target = SubsetPosterior(prior, [dist.Normal(torch.zeros(3, 2), 1.0).to_event(1)])
    with pytest.raises(ValueError, match=r"z must have shape \(\*lead, N, D\)"):
        target.log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape"):
        SubsetPosterior(prior, [dist.Normal(torch.zeros(3, 2), 1.0).to_event(1)], mask=torch.ones(1, 3))
    with pytest.raises(KeyError, match="unknown expert"):
        SubsetPosterior(
            prior, {"a": dist.Normal(torch.zeros(3, 2), 1.0).to_event(1)}, mask={"b": torch.ones(3, dtype=torch.bool)}
        )


def test_initialisation_and_potential_adapter():
    target = random_gaussian_target(3, n=5, d=3)
    assert torch.allclose(target.initial_point(), target.closed_form().mean)
    pts = target.initial_points(4)
    assert pts.shape == (4, 5, 3) and torch.isfinite(target.log_prob(pts)).all()
    assert not torch.equal(pts[0], pts[1])
    assert torch.allclose(target.approximate_variance(), target.closed_form().variance)
    u = target.potential_fn({"z": pts})
    assert u.shape == () and torch.allclose(u, -target.log_prob(pts).sum())
    assert torch.allclose(target.potential(pts), -target.log_prob(pts))


def test_flow_experts_initialisation():
    flow = dist.transforms.affine_coupling(2, hidden_dims=[8])
    experts = [dist.TransformedDistribution(dist.Normal(torch.randn(3, 2), 0.5).to_event(1), [flow]) for _ in range(2)]
    target = SubsetPosterior(dist.Normal(torch.zeros(2), 1.0).to_event(1), experts)
    assert not target.is_gaussian
    z0 = target.initial_point()
    assert z0.shape == (3, 2) and torch.isfinite(target.log_prob(z0)).all()
    assert target.approximate_variance().shape == (3, 2)


def test_from_guide_uses_the_unimodal_experts_and_presence():
    modalities = small_modalities()
    guide = UnimodalGaussianGuide(modalities, latent_dim=3, hidden=(16,))
    present = {"b": torch.tensor([True, False, True, True, False, True])}
    batch = small_batch(6, present=present)
    target = SubsetPosterior.from_guide(guide, batch, ["a", "b"], StandardNormalPrior(3))
    assert target.names == ["a", "b"]
    assert target.mask.tolist() == [[True] * 6, present["b"].tolist()]
    with torch.no_grad():
        expected = guide.expert(batch, "a")
    assert torch.allclose(target.experts["a"].base_dist.loc, expected.base_dist.loc)
    assert not target.experts["a"].base_dist.loc.requires_grad  # computed once, without a graph
    cf = target.closed_form()
    assert cf.batch_shape == (6,)
    # rows where "b" is missing are the expert "a" alone
    assert torch.allclose(cf.mean[1], expected.base_dist.loc[1], atol=1e-5)
    # per-row subsets
    rows = {"a": torch.tensor([True, True, False, False, True, True]), "c": torch.ones(6, dtype=torch.bool)}
    target = SubsetPosterior.from_guide(guide, batch, rows, StandardNormalPrior(3))
    assert target.names == ["a", "c"] and target.mask[0].tolist() == rows["a"].tolist()


def test_float64_follows_the_experts():
    target = random_gaussian_target(2, n=3, d=2, dtype=torch.float64)
    z = target.initial_points(2)
    assert z.dtype == torch.float64 and target.log_prob(z).dtype == torch.float64


class _ConstantNaNExpert(dist.Normal):
    """A Gaussian whose log density is NaN for data point 0: what a masked-out expert may compute."""

    def log_prob(self, value):
        lp = super().log_prob(value)
        return torch.where(torch.arange(lp.shape[-2]).unsqueeze(-1) == 0, torch.nan, lp)


@pytest.mark.parametrize("masked", [False, True], ids=["all-experts", "per-point-subsets"])
def test_log_prob_and_grad_equals_autograd_of_log_prob(masked):
    from pyro_mmvae.nn.flows import ConditionalFlow

    g = torch.Generator().manual_seed(4)
    n, d = 6, 3
    dt = torch.float64
    flow = ConditionalFlow(d, "maf", num_blocks=2, hidden=(8, 8), context_dim=2, identity_init=False).double()
    coupling = ConditionalFlow(d, "coupling", num_blocks=1, hidden=(8,), identity_init=False).double()
    experts = {
        "maf": flow(
            dist.Normal(torch.randn(n, d, generator=g, dtype=dt), 0.5).to_event(1), torch.randn(n, 2, dtype=dt)
        ),
        "coupling": coupling(dist.Normal(torch.randn(n, d, generator=g, dtype=dt), 0.7).to_event(1)),
        "gauss": dist.Normal(torch.randn(n, d, generator=g, dtype=dt), 0.3 + torch.rand(n, d, dtype=dt)).to_event(1),
    }
    mask = None
    if masked:
        experts["nan"] = _ConstantNaNExpert(torch.zeros(n, d, dtype=dt), 1.0).to_event(1)
        mask = {name: torch.rand(n, generator=g) < 0.6 for name in experts}
        mask["nan"][0] = False  # its NaN row is masked out and must not leak into the value or the gradient
        mask["gauss"][:] = True
    prior = dist.Normal(torch.full((d,), 0.2, dtype=dt), 1.3).to_event(1)
    target = SubsetPosterior(prior, experts, mask)
    z = torch.randn(4, n, d, generator=g, dtype=dt).requires_grad_(True)
    lp = target.log_prob(z)
    (grad,) = torch.autograd.grad(lp.sum(), z)
    value, gradient = target.log_prob_and_grad(z.detach())
    assert torch.isfinite(value).all() and torch.isfinite(gradient).all()
    torch.testing.assert_close(value, lp.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gradient, grad, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="z must have shape"):
        target.log_prob_and_grad(torch.zeros(n, d + 1, dtype=dt))
