"""MMJSD's Jensen-Shannon objective and dynamic prior against closed forms and Monte Carlo.

The dynamic prior f is the normalised π-weighted geometric mean of the prior and the experts, so
log f(z) − Σ_j π_j log q_j(z) does not depend on z; JS = Σ_j π_j KL(q_j ‖ f) is checked against its
Monte Carlo estimate. With exact unimodal posteriors (a linear-Gaussian model) the reconstruction term
for expert m is E_{p(z|x_m)}[log p(X | z)] in closed form.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_mmvae.guides import MoEGuide
from pyro_mmvae.infer.mmjsd import MMJSDELBO, dynamic_prior, dynamic_prior_params, jensen_shannon
from tests.exact_linear import DIMS, PRESENT, expected_log_lik, posterior_moments
from tests.infer.baselines_common import DiagLinearVAE, reversed_batch, se_close, train_baseline, with_nan_in_missing

B = 6
MIN_SCALE = 1e-3


class ExactPosteriorEncoder(nn.Module):
    """``x_m → [μ, ℓ]`` of p(z | x_m) for :class:`DiagLinearVAE` under MoEGuide's σ = min_scale + exp(ℓ)."""

    def __init__(self, W, b, sigma):
        super().__init__()
        lik_prec = (W**2).sum(0) / sigma**2  # the likelihood factor's precision d²/σ²
        self.register_buffer("A", W / sigma**2 / (1 + lik_prec))  # mean = Wᵀ(x − b)/σ² / (1 + d²/σ²)
        self.register_buffer("b", b.clone())
        self.register_buffer("ell", torch.log((1 + lik_prec).rsqrt() - MIN_SCALE))

    def forward(self, x):
        mu = (x - self.b) @ self.A
        return torch.cat([mu, self.ell.expand_as(mu)], -1)


def make(present=PRESENT, names=None):
    model = DiagLinearVAE()
    names = list(model.names if names is None else names)
    mods = {m.name: m for m in model.modalities()}
    encoders = {n: ExactPosteriorEncoder(model.W[n], model.b[n], model.sigma[n]) for n in names}
    guide = MoEGuide([mods[n] for n in names], 2, encoders=encoders, min_scale=MIN_SCALE, init="torch")
    return model, guide, model.sample(B, seed=1, present=present)


def random_experts(k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(4, k, 2, generator=g, dtype=torch.float64)
    scales = 0.3 + torch.rand(4, k, 2, generator=g, dtype=torch.float64)
    weights = torch.tensor([[1 / 3] * 3, [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1 / 3] * 3], dtype=torch.float64)
    prior = (torch.zeros(4, 2, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64))
    return locs, scales, weights[:, :k], prior


# ---------------------------------------------------------------------------------------------- closed forms
def test_dynamic_prior_is_the_normalised_weighted_geometric_mean():
    locs, scales, weights, (loc0, scale0) = random_experts()
    f = dist.Normal(*dynamic_prior_params(locs, scales, weights, loc0, scale0)).to_event(1)
    n = (weights > 0).sum(-1, keepdim=True).double()
    pi = torch.cat([1 / (n + 1), weights * n / (n + 1)], -1)  # (4, 1 + K): π_0 for the prior, then the experts
    z = 3 * torch.randn(50, 4, 2, dtype=torch.float64)
    parts = [dist.Normal(loc0, scale0).to_event(1).log_prob(z)]
    parts += [dist.Normal(locs[:, k], scales[:, k]).to_event(1).log_prob(z) for k in range(3)]
    weighted = sum(pi[:, j] * parts[j] for j in range(4))
    gap = f.log_prob(z) - weighted
    assert torch.allclose(gap, gap[:1].expand_as(gap), atol=1e-9)  # constant in z: f ∝ Π q_j^{π_j}


def test_js_matches_monte_carlo_and_vanishes_when_every_expert_is_the_prior():
    locs, scales, weights, (loc0, scale0) = random_experts()
    js = jensen_shannon(locs, scales, weights, loc0, scale0)
    f = dist.Normal(*dynamic_prior_params(locs, scales, weights, loc0, scale0)).to_event(1)
    n = (weights > 0).sum(-1).double()
    draws = 20000
    q0 = dist.Normal(loc0, scale0).to_event(1)
    z0 = q0.sample((draws,))
    samples = (q0.log_prob(z0) - f.log_prob(z0)) / (n + 1)
    for k in range(3):
        qk = dist.Normal(locs[:, k], scales[:, k]).to_event(1)
        zk = qk.sample((draws,))
        samples = samples + weights[:, k] * n / (n + 1) * (qk.log_prob(zk) - f.log_prob(zk))
    assert se_close(samples, js)
    assert bool((js > 0).all())
    same = jensen_shannon(torch.zeros_like(locs), torch.ones_like(scales), weights, loc0, scale0)
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-12)


