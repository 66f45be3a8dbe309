"""MVTCAE's total-correlation objective against closed forms on a linear-Gaussian model with EXACT experts.

With the prior expert and exact experts, q(z | X) = p(z | X) and q(z | x_m) = p(z | x_m), so (n present modalities)

    E[L̂] = (n − α)/n · E_{p(z|X)}[log p(X | z)] − (1 − α) β KL(p(z|X) ‖ p(z)) − (α/n) β Σ_m KL(p(z|X) ‖ p(z|x_m)).
"""

import math

import pyro
import pytest
import torch

from pyro_mmvae.guides import MoEGuide
from pyro_mmvae.infer.elbo import BetaELBO
from pyro_mmvae.infer.mvtcae import ALPHA, MVTCAEELBO
from tests.exact_linear import DIMS, PRESENT, expected_log_lik, gaussian_kl, posterior_moments, prior_moments
from tests.infer.baselines_common import (
    DiagLinearVAE,
    exact_guide,
    reversed_batch,
    se_close,
    train_baseline,
    with_nan_in_missing,
)

B = 6


def make(present=PRESENT, names=None, prior_expert=True):
    model = DiagLinearVAE()
    guide = exact_guide(model, "mvtcae", names=names, prior_expert=prior_expert)
    return model, guide, model.sample(B, seed=1, present=present)


def closed_form_terms(model, batch, alpha, beta):
    present = batch.subset_mask(None)
    n = torch.stack(list(present.values()), -1).sum(-1).double()
    mean, cov = posterior_moments(model, batch, present)
    recon = (n - alpha) / n * expected_log_lik(model, batch, present, mean, cov)
    kl_prior = -(1 - alpha) * beta * gaussian_kl(mean, cov, *prior_moments(model, B))
    kl_experts = torch.zeros(B, dtype=torch.float64)
    for name in model.names:
        mean_m, cov_m = posterior_moments(model, batch, batch.subset_mask([name]))
        kl = gaussian_kl(mean, cov, mean_m, cov_m)
        kl_experts += torch.where(present[name], kl, torch.zeros_like(kl))
    return recon, kl_prior, -alpha / n * beta * kl_experts


@pytest.mark.parametrize("present", [None, PRESENT], ids=["complete", "missing"])
def test_terms_match_closed_forms(present):
    model, guide, batch = make(present)
    terms = MVTCAEELBO(alpha=ALPHA, num_particles=4000).terms(model, guide, batch, beta=2.5)
    recon, kl_prior, kl_experts = closed_form_terms(model, batch, ALPHA, 2.5)
    assert torch.allclose(terms["kl_experts"][0], kl_experts, atol=1e-7)
    assert se_close(terms["recon"], recon)
    assert se_close(terms["kl_prior"], kl_prior)


def test_alpha_zero_is_the_beta_elbo():
    model, guide, batch = make(PRESENT)
    pyro.set_rng_seed(2)
    ours = MVTCAEELBO(alpha=0.0, num_particles=3).per_datapoint_bound(model, guide, batch, beta=0.6)
    pyro.set_rng_seed(2)
    reference = BetaELBO(num_particles=3).per_datapoint_bound(model, guide, batch, beta=0.6)
    assert torch.allclose(ours, reference, atol=1e-10)


def test_product_without_prior_expert_is_the_plain_product():
    model, guide, batch = make(present=None, prior_expert=False)
    locs, variances, _ = guide.experts(batch)
    q = guide.posterior(batch, ["a", "c"])
    precision = 1 / variances[:, 0] + 1 / variances[:, 2]
    assert torch.allclose(q.variance, 1 / precision)
    assert torch.allclose(q.mean, (locs[:, 0] / variances[:, 0] + locs[:, 2] / variances[:, 2]) / precision)
    single = guide.posterior(batch, ["b"])
    assert torch.allclose(single.mean, locs[:, 1]) and torch.allclose(single.variance, variances[:, 1])
    empty = guide.posterior(batch, [])
    assert torch.equal(empty.mean, torch.zeros_like(empty.mean)) and torch.equal(
        empty.variance, torch.ones_like(empty.variance)
    )


def test_objective_uses_the_guides_unimodal_posteriors_without_prior_expert():
    model, guide, batch = make(present=None, prior_expert=False)
    terms = MVTCAEELBO(alpha=0.5).terms(model, guide, batch, beta=1.0)
    q = guide.posterior(batch)
    total = sum(torch.distributions.kl_divergence(q, guide.posterior(batch, [n])) for n in DIMS)
    assert torch.allclose(terms["kl_experts"][0], -0.5 / 3 * total, atol=1e-10)


# ---------------------------------------------------------------------------------------------- invariances
def test_invariant_to_modality_order():
    model, guide, batch = make(PRESENT, prior_expert=False)
    _, flipped, _ = make(PRESENT, names=list(reversed(DIMS)), prior_expert=False)
    elbo = MVTCAEELBO()
    a, b = elbo.terms(model, guide, batch), elbo.terms(model, flipped, reversed_batch(batch))
    assert torch.allclose(a["kl_experts"], b["kl_experts"], atol=1e-10)
    q1, q2 = guide.posterior(batch), flipped.posterior(reversed_batch(batch))
    assert torch.allclose(q1.mean, q2.mean) and torch.allclose(q1.variance, q2.variance)


def test_nan_in_missing_rows_changes_nothing():
    model, guide, batch = make(PRESENT, prior_expert=False)
    elbo = MVTCAEELBO()
    pyro.set_rng_seed(6)
    clean = elbo.differentiable_loss(model, guide, batch)
    pyro.set_rng_seed(6)
    dirty = elbo.differentiable_loss(model, guide, with_nan_in_missing(batch))
    assert torch.isfinite(dirty) and torch.equal(clean, dirty)


def test_rejects_alpha_outside_unit_interval_and_non_poe_guides():
    with pytest.raises(ValueError, match="alpha"):
        MVTCAEELBO(alpha=1.5)
    model, guide, batch = make()
    with pytest.raises(TypeError, match="product-of-experts"):
        MVTCAEELBO().loss(model, MoEGuide(model.modalities(), 2), batch)  # a mixture, no product


# ---------------------------------------------------------------------------------------------- training
def test_training_smoke_loss_finite_and_decreasing():
    losses, (model, guide, objective) = train_baseline("mvtcae", beta=2.5)
    assert objective.alpha == ALPHA and guide.use_prior_expert is False
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1.0, losses
