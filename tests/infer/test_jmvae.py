"""JMVAE-KL against closed forms on a linear-Gaussian model with an exact joint encoder and exact experts.

With q(z | X) = p(z | X) and q_m = p(z | x_m): the joint ELBO term is log p(x) for every draw (β = 1);
the α term is −α (β/β_ref) Σ_m KL(p(z|X) ‖ p(z|x_m)) from the exact posteriors' moments; and the JNF
product rule p(z) Π_{j∈S} q_j / p(z) is the exact p(z | x_S).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_mmvae.infer import ImproperPosteriorError, ImproperPosteriorWarning, SubsetPosterior
from pyro_mmvae.infer.jmvae import JMVAEELBO, JMVAEGuide
from tests.exact_linear import DIMS, PRESENT, gaussian_kl, log_marginal, posterior_moments
from tests.infer.baselines_common import (
    DiagLinearVAE,
    ExactExperts,
    exact_guide,
    linear_data,
    reversed_batch,
    se_close,
    train_baseline,
    with_nan_in_missing,
)

B = 6


def make(present=PRESENT, names=None):
    model = DiagLinearVAE()
    joint = exact_guide(model, "poe", names=names)
    guide = JMVAEGuide(joint, ExactExperts(exact_guide(model, "poe", names=names)))
    return model, guide, model.sample(B, seed=1, present=present)


def exact_expert_kls(model, batch):
    """Σ_{m∈M_b} KL(p(z | x_{M_b}) ‖ p(z | x_m)) per row from the closed-form posterior moments."""
    present = batch.subset_mask(None)
    mean, cov = posterior_moments(model, batch, present)
    total = torch.zeros(batch.batch_size, dtype=torch.float64)
    for name in model.names:
        mean_m, cov_m = posterior_moments(model, batch, batch.subset_mask([name]))
        total += torch.where(present[name], gaussian_kl(mean, cov, mean_m, cov_m), torch.zeros_like(total))
    return total


# ---------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("present", [None, PRESENT], ids=["complete", "missing"])
def test_terms_match_exact_log_evidence_and_gaussian_kls(present):
    model, guide, batch = make(present)
    elbo = JMVAEELBO(alpha=0.1, beta_ref=2.0, num_particles=3)
    terms = elbo.terms(model, guide, batch, beta=1.0)
    log_px = log_marginal(model, batch, batch.subset_mask(None))
    assert torch.allclose(terms["elbo"], log_px.expand(3, -1), atol=1e-7)  # zero variance at β = 1
    expected = -0.1 * (1.0 / 2.0) * exact_expert_kls(model, batch)  # warm-up factor β/β_ref = 1/2
    assert torch.allclose(terms["kl_experts"], expected.expand(3, -1), atol=1e-7)
    several = torch.stack(list(batch.subset_mask(None).values()), -1).sum(-1) > 1
    assert bool((terms["kl_experts"][:, several] < 0).all())  # one modality: q(z|X) = q_m, KL = 0
    assert torch.allclose(terms["kl_experts"][:, ~several], torch.zeros(1, dtype=torch.float64), atol=1e-9)


def test_one_sample_kl_estimate_agrees_with_closed_form():
    model, guide, batch = make(PRESENT)
    analytic = JMVAEELBO(alpha=1.0, analytic=True).terms(model, guide, batch)["kl_experts"][0]
    sampled = JMVAEELBO(alpha=1.0, analytic=False, num_particles=4000).terms(model, guide, batch)["kl_experts"]
    assert se_close(sampled, analytic)


def test_loss_is_minus_mean_of_both_terms():
    model, guide, batch = make(PRESENT)
    elbo = JMVAEELBO(alpha=0.3)
    expected = -(log_marginal(model, batch, batch.subset_mask(None)) - 0.3 * exact_expert_kls(model, batch)).mean()
    assert elbo.loss(model, guide, batch) == pytest.approx(expected.item(), rel=1e-8)


# ---------------------------------------------------------------------------------------------- subset rule
def test_product_rule_with_exact_experts_is_the_exact_subset_posterior():
    model, guide, batch = make(PRESENT)
    for subset in (["a", "b"], ["b", "c"], ["a"], []):
        q = guide.posterior(batch, subset)
        mean, cov = posterior_moments(model, batch, batch.subset_mask(subset))
        assert torch.allclose(q.mean, mean, atol=1e-7), subset
        assert torch.allclose(q.variance, torch.diagonal(cov, dim1=-2, dim2=-1), atol=1e-7), subset


class RandomExperts:
    """Fixed random Gaussian experts q_m (scales 0.3..0.9, so every product is proper), one per modality."""

    def __init__(self, names, batch_size, latent_dim=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.names = list(names)
        self.params = {
            n: (
                torch.randn(batch_size, latent_dim, generator=g, dtype=torch.float64),
                0.3 + 0.6 * torch.rand(batch_size, latent_dim, generator=g, dtype=torch.float64),
            )
            for n in self.names
        }

    def expert(self, batch, name):
        return dist.Normal(*self.params[name]).to_event(1)


def test_product_rule_matches_subset_posterior_closed_form_joint_and_expert():
    model, exact, batch = make(PRESENT)
    guide = JMVAEGuide(exact.joint, RandomExperts(DIMS, B))
    for subset in (["a", "b"], ["a", "b", "c"], ["c"]):
        masks = batch.subset_mask(subset)
        experts = {n: guide.experts.expert(batch, n) for n in subset}
        reference = SubsetPosterior(model.prior_dist(), experts, {n: masks[n] for n in subset}).closed_form()
        q = guide.posterior(batch, subset)
        full = torch.stack([masks[n] for n in DIMS], -1).all(-1)  # rows where S = every modality: the joint
        assert torch.allclose(q.mean[~full], reference.mean[~full], atol=1e-10), subset
        assert torch.allclose(q.variance[~full], reference.variance[~full], atol=1e-10), subset
        assert torch.allclose(q.mean[full], exact.joint.posterior(batch).mean[full]), subset
    single = guide.posterior(batch, ["b"])
    assert torch.allclose(single.mean[PRESENT["b"]], guide.experts.params["b"][0][PRESENT["b"]], atol=1e-12)
    assert torch.allclose(single.mean[~PRESENT["b"]], torch.zeros(2, dtype=torch.float64))  # S = ∅: the prior


def test_improper_product_raises_or_warns():
    model, exact, batch = make(present=None)
    broad = RandomExperts(DIMS, B)
    for n in DIMS:  # experts ten times broader than the prior: Λ = Σ_j Λ_j − Λ_0 < 0
        broad.params[n] = (torch.zeros(B, 2, dtype=torch.float64), torch.full((B, 2), 10.0, dtype=torch.float64))
    bad = JMVAEGuide(exact.joint, broad)
    with pytest.raises(ImproperPosteriorError, match="improper"):
        bad.subset_posterior(batch, ["a", "b"])
    with pytest.warns(ImproperPosteriorWarning):
        q = bad.subset_posterior(batch, ["a", "b"], improper="warn")
    assert torch.allclose(q.variance, torch.full_like(q.variance, 1 / (1 + 2 / 100)))  # plain product p·q_a·q_b


# ---------------------------------------------------------------------------------------------- invariances
def test_invariant_to_modality_order():
    model, guide, batch = make(PRESENT)
    _, flipped, _ = make(PRESENT, names=list(reversed(DIMS)))
    elbo = JMVAEELBO(alpha=0.5)
    assert elbo.loss(model, flipped, reversed_batch(batch)) == pytest.approx(elbo.loss(model, guide, batch), rel=1e-10)
    q1 = guide.posterior(batch, ["a", "c"])
    q2 = flipped.posterior(reversed_batch(batch), ["c", "a"])
    assert torch.allclose(q1.mean, q2.mean) and torch.allclose(q1.variance, q2.variance)


def test_nan_in_missing_rows_changes_nothing():
    model, guide, batch = make(PRESENT)
    elbo = JMVAEELBO(alpha=0.2, analytic=False)
    pyro.set_rng_seed(5)
    clean = elbo.differentiable_loss(model, guide, batch)
    pyro.set_rng_seed(5)
    dirty = elbo.differentiable_loss(model, guide, with_nan_in_missing(batch))
    assert torch.isfinite(dirty) and torch.equal(clean, dirty)


def test_needs_a_jmvae_guide():
    model, guide, batch = make()
    with pytest.raises(TypeError, match="JMVAEGuide"):
        JMVAEELBO().loss(model, guide.joint, batch)


# ---------------------------------------------------------------------------------------------- training
def test_training_smoke_with_warmup_loss_finite_and_decreasing():
    from pyro_mmvae.experiments.baselines_poe import warmup_schedule

    schedule = warmup_schedule(1.0, 4)
    assert [schedule(e) for e in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    losses, (model, guide, objective) = train_baseline("jmvae", epochs=5, beta=schedule)
    assert objective.beta_ref == 1.0
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1.0, losses
    # every parameter of the joint encoder and of the experts is trained by the one objective
    batch = linear_data(32).full
    objective.differentiable_loss(model, guide, batch).backward()
    for part in (guide.joint, guide.experts):
        assert all(p.grad is not None for p in part.parameters())