def test_objective_terms_with_exact_unimodal_posteriors():
    model, guide, batch = make(present=None)
    elbo = MMJSDELBO(num_particles=3000)
    present = batch.subset_mask(None)
    locs, scales, _ = guide.experts(batch)
    weights = torch.full((B, 3), 1 / 3, dtype=torch.float64)
    prior = (torch.zeros(B, 2, dtype=torch.float64), torch.ones(B, 2, dtype=torch.float64))
    for index, name in enumerate(DIMS):
        terms = elbo.terms(model, guide, batch, beta=0.8, components=torch.full((B,), index))
        mean, cov = posterior_moments(model, batch, batch.subset_mask([name]))
        assert torch.allclose(locs[:, index], mean, atol=1e-9)  # the experts are p(z | x_m)
        assert se_close(terms["recon"], expected_log_lik(model, batch, present, mean, cov)), name
        assert torch.allclose(terms["js"][0], -0.8 * jensen_shannon(locs, scales, weights, *prior), atol=1e-10)


def test_reconstruction_draws_come_from_the_unimodal_experts_stratified():
    model, guide, _ = make(present=None)
    batch = model.sample(9, seed=2)
    q = guide.posterior(batch)  # K = M + 1: the last component is the prior, on only for empty rows
    from pyro_mmvae.infer.baseline_terms import choose_components

    chosen = choose_components(q.log_weights.exp(), "stratified")
    assert chosen.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_dynamic_prior_answers_subsets():
    model, guide, batch = make()
    locs, scales, present = guide.experts(batch)
    one = dynamic_prior(guide, batch, ["a"], model)
    rows = PRESENT["a"]
    assert torch.allclose(one.mean[rows], locs[rows, 0]) and torch.allclose(one.stddev[rows], scales[rows, 0])
    assert torch.allclose(one.mean[~rows], torch.zeros(2, dtype=torch.float64))  # S = ∅: the prior
    two = dynamic_prior(guide, batch, ["a", "b"], model)
    both = PRESENT["a"] & PRESENT["b"]
    w = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64).expand(B, 3)
    prior = (torch.zeros(B, 2, dtype=torch.float64), torch.ones(B, 2, dtype=torch.float64))
    f_loc, f_scale = dynamic_prior_params(locs, scales, w, *prior)
    assert torch.allclose(two.mean[both], f_loc[both]) and torch.allclose(two.stddev[both], f_scale[both])
    # the dynamic prior of {a, b} is broader than their PoE: precision (Λ_0 + Λ_a + Λ_b)/3
    poe_var = 1 / (1 + scales[:, 0] ** -2 + scales[:, 1] ** -2)
    assert torch.allclose(two.variance[both], 3 * poe_var[both])


# ---------------------------------------------------------------------------------------------- invariances
def test_invariant_to_modality_order():
    model, guide, batch = make()
    _, flipped, _ = make(names=list(reversed(DIMS)))
    elbo = MMJSDELBO()
    js = elbo.terms(model, guide, batch)["js"]
    assert torch.allclose(js, elbo.terms(model, flipped, reversed_batch(batch))["js"], atol=1e-10)
    q1, q2 = (
        dynamic_prior(guide, batch, ["a", "c"], model),
        dynamic_prior(flipped, reversed_batch(batch), ["c", "a"], model),
    )
    assert torch.allclose(q1.mean, q2.mean) and torch.allclose(q1.variance, q2.variance)


def test_missing_modalities_leave_the_js_of_the_present_ones():
    """A row without c: JS of {p, q_a, q_b} with π = 1/3 each, as if c did not exist."""
    model, guide, batch = make()
    js = MMJSDELBO().terms(model, guide, batch)["js"][0]
    rows = PRESENT["a"] & PRESENT["b"] & ~PRESENT["c"]
    locs, scales, _ = guide.experts(batch)
    half = torch.full((B, 2), 0.5, dtype=torch.float64)
    prior = (torch.zeros(B, 2, dtype=torch.float64), torch.ones(B, 2, dtype=torch.float64))
    expected = jensen_shannon(locs[:, :2], scales[:, :2], half, *prior)
    assert bool(rows.any()) and torch.allclose(-js[rows], expected[rows], atol=1e-12)


def test_nan_in_missing_rows_changes_nothing():
    model, guide, batch = make()
    elbo = MMJSDELBO(sampling="random")
    pyro.set_rng_seed(8)
    clean = elbo.differentiable_loss(model, guide, batch)
    pyro.set_rng_seed(8)
    dirty = elbo.differentiable_loss(model, guide, with_nan_in_missing(batch))
    assert torch.isfinite(dirty) and torch.equal(clean, dirty)


def test_needs_a_mixture_guide():
    from tests.infer.baselines_common import exact_guide

    model, _, batch = make()
    with pytest.raises(TypeError, match="mixture"):
        MMJSDELBO().loss(model, exact_guide(model, "poe"), batch)


# ---------------------------------------------------------------------------------------------- training
def test_training_smoke_loss_finite_and_decreasing():
    losses, (model, guide, objective) = train_baseline("mmjsd")
    assert objective.sampling == "stratified"
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1.0, losses
