"""MoPoE's objective against closed forms on a linear-Gaussian model with EXACT PoE experts.

With exact experts every component of the MoPoE guide is an exact subset posterior p(z | x_S'), so for a
fixed component S' the bound's reconstruction term is E_{p(z|x_S')}[log p(x_M | z)] and its KL term
−β KL̄ with KL̄ = (1/K) Σ_{S'} KL(p(z | x_S') ‖ p(z)), both in closed form.
"""

import itertools
import math

import pyro
import pytest
import torch

from pyro_mmvae.distributions.experts import subset_matrix
from pyro_mmvae.infer.baseline_terms import choose_components
from pyro_mmvae.infer.mopoe import MoPoEELBO
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
NAMES = list(DIMS)


def make(present=PRESENT, names=None, include_empty=False):
    model = DiagLinearVAE()
    guide = exact_guide(model, "mopoe", names=names, include_empty=include_empty)
    return model, guide, model.sample(B, seed=1, present=present)


def component_masks(batch, index, names=NAMES):
    """Component ``index`` of the guide's mixture (binary code over ``names``) as per-row subset masks."""
    bits = subset_matrix(len(names))[index]
    return batch.subset_mask([n for n, on in zip(names, bits.tolist()) if on])


def exact_average_kl(model, batch, include_empty=False):
    """(1/K) Σ_{S' ⊆ M_b} KL(p(z | x_S') ‖ p(z)) per row, over the non-empty S' (and ∅ when asked)."""
    total = torch.zeros(B, dtype=torch.float64)
    count = torch.zeros(B, dtype=torch.float64)
    mean0, cov0 = prior_moments(model, B)
    for r in range(0 if include_empty else 1, len(NAMES) + 1):
        for subset in itertools.combinations(NAMES, r):
            masks = batch.subset_mask(list(subset))
            inside = torch.stack([masks[n] == (n in subset) for n in NAMES], -1).all(-1)  # S' ⊆ M_b
            mean, cov = posterior_moments(model, batch, masks)
            total += torch.where(inside, gaussian_kl(mean, cov, mean0, cov0), torch.zeros_like(total))
            count += inside.to(total.dtype)
    return total / count


# ---------------------------------------------------------------------------------------------- component choice
def test_stratified_choice_splits_the_batch_into_equal_blocks():
    w = torch.full((9, 3), 1 / 3)
    assert choose_components(w, "stratified").tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    w = torch.tensor([[0.0, 0.5, 0.0, 0.5]]).expand(4, 4)  # inactive components are never chosen
    assert choose_components(w, "stratified").tolist() == [1, 1, 3, 3]


def test_random_choice_follows_the_weights():
    torch.manual_seed(0)
    w = torch.tensor([[0.2, 0.0, 0.8]]).expand(20000, 3)
    counts = torch.bincount(choose_components(w, "random"), minlength=3).double() / 20000
    assert counts[1] == 0 and abs(counts[0] - 0.2) < 5 * math.sqrt(0.2 * 0.8 / 20000)


# ---------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("include_empty", [False, True], ids=["nonempty", "with_empty"])
def test_average_kl_is_the_mean_of_exact_subset_posterior_kls(include_empty):
    model, guide, batch = make(include_empty=include_empty)
    terms = MoPoEELBO(kl="average", num_particles=2).terms(model, guide, batch, beta=0.7)
    expected = -0.7 * exact_average_kl(model, batch, include_empty)
    assert torch.allclose(terms["kl"], expected.expand(2, -1), atol=1e-7)


def test_bound_of_each_component_matches_closed_form_in_expectation():
    model, guide, batch = make()
    elbo = MoPoEELBO(num_particles=3000)
    present = batch.subset_mask(None)
    for index in range(1, 2 ** len(NAMES)):
        masks = component_masks(batch, index)
        usable = torch.stack([masks[n] | ~bit for n, bit in zip(NAMES, subset_matrix(3)[index])], -1).all(-1)
        rows = usable.nonzero().flatten()
        if len(rows) == 0:
            continue
        components = torch.full((B,), index, dtype=torch.long)
        # rows where the component is off get their first active component; only `rows` are checked
        first = guide.posterior(batch).logits.isfinite().int().argmax(-1)
        components = torch.where(usable, components, first)
        terms = elbo.terms(model, guide, batch, components=components)
        mean, cov = posterior_moments(model, batch, masks)
        expected = expected_log_lik(model, batch, present, mean, cov)
        assert se_close(terms["recon"][:, rows], expected[rows]), index


def test_sampled_kl_estimates_the_selected_components_kl():
    model, guide, batch = make(present=None)
    for index in (1, 6, 7):
        components = torch.full((B,), index, dtype=torch.long)
        terms = MoPoEELBO(kl="sampled", num_particles=4000).terms(model, guide, batch, components=components)
        mean, cov = posterior_moments(model, batch, component_masks(batch, index))
        expected = -gaussian_kl(mean, cov, *prior_moments(model, B))
        assert se_close(terms["kl"], expected), index


def test_stratified_sampling_uses_every_component_equally_in_expectation():
    """Σ over a batch of identical rows with stratified components = the exact average over components."""
    model, guide, one = make(present=None)
    batch = one[torch.zeros(14, dtype=torch.long)]  # 14 = 2 × 7 components: each component for two rows
    elbo = MoPoEELBO(sampling="stratified", num_particles=2000)
    recon = elbo.terms(model, guide, batch)["recon"]
    expected = 0.0
    for index in range(1, 8):
        mean, cov = posterior_moments(model, batch, component_masks(batch, index))
        expected = expected + expected_log_lik(model, batch, batch.subset_mask(None), mean, cov)[0] / 7
    assert se_close(recon.mean(-1, keepdim=True), expected.reshape(1))


def test_rejects_components_that_are_off():
    model, guide, batch = make()
    with pytest.raises(ValueError, match="active"):
        MoPoEELBO().terms(model, guide, batch, components=torch.full((B,), 7, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- invariances
def test_kl_and_expected_bound_invariant_to_modality_order():
    model, guide, batch = make()
    _, flipped, _ = make(names=list(reversed(NAMES)))
    elbo = MoPoEELBO(num_particles=800)
    kl = elbo.terms(model, guide, batch)["kl"]
    assert torch.allclose(kl, elbo.terms(model, flipped, reversed_batch(batch))["kl"], atol=1e-10)
    # the components are numbered by the guide's modality order, so the stratified blocks pair rows with
    # other subsets; over a batch of one row repeated twice per component the expectation is the same
    repeated = batch[torch.full((14,), 0, dtype=torch.long)]
    a = elbo.per_datapoint_bound(model, guide, repeated).mean(-1)
    b = elbo.per_datapoint_bound(model, flipped, reversed_batch(repeated)).mean(-1)
    se = math.sqrt((a.var() + b.var()) / a.shape[0])
    assert abs(a.mean() - b.mean()) <= 5 * se


def test_nan_in_missing_rows_changes_nothing():
    model, guide, batch = make()
    elbo = MoPoEELBO(sampling="random")
    pyro.set_rng_seed(4)
    clean = elbo.differentiable_loss(model, guide, batch)
    pyro.set_rng_seed(4)
    dirty = elbo.differentiable_loss(model, guide, with_nan_in_missing(batch))
    assert torch.isfinite(dirty) and torch.equal(clean, dirty)


# ---------------------------------------------------------------------------------------------- training
def test_training_smoke_loss_finite_and_decreasing():
    losses, (model, guide, objective) = train_baseline("mopoe")
    assert guide.include_empty is False and objective.sampling == "stratified" and objective.kl == "average"
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1.0, losses
