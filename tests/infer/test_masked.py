"""MaskedELBO / MixtureELBO / TCELBO against closed forms with EXACT posteriors (linear-Gaussian models).

With q(·|x_S) = p(·|x_S), the masked bound has zero variance: L_S = log p(x_S) and
L_\\S = log p(x_\\S | x_S), so L_S + L_\\S = log p(x) for every draw (β = 1), for the shared model
(Algorithm 1) and for the private-latent model (Algorithm 2). Expectations of the other bounds and
of β ≠ 1 are compared with closed forms within 5 Monte Carlo standard errors.
"""

import functools
import math

import pyro
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_mmvae.data import MultimodalBatch
from pyro_mmvae.guides import JointGuide
from pyro_mmvae.infer.masked import TCELBO, MaskedELBO, MixtureELBO
from pyro_mmvae.models import MultimodalVAE
from tests.common import assert_finite_nonzero_grads, small_batch, small_modalities
from tests.exact_linear import (
    DIMS,
    PRESENT,
    ExactGuide,
    LinearVAE,
    expected_bound,
    expected_log_lik,
    log_marginal,
    make_exact,
    posterior_moments,
)

B = 6
ROW_MASK = {  # a per-row S, including S = ∅ (row 3) and S = M (row 5)
    "a": torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool),
    "b": torch.tensor([0, 0, 1, 0, 0, 1], dtype=torch.bool),
    "c": torch.tensor([1, 1, 0, 0, 0, 1], dtype=torch.bool),
}
ELBOS = [MaskedELBO, MixtureELBO, TCELBO]


make = functools.partial(make_exact, batch_size=B, seed=1, present=PRESENT)


def se_close(samples: torch.Tensor, expected: torch.Tensor, k: float = 5.0) -> bool:
    """Mean over particles (dim 0) within k standard errors (plus rounding) of ``expected``."""
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return bool(((samples.mean(0) - expected).abs() <= k * se + 1e-9).all())


# ---------------------------------------------------------------------------------------------- exact values
@pytest.mark.parametrize("kind", ["shared", "private"])
@pytest.mark.parametrize("stl", [True, False], ids=["stl", "no_stl"])
@pytest.mark.parametrize(
    "mask", [None, "uniform", [], list(DIMS), ROW_MASK], ids=["paper", "uniform", "empty", "all", "per_row"]
)
def test_masked_bound_with_exact_posterior_is_log_evidence(kind, stl, mask):
    model, guide, batch = make(kind)
    sampler = "uniform" if mask == "uniform" else "paper"
    elbo = MaskedELBO(num_particles=3, stl=stl, mask_sampler=sampler)
    draw = elbo.draw(model, guide, batch, mask=None if mask == "uniform" else mask)
    terms = elbo.combine(draw)
    log_px = log_marginal(model, batch, batch.subset_mask(None))
    log_pxs = log_marginal(model, batch, draw.subset)
    assert torch.allclose(terms["L_S"], log_pxs.expand(3, -1), atol=1e-9)
    assert torch.allclose(terms["L_rest"], (log_px - log_pxs).expand(3, -1), atol=1e-9)
    assert torch.allclose(sum(terms.values()), log_px.expand(3, -1), atol=1e-9)
    # zero variance ⇒ the importance-weighted loss is exactly −mean log p(x)
    pyro.set_rng_seed(0)
    assert math.isclose(elbo.loss(model, guide, batch), -log_px.mean().item(), rel_tol=1e-10)


def test_masked_terms_on_special_subsets():
    model, guide, batch = make("shared")
    elbo = MaskedELBO()
    full = elbo.terms(model, guide, batch, mask=list(DIMS))
    assert torch.equal(full["L_rest"], torch.zeros_like(full["L_rest"]))  # S = M ⇒ L_\S = 0 exactly
    empty = elbo.terms(model, guide, batch, mask=[])
    # exact q(·|∅) is the prior: L_∅ = log p(z) − log p(z) = 0 = −KL(p ‖ p)
    assert torch.allclose(empty["L_S"], torch.zeros_like(empty["L_S"]), atol=1e-12)


@pytest.mark.parametrize("kind", ["shared", "private"])
@pytest.mark.parametrize("beta", [1.0, 0.5])
@pytest.mark.parametrize(
    "elbo_cls, given, reference", [(MixtureELBO, "S", None), (TCELBO, "M", "S")], ids=["mixture", "tc"]
)
def test_bound_expectation(elbo_cls, given, reference, kind, beta):
    # E[L̂] = E_{p(·|x_given)}[log p(x_M | ·)] − β KL(p(·|x_given) ‖ p(·|x_reference)), where
    # MixtureELBO: given = S, reference = ∅ (the prior p(·));  TCELBO: given = M, reference = S
    model, guide, batch = make(kind)
    masks = {"S": batch.subset_mask(ROW_MASK), "M": batch.subset_mask(None), None: None}
    bound = elbo_cls(num_particles=4000).per_datapoint_bound(model, guide, batch, beta=beta, mask=ROW_MASK)
    assert se_close(bound, expected_bound(model, batch, beta, masks["M"], masks[given], masks[reference]))


