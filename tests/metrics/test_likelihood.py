"""Importance-sampled log-likelihoods against the exact marginals of linear-Gaussian models."""

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_mmvae.data import MultimodalDataset
from pyro_mmvae.metrics.likelihood import (
    conditional_log_likelihood,
    dataset_log_likelihood,
    log_likelihood,
    log_weights,
)
from tests.exact_linear import PRESENT, ExactGuide, log_marginal, make_exact

make = functools.partial(make_exact, batch_size=6, seed=2, present=PRESENT)


class WideGuide(ExactGuide):
    """The exact posterior with its covariance inflated 1.5×: a valid but imperfect proposal."""

    def posterior(self, batch, subset=None):
        q = super().posterior(batch, subset)
        return dist.MultivariateNormal(q.loc, scale_tril=math.sqrt(1.5) * q.scale_tril)


@pytest.mark.parametrize("kind", ["shared", "private"])
@pytest.mark.parametrize("subset", [None, ["a"], ["b", "c"]], ids=["joint", "a", "bc"])
def test_exact_proposal_gives_exact_marginal_with_zero_variance(kind, subset):
    model, guide, batch = make(kind)
    got = log_likelihood(model, guide, batch, subset_eval=subset, num_particles=10, chunk=3)
    want = log_marginal(model, batch, batch.subset_mask(subset))
    assert torch.allclose(got, want, atol=1e-9)
    lw = log_weights(model, guide, batch, subset, num_particles=4)
    assert torch.allclose(lw, want.expand(4, -1), atol=1e-9)  # every weight equals p(x_A)


@pytest.mark.parametrize("kind", ["shared", "private"])
def test_conditional_is_joint_minus_marginal(kind):
    model, guide, batch = make(kind)
    got = conditional_log_likelihood(model, guide, batch, ["a"], num_particles=4)
    full = log_marginal(model, batch, batch.subset_mask(None))
    assert torch.allclose(got, full - log_marginal(model, batch, batch.subset_mask(["a"])), atol=1e-9)
    # log p(x_b | x_a) with E = {b}, C = {a}
    got_b = log_likelihood(model, guide, batch, subset_eval=["b"], subset_condition=["a"], num_particles=4)
    want_b = log_marginal(model, batch, batch.subset_mask(["a", "b"])) - log_marginal(
        model, batch, batch.subset_mask(["a"])
    )
    assert torch.allclose(got_b, want_b, atol=1e-9)


def test_empty_subset_rows_are_zero():
    model, guide, batch = make()
    got = log_likelihood(model, guide, batch, subset_eval=["a"], num_particles=3)
    assert torch.equal(got[~PRESENT["a"]], torch.zeros(int((~PRESENT["a"]).sum()), dtype=got.dtype))


def test_imperfect_proposal_converges_to_the_exact_marginal():
    model, _, batch = make()
    guide, n = WideGuide(model), 8192
    pyro.set_rng_seed(0)
    got = log_likelihood(model, guide, batch, num_particles=n, chunk=1024)
    pyro.set_rng_seed(0)
    lw = torch.cat([log_weights(model, guide, batch, None, 1024) for _ in range(n // 1024)])
    assert torch.allclose(got, torch.logsumexp(lw, 0) - math.log(n), atol=1e-12)
    want = log_marginal(model, batch, batch.subset_mask(None))
    # delta method: sd(log p̂) ≈ sd(w / mean w) / √L
    w = torch.exp(lw - lw.max(0).values)
    se = (w / w.mean(0)).std(0) / math.sqrt(n)
    assert ((got - want).abs() <= 5 * se).all()
    few = torch.stack([log_likelihood(model, guide, batch, num_particles=1) for _ in range(400)])
    assert (few.mean(0) < want).all()  # one-particle estimates are biased down (Jensen)


def test_chunks_are_combined_by_one_logsumexp():
    model, _, batch = make()
    guide = WideGuide(model)
    pyro.set_rng_seed(3)
    got = log_likelihood(model, guide, batch, num_particles=12, chunk=5)
    pyro.set_rng_seed(3)
    lw = torch.cat([log_weights(model, guide, batch, None, n) for n in (5, 5, 2)])
    assert torch.allclose(got, torch.logsumexp(lw, 0) - math.log(12), atol=1e-12)


def test_dataset_log_likelihood_concatenates_batches():
    model, guide, batch = make()
    ds = MultimodalDataset(batch.data, batch.present)
    got = dataset_log_likelihood(model, guide, ds, batch_size=4, num_particles=2)
    assert got.shape == (6,)
    assert torch.allclose(got, log_marginal(model, batch, batch.subset_mask(None)), atol=1e-9)
    with pytest.raises(TypeError, match="names"):
        dataset_log_likelihood(model, guide, ds, subset_eval={"a": PRESENT["a"]})


def test_no_gradients_and_bad_arguments():
    model, guide, batch = make()
    with pytest.raises(ValueError, match="num_particles"):
        log_likelihood(model, guide, batch, num_particles=0)
    out = log_likelihood(model, guide, batch, num_particles=2)
    assert not out.requires_grad


def test_model_without_guide_site_raises():
    model, _, batch = make("private")

    def shared_guide(batch, subset=None, beta=1.0):
        with pyro.plate("data", batch.batch_size), poutine.scale(scale=beta):
            pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))

    with pytest.raises(ValueError, match="not sampled by the guide"):
        log_likelihood(model, shared_guide, batch, num_particles=2)
