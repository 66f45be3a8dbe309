"""BetaELBO against closed forms on a linear-Gaussian model p(z) = N(0, I), x_m = W_m z + σ ε."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_mmvae.data import Modality, MultimodalBatch
from pyro_mmvae.infer import BetaELBO
from pyro_mmvae.models import MultimodalVAE

D, SIGMA = 2, 0.7
W = {"u": torch.tensor([[1.0, 0.5], [0.0, 2.0], [1.0, -1.0]]), "v": torch.tensor([[0.3, 1.0]])}


def linear_model(batch, beta=1.0):
    """A plain Pyro function following the site convention (no PyroModule)."""
    with pyro.plate("data", batch.batch_size):
        with poutine.scale(scale=beta):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1).expand([batch.batch_size]))
        for name, w in W.items():
            with poutine.mask(mask=batch.present[name]):
                pyro.sample(f"x_{name}", dist.Normal(z @ w.T, SIGMA).to_event(1), obs=batch.data[name])


def exact_posterior(batch, names):
    prec = torch.eye(D).expand(batch.batch_size, D, D).clone()
    h = torch.zeros(batch.batch_size, D)
    for n in names:
        p = batch.present[n].float()
        prec = prec + p[:, None, None] * (W[n].T @ W[n]) / SIGMA**2
        h = h + p[:, None] * (batch.data[n] @ W[n]) / SIGMA**2
    cov = torch.linalg.inv(prec)
    return dist.MultivariateNormal((cov @ h.unsqueeze(-1)).squeeze(-1), covariance_matrix=cov)


def exact_guide(batch, subset=None, beta=1.0):
    names = list(W) if subset is None else list(subset)
    with pyro.plate("data", batch.batch_size), poutine.scale(scale=beta):
        pyro.sample("z", exact_posterior(batch, names))


def log_evidence(batch):
    total = torch.zeros(batch.batch_size)
    for n, w in W.items():
        cov = w @ w.T + SIGMA**2 * torch.eye(w.shape[0])
        lp = dist.MultivariateNormal(torch.zeros(w.shape[0]), covariance_matrix=cov).log_prob(batch.data[n])
        total = total + lp * batch.present[n]
    return total


def make_batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, D, generator=g)
    data = {n: z @ w.T + SIGMA * torch.randn(b, w.shape[0], generator=g) for n, w in W.items()}
    return MultimodalBatch(data)


def test_exact_posterior_gives_log_evidence_with_zero_variance():
    # only one modality: then log p(x) is the sum of the per-modality marginal
    batch = make_batch()
    batch = MultimodalBatch(batch.data, {"u": torch.ones(6, dtype=torch.bool), "v": torch.zeros(6, dtype=torch.bool)})
    bound = BetaELBO(num_particles=3).per_datapoint_bound(linear_model, exact_guide, batch)
    assert torch.allclose(bound, log_evidence(batch).expand(3, -1), atol=1e-4)


def test_joint_exact_posterior_bound_equals_joint_evidence():
    batch = make_batch()
    w = torch.cat([W["u"], W["v"]])
    cov = w @ w.T + SIGMA**2 * torch.eye(4)
    x = torch.cat([batch.data["u"], batch.data["v"]], -1)
    expected = dist.MultivariateNormal(torch.zeros(4), covariance_matrix=cov).log_prob(x)
    bound = BetaELBO(num_particles=2).per_datapoint_bound(linear_model, exact_guide, batch)
    assert torch.allclose(bound, expected.expand(2, -1), atol=1e-4)
    assert math.isclose(BetaELBO().loss(linear_model, exact_guide, batch), -expected.mean().item(), rel_tol=1e-5)


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_beta_bound_matches_its_expectation(beta):
    # E[bound] = E_q log p(x|z) - beta KL(q || p); with the exact q, E_q log p(x|z) = log p(x) + KL(q || p).
    batch = make_batch(4)
    q = exact_posterior(batch, list(W))
    p = dist.MultivariateNormal(torch.zeros(D), torch.eye(D))
    kl = torch.distributions.kl_divergence(q, p)
    w = torch.cat([W["u"], W["v"]])
    x = torch.cat([batch.data["u"], batch.data["v"]], -1)
    log_px = dist.MultivariateNormal(torch.zeros(4), covariance_matrix=w @ w.T + SIGMA**2 * torch.eye(4)).log_prob(x)
    expected = log_px + kl - beta * kl
    bound = BetaELBO(num_particles=20000).per_datapoint_bound(linear_model, exact_guide, batch, beta=beta)
    se = bound.std(0) / math.sqrt(bound.shape[0])
    assert ((bound.mean(0) - expected).abs() < 5 * se + 1e-6).all()


def test_reconstruction_weights_multiply_observations():
    mods = [Modality("u", (3,), scale=SIGMA), Modality("v", (1,), scale=SIGMA, weight=3.0)]
    model = MultimodalVAE(mods, D, hidden=(4,))
    batch = make_batch(4)
    pyro.set_rng_seed(3)
    weighted = BetaELBO().per_datapoint_bound(model, exact_guide, batch)
    pyro.set_rng_seed(3)
    plain = BetaELBO().per_datapoint_bound(model, exact_guide, batch, weighted=False)
    z = exact_posterior(batch, list(W))
    pyro.set_rng_seed(3)
    z = z.sample((1,))
    lp_v = model.likelihood_dist("v", z).log_prob(batch.data["v"])
    assert torch.allclose(weighted - plain, 2.0 * lp_v, atol=1e-4)


def test_stl_and_iwae_run_and_give_gradients():
    mods = [Modality("u", (3,), scale=SIGMA), Modality("v", (1,), scale=SIGMA)]
    model = MultimodalVAE(mods, D, hidden=(4,))
    from pyro_mmvae.guides import JointGuide

    guide = JointGuide(mods, D, head_dim=4, hidden=(4,), merge_hidden=(4,))
    loss = BetaELBO(num_particles=4, stl=True, iwae=True)(model, guide)(make_batch(5), beta=0.5)
    loss.backward()
    grads = [p.grad for p in list(model.parameters()) + list(guide.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_beta_must_be_positive():
    with pytest.raises(ValueError, match="beta must be > 0"):
        BetaELBO().loss(linear_model, exact_guide, make_batch(2), beta=0.0)


def test_a_plain_pyro_function_model_trains():
    """The same ELBO trains a hand-written Pyro model with a learnable decoder (site convention only)."""
    from pyro_mmvae.guides import JointGuide

    mods = [Modality("u", (3,), scale=SIGMA), Modality("v", (1,), scale=SIGMA)]
    decoders = torch.nn.ModuleDict({n: torch.nn.Linear(D, w.shape[0]) for n, w in W.items()})

    def model(batch, beta=1.0):
        with pyro.plate("data", batch.batch_size):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1).expand([batch.batch_size]))
            for name in W:
                with poutine.mask(mask=batch.present[name]):
                    pyro.sample(f"x_{name}", dist.Normal(decoders[name](z), SIGMA).to_event(1), obs=batch.data[name])

    guide = JointGuide(mods, D, head_dim=16, hidden=(16,), merge_hidden=(16,))
    params = list(decoders.parameters()) + list(guide.parameters())
    opt = torch.optim.Adam(params, 1e-2)
    batch = make_batch(256, seed=1)
    elbo = BetaELBO()
    first = elbo.loss(model, guide, batch)
    for _ in range(300):
        opt.zero_grad()
        elbo.differentiable_loss(model, guide, batch).backward()
        opt.step()
    last = sum(elbo.loss(model, guide, batch) for _ in range(10)) / 10
    best = -log_evidence_joint(batch).mean().item()
    assert last < first - 1.0 and last < best + 0.5


def log_evidence_joint(batch):
    w = torch.cat([W["u"], W["v"]])
    x = torch.cat([batch.data["u"], batch.data["v"]], -1)
    return dist.MultivariateNormal(torch.zeros(4), covariance_matrix=w @ w.T + SIGMA**2 * torch.eye(4)).log_prob(x)