@pytest.mark.parametrize("kind", ["shared", "private"])
def test_mixture_bound_expectation_has_the_textbook_form_at_beta_1(kind):
    # E[L̂] at β = 1 is log p(x_S) + E_{p(z|x_S)}[log p(x_\S | z)]
    model, _, batch = make(kind)
    masks = batch.subset_mask(ROW_MASK)
    rest = {n: batch.present[n] & ~masks[n] for n in DIMS}
    mean_s, cov_s = posterior_moments(model, batch, masks)
    alt = log_marginal(model, batch, masks) + expected_log_lik(model, batch, rest, mean_s, cov_s)
    assert torch.allclose(expected_bound(model, batch, 1.0, batch.subset_mask(None), masks), alt, atol=1e-8)


@pytest.mark.parametrize("kind", ["shared", "private"])
def test_masked_bound_expectation_for_beta(kind):
    # E[L_S] = E_{p(·|x_S)} log p(x_S|·) − β KL(p(·|x_S) ‖ p)
    # E[L_\S] = E_{p(·|x)} log p(x_\S|·) − β KL(p(·|x) ‖ p(·|x_S))
    beta = 0.3
    model, guide, batch = make(kind)
    masks = batch.subset_mask(ROW_MASK)
    rest = {n: batch.present[n] & ~masks[n] for n in DIMS}
    terms = MaskedELBO(num_particles=4000).terms(model, guide, batch, beta=beta, mask=ROW_MASK)
    e_s = expected_bound(model, batch, beta, masks, masks)
    e_rest = expected_bound(model, batch, beta, rest, batch.subset_mask(None), masks)
    e_rest = torch.where(torch.stack(list(rest.values()), -1).any(-1), e_rest, torch.zeros_like(e_rest))
    assert se_close(terms["L_S"], e_s)
    assert se_close(terms["L_rest"], e_rest)


def test_empty_subset_term_is_minus_beta_kl_of_the_data_free_encoder():
    # L_∅ = β[log p(z) − log q(z|∅)], z ~ q(·|∅): its mean is −β KL(q(·|∅) ‖ p)
    mods = small_modalities()
    model = MultimodalVAE(mods, 3, hidden=(8,))
    guide = JointGuide(mods, 3, head_dim=4, hidden=(8,), merge_hidden=(8,))
    batch = small_batch(4)
    beta = 0.7
    terms = MaskedELBO(num_particles=20000, stl=False).terms(model, guide, batch, beta=beta, mask=[])
    with torch.no_grad():
        q0 = guide.posterior(batch, [])
        kl = torch.distributions.kl_divergence(q0, model.prior_dist().expand([4]))
    assert se_close(terms["L_S"].detach(), -beta * kl)


# ---------------------------------------------------------------------------------------------- weights, particles
def test_reconstruction_weights_multiply_likelihoods_in_training_only():
    model, guide, batch = make("shared")
    model.weights["b"] = 3.0
    elbo = MaskedELBO(num_particles=2)
    pyro.set_rng_seed(4)
    w = elbo.draw(model, guide, batch, mask=ROW_MASK)
    pyro.set_rng_seed(4)
    u = elbo.draw(model, guide, batch, mask=ROW_MASK, weighted=False)
    for part in ("recon_S", "recon_M"):
        assert torch.allclose(getattr(w, part)["b"], 3.0 * getattr(u, part)["b"])
        assert torch.equal(getattr(w, part)["a"], getattr(u, part)["a"])
    pyro.set_rng_seed(4)
    plain = elbo.per_datapoint_bound(model, guide, batch, mask=ROW_MASK, weighted=False)
    assert torch.allclose(plain, log_marginal(model, batch, batch.subset_mask(None)).expand(2, -1), atol=1e-9)
    override = MaskedELBO(num_particles=2, reconstruction_weights={"b": 1.0})
    pyro.set_rng_seed(4)
    assert torch.equal(override.draw(model, guide, batch, mask=ROW_MASK).recon_S["b"], u.recon_S["b"])


@pytest.mark.parametrize("elbo_cls", ELBOS)
def test_importance_weighted_loss_is_logmeanexp_of_particles(elbo_cls):
    mods = small_modalities()
    model = MultimodalVAE(mods, 3, hidden=(8,))
    guide = JointGuide(mods, 3, head_dim=4, hidden=(8,), merge_hidden=(8,))
    batch = small_batch(5)
    elbo = elbo_cls(num_particles=7)
    pyro.set_rng_seed(9)
    loss = elbo.differentiable_loss(model, guide, batch, 0.5)
    pyro.set_rng_seed(9)
    bound = elbo.per_datapoint_bound(model, guide, batch, 0.5)
    assert bound.shape == (7, 5)
    assert torch.allclose(loss, -(torch.logsumexp(bound, 0) - math.log(7)).mean())


