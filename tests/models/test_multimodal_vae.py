import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_mmvae.distributions import GaussianMixturePrior
from pyro_mmvae.models import MultimodalVAE
from tests.common import small_batch, small_modalities


def _trace(model, batch):
    tr = poutine.trace(model).get_trace(batch)
    tr.compute_log_prob()
    return tr


def test_sites_follow_the_convention():
    model = MultimodalVAE(small_modalities(), 3, hidden=(8,))
    tr = _trace(model, small_batch(4))
    assert tr.nodes["z"]["value"].shape == (4, 3)
    for name in "abc":
        site = tr.nodes[f"x_{name}"]
        assert site["is_observed"] and site["log_prob"].shape == (4,)
    assert tr.nodes["x_c"]["fn"].event_shape == ()
    assert tr.nodes["x_b"]["fn"].event_shape == (1, 4, 4)


def test_missing_rows_contribute_nothing():
    model = MultimodalVAE(small_modalities(), 3, hidden=(8,))
    present = {"a": torch.tensor([True, False, True, False])}
    tr = _trace(model, small_batch(4, present=present))
    lp = tr.nodes["x_a"]["log_prob"]
    assert (lp[[1, 3]] == 0).all() and (lp[[0, 2]] != 0).all()


def test_beta_scales_the_latent_site_only():
    model = MultimodalVAE(small_modalities(), 3, hidden=(8,))
    batch = small_batch(4)
    tr = poutine.trace(model).get_trace(batch, beta=0.25)
    assert tr.nodes["z"]["scale"] == 0.25 and tr.nodes["x_a"]["scale"] == 1.0


def test_unknown_modality_is_named():
    model = MultimodalVAE(small_modalities()[:2], 3, hidden=(8,))
    with pytest.raises(KeyError, match="'c'"):
        model(small_batch(2))


def test_decoders_broadcast_over_particles():
    model = MultimodalVAE(small_modalities(), 3, hidden=(8,))
    z = torch.randn(7, 4, 3)
    rec = model.reconstruct(z)
    assert rec["a"].shape == (7, 4, 5) and rec["b"].shape == (7, 4, 1, 4, 4) and rec["c"].shape == (7, 4)
    assert model.likelihood_dist("c", z).batch_shape == (7, 4)


def test_learned_scale_is_a_parameter():
    from pyro_mmvae.data import Modality

    m = MultimodalVAE([Modality("v", (3,), "laplace", scale=0.3, learn_scale=True)], 2, hidden=(8,))
    names = [n for n, _ in m.named_parameters()]
    assert "likelihoods.v.raw_scale" in names
    assert torch.allclose(m.likelihoods["v"].scale(), torch.full((3,), 0.3), atol=1e-5)


def test_gmm_prior_density():
    prior = GaussianMixturePrior(2, 3)
    z = torch.randn(5, 2)
    comps = dist.Normal(prior.locs, prior.scales()).to_event(1)
    expected = torch.logsumexp(comps.log_prob(z.unsqueeze(-2)) + torch.log_softmax(prior.logits, -1), -1)
    assert torch.allclose(prior().log_prob(z), expected, atol=1e-6)
    model = MultimodalVAE(small_modalities(), 2, prior="gmm", num_components=3, hidden=(8,))
    assert model.sample_prior(10).shape == (10, 2)
    assert any("prior.locs" == n for n, _ in model.named_parameters())


def test_prior_sample_statistics():
    pyro.set_rng_seed(1)
    model = MultimodalVAE(small_modalities(), 2, hidden=(8,))
    z = model.sample_prior(20000)
    assert z.mean(0).abs().max() < 5 / math.sqrt(20000) * 1.5 * 3
    assert (z.var(0) - 1).abs().max() < 0.05
