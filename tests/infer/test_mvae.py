"""MVAE's sub-sampled objective against closed forms on a linear-Gaussian model with EXACT PoE experts.

With q(z | x_S) = p(z | x_S) (the PoE of exact experts and the prior expert) and β = 1, every ELBO_S is
log p(x_S) for every draw: the objective is Σ_S log p(x_S) with zero variance. β ≠ 1 is checked in
expectation against E_{p(z|x_S)}[log p(x_S | z)] − β KL(p(z | x_S) ‖ p(z)).
"""

import itertools
import math

import pyro
import pytest
import torch

from pyro_mmvae.infer.mvae import MVAEELBO, mvae_subsets
from tests.exact_linear import DIMS, PRESENT, expected_bound, log_marginal
from tests.infer.baselines_common import (
    DiagLinearVAE,
    exact_guide,
    reversed_batch,
    se_close,
    train_baseline,
    with_nan_in_missing,
)

B = 6
ALL_SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(DIMS, r)]


def make(present=PRESENT, seed=1):
    model = DiagLinearVAE()
    return model, exact_guide(model, "poe"), model.sample(B, seed=seed, present=present)


# ---------------------------------------------------------------------------------------------- subsets
def test_subsets_are_joint_unimodal_then_distinct_random_ones():
    names = ["a", "b", "c", "d"]
    subsets = mvae_subsets(names, 3, torch.Generator().manual_seed(0))
    assert subsets[0] == tuple(names) and subsets[1:5] == [("a",), ("b",), ("c",), ("d",)]
    random = subsets[5:]
    assert len(random) == 3 and len(set(random)) == 3 and all(2 <= len(s) <= 3 for s in random)
    assert len(mvae_subsets(names, 100)) == 1 + 4 + 10  # every subset of size 2..3, once
    assert mvae_subsets(["a", "b"], 5) == [("a", "b"), ("a",), ("b",)]  # two modalities: none to sample


# ---------------------------------------------------------------------------------------------- exact values
@pytest.mark.parametrize("present", [None, PRESENT], ids=["complete", "missing"])
def test_objective_is_sum_of_exact_subset_log_likelihoods_with_zero_variance(present):
    model, guide, batch = make(present)
    elbo = MVAEELBO(num_subsets=3, num_particles=4)  # 3 = every subset of size 2: all 7 non-empty subsets
    terms = elbo.terms(model, guide, batch)
    assert set(terms) == set(ALL_SUBSETS)
    expected_total = torch.zeros(B, dtype=torch.float64)
    for subset, value in terms.items():
        log_pxs = log_marginal(model, batch, batch.subset_mask(list(subset)))  # 0 where S ∩ M_b = ∅
        assert torch.allclose(value, log_pxs.expand(4, -1), atol=1e-7), subset
        expected_total += log_pxs
    losses = []
    for seed in (0, 1):
        pyro.set_rng_seed(seed)
        losses.append(elbo.loss(model, guide, batch))
    assert losses[0] == pytest.approx(losses[1], abs=1e-8)  # zero variance
    assert losses[0] == pytest.approx(-expected_total.mean().item(), rel=1e-8)


def test_empty_subset_rows_contribute_exactly_zero():
    model, guide, batch = make(PRESENT)
    elbo = MVAEELBO()
    value = elbo.subset_elbo(model, guide, batch, ["a"])
    missing = ~PRESENT["a"]
    assert torch.equal(value[:, missing], torch.zeros_like(value[:, missing]))
    assert bool((value[:, ~missing] != 0).all())


def test_beta_weighted_subset_elbo_matches_closed_form_in_expectation():
    model, guide, batch = make(PRESENT)
    elbo = MVAEELBO(num_particles=3000)
    for subset in (["a", "b"], ["c"], list(DIMS)):
        masks = batch.subset_mask(subset)
        value = elbo.subset_elbo(model, guide, batch, subset, beta=0.4)
        expected = expected_bound(model, batch, 0.4, masks, masks)
        nonempty = torch.stack(list(masks.values()), -1).any(-1)
        expected = torch.where(nonempty, expected, torch.zeros_like(expected))
        assert se_close(value, expected), subset


def test_default_draws_one_random_pair_for_three_modalities():
    model, guide, batch = make()
    terms = MVAEELBO(num_subsets=1).terms(model, guide, batch)
    assert len(terms) == 1 + 3 + 1
    assert sum(len(s) == 2 for s in terms) == 1


# ---------------------------------------------------------------------------------------------- invariances
def test_invariant_to_modality_order():
    model, guide, batch = make(PRESENT)
    names = list(reversed(model.names))
    flipped = exact_guide(model, "poe", names=names)
    elbo = MVAEELBO(num_subsets=3)
    assert elbo.loss(model, flipped, reversed_batch(batch)) == pytest.approx(elbo.loss(model, guide, batch), rel=1e-10)


def test_nan_in_missing_rows_changes_nothing():
    model, guide, batch = make(PRESENT)
    elbo = MVAEELBO(num_subsets=1)
    pyro.set_rng_seed(3)
    clean = elbo.differentiable_loss(model, guide, batch)
    pyro.set_rng_seed(3)
    dirty = elbo.differentiable_loss(model, guide, with_nan_in_missing(batch))
    assert torch.isfinite(dirty) and torch.equal(clean, dirty)


# ---------------------------------------------------------------------------------------------- training
def test_training_smoke_loss_finite_and_decreasing():
    losses, (model, guide, _) = train_baseline("mvae")
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1.0, losses