# ---------------------------------------------------------------------------------------------- gradients
def _missing_batch():
    # rows 0-2 observe a single modality each, row 3 all, row 4 two
    present = {
        "a": torch.tensor([1, 0, 0, 1, 1], dtype=torch.bool),
        "b": torch.tensor([0, 1, 0, 1, 0], dtype=torch.bool),
        "c": torch.tensor([0, 0, 1, 1, 1], dtype=torch.bool),
    }
    b = small_batch(5)
    data = {
        n: torch.where(present[n].reshape(-1, *[1] * (x.dim() - 1)), x, torch.zeros_like(x)) for n, x in b.data.items()
    }
    return MultimodalBatch(data, present)


@pytest.mark.parametrize("elbo_cls", ELBOS)
@pytest.mark.parametrize("mask", [None, [], ["a", "b", "c"]], ids=["sampled", "empty", "all"])
@pytest.mark.parametrize("stl", [True, False], ids=["stl", "no_stl"])
@pytest.mark.parametrize("num_particles", [1, 3])
def test_gradients_are_finite_with_missing_modalities(elbo_cls, mask, stl, num_particles):
    mods = small_modalities()
    model = MultimodalVAE(mods, 3, hidden=(8,))
    guide = JointGuide(mods, 3, head_dim=4, hidden=(8,), merge_hidden=(8,))
    loss = elbo_cls(num_particles=num_particles, stl=stl)(model, guide)(_missing_batch(), 0.5, mask)
    assert torch.isfinite(loss)
    loss.backward()
    assert_finite_nonzero_grads(model.parameters())
    assert_finite_nonzero_grads(guide.parameters())


@pytest.mark.parametrize("elbo_cls", ELBOS)
@pytest.mark.parametrize("stl", [True, False], ids=["stl", "no_stl"])
def test_gradients_with_private_latents(elbo_cls, stl):
    model, guide, batch = make("private", learn=True)
    loss = elbo_cls(num_particles=2, stl=stl).differentiable_loss(model, guide, batch, 1.0)
    loss.backward()
    assert_finite_nonzero_grads(model.parameters())


def test_stl_changes_gradients_but_not_values():
    mods = small_modalities()
    model = MultimodalVAE(mods, 3, hidden=(8,))
    guide = JointGuide(mods, 3, head_dim=4, hidden=(8,), merge_hidden=(8,))
    batch = small_batch(5)
    values, grads = [], []
    for stl in (True, False):
        guide.zero_grad()
        pyro.set_rng_seed(11)
        loss = MaskedELBO(stl=stl).differentiable_loss(model, guide, batch, 1.0, ["a", "b"])
        loss.backward()
        values.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in guide.parameters() if p.grad is not None]))
    assert math.isclose(values[0], values[1], rel_tol=1e-6)
    assert not torch.allclose(grads[0], grads[1])


def test_svi_step_and_module_interface():
    mods = small_modalities()
    model = MultimodalVAE(mods, 3, hidden=(8,))
    guide = JointGuide(mods, 3, head_dim=4, hidden=(8,), merge_hidden=(8,))
    svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=MaskedELBO(mask_sampler="uniform"))
    assert math.isfinite(svi.step(small_batch(6), 1.0))
    module = MixtureELBO()(model, guide)
    assert len(list(module.parameters())) > 0


# ---------------------------------------------------------------------------------------------- bad input
def test_guide_missing_a_model_latent_site_raises():
    model, _, batch = make("private")
    shared_only = ExactGuide(LinearVAE(DIMS, latent_dim=2))
    with pytest.raises(ValueError, match="not sampled by the guide"):
        MaskedELBO().loss(model, shared_only, batch)


def test_observed_site_outside_the_convention_raises():
    model, guide, batch = make("shared")

    def renamed(batch, beta=1.0):
        b = batch.batch_size
        with pyro.plate("data", b):
            with pyro.poutine.scale(scale=beta):
                z = pyro.sample("z", pyro.distributions.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("obs_a", pyro.distributions.Normal(z.sum(-1), 1.0), obs=batch.data["a"][:, 0])

    with pytest.raises(ValueError, match="x_<modality>"):
        MaskedELBO().loss(renamed, guide, batch)


def test_beta_must_be_positive():
    model, guide, batch = make("shared")
    with pytest.raises(ValueError, match="beta"):
        MaskedELBO().loss(model, guide, batch, 0.0)


def test_guide_dropping_private_sites_outside_the_subset_raises():
    model, _, batch = make("private")

    class Dropping(ExactGuide):
        """Samples w_s only for modalities of S: q(z_M | x_S) would silently miss p(w_s) terms."""

        def forward(self, batch, subset=None, beta=1.0):
            masks = batch.subset_mask(subset)
            with pyro.plate("data", batch.batch_size), pyro.poutine.scale(scale=beta):
                z = pyro.sample("z", self.posterior(batch, subset))
                for n in self.model.names:
                    if masks[n].any():
                        pyro.sample(f"w_{n}", self.private_dist(batch, n, z, masks[n]))

    with pytest.raises(ValueError, match="different latent sites"):
        TCELBO().loss(model, Dropping(model), batch, 1.0, ["a"])
