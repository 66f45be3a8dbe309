"""Rates and distortions against closed forms, with exact posteriors of linear-Gaussian models."""

import functools
import math

import pyro
import pytest
import torch

from pyro_mmvae.data import MultimodalDataset
from pyro_mmvae.infer.traces import draw_subset_terms, masked_sum
from pyro_mmvae.metrics.rates import dataset_rates_and_distortions, rates_and_distortions
from tests.exact_linear import (
    DIMS,
    expected_log_lik,
    gaussian_kl,
    log_marginal,
    make_exact,
    posterior_moments,
    prior_moments,
)

S = {
    "a": torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool),
    "b": torch.tensor([0, 0, 1, 1, 1], dtype=torch.bool),
    "c": torch.tensor([0, 1, 0, 0, 1], dtype=torch.bool),
}


make = functools.partial(make_exact, batch_size=5, seed=3)


@pytest.mark.parametrize("kind", ["shared", "private"])
def test_expected_values(kind):
    model, guide, batch = make(kind)
    n = 4000
    pyro.set_rng_seed(0)
    many = rates_and_distortions(model, guide, batch, S, num_samples=n)  # averages n draws per point
    # an independent set of per-draw values measures the Monte Carlo standard error
    d = draw_subset_terms(model, guide, batch, batch.subset_mask(S), num_particles=n)
    r = {
        "full_reconstruction": masked_sum(d.recon_M, d.present),
        "full_rate": d.log_q_M - d.log_p_M,
        "cross_prediction": masked_sum(d.recon_S, d.rest),
        "cross_rate": d.log_q_M - d.log_q_M_given_S,
    }
    masks = batch.subset_mask(S)
    rest = {k: batch.present[k] & ~masks[k] for k in DIMS}
    mean_m, cov_m = posterior_moments(model, batch, batch.subset_mask(None))
    mean_s, cov_s = posterior_moments(model, batch, masks)
    mean_0, cov_0 = prior_moments(model, 5)
    expected = {
        "full_reconstruction": expected_log_lik(model, batch, batch.subset_mask(None), mean_m, cov_m),
        "full_rate": gaussian_kl(mean_m, cov_m, mean_0, cov_0),
        "cross_prediction": expected_log_lik(model, batch, rest, mean_s, cov_s),
        "cross_rate": gaussian_kl(mean_m, cov_m, mean_s, cov_s),
    }
    for k, v in r.items():
        se = v.std(0) / math.sqrt(n)
        assert ((many[k] - expected[k]).abs() <= 5 * se + 1e-9).all(), k
    # with exact posteriors, −D_M − R_M = log p(x) for EVERY draw
    one = rates_and_distortions(model, guide, batch, S)
    log_px = log_marginal(model, batch, batch.subset_mask(None))
    assert torch.allclose(one["full_reconstruction"] - one["full_rate"], log_px, atol=1e-9)


def test_full_subset_has_zero_cross_terms_and_samplers_work():
    model, guide, batch = make("shared")
    r = rates_and_distortions(model, guide, batch, list(DIMS))
    assert torch.equal(r["cross_prediction"], torch.zeros(5, dtype=torch.float64))
    assert torch.equal(r["cross_rate"], torch.zeros(5, dtype=torch.float64))
    for sampler in ("uniform", "paper", lambda b: {"a": b.present["a"]}):
        out = rates_and_distortions(model, guide, batch, sampler)
        assert all(v.shape == (5,) and torch.isfinite(v).all() for v in out.values())
    with pytest.raises(ValueError, match="subset"):
        rates_and_distortions(model, guide, batch, None)


def test_dataset_averages():
    model, guide, batch = make("shared")
    ds = MultimodalDataset(batch.data, batch.present)
    pyro.set_rng_seed(1)
    avg = dataset_rates_and_distortions(model, guide, ds, ["a"], batch_size=2)
    assert set(avg) == {"full_reconstruction", "full_rate", "cross_prediction", "cross_rate"}
    assert all(math.isfinite(v) for v in avg.values())
    assert avg["full_rate"] > 0 and avg["cross_rate"] > 0  # KL divergences
