"""DReG (Tucker et al. 2019) on a linear-Gaussian model: z ~ N(0, I_2), x = W z + b + σ ε in R^3.

The guide gives every row of the batch its OWN parameters q_r(z) = N(μ_r, diag exp(2 s_r)), and every
row holds the same x: the gradient of the batch-mean loss with respect to (μ_r, s_r) is, times R, one
independent replicate of the encoder-gradient estimator. One backward pass gives R replicates, so
means and variances are compared with Monte Carlo standard errors.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from pyro_mmvae.data import Modality, MultimodalBatch
from pyro_mmvae.infer import BetaELBO
from pyro_mmvae.infer.dreg import dreg_log_mean_exp, log_mean_exp

D, SIGMA = 2, 0.8
W = torch.tensor([[1.0, 0.5], [0.0, 1.5], [1.0, -1.0]], dtype=torch.float64)
B0 = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
X = torch.tensor([1.2, -0.7, 0.4], dtype=torch.float64)


class LinearModel(PyroModule):
    """p(z) = N(0, I), p(x | z) = N(W z + b, σ² I) with learnable W and b (site names of the library)."""

    modalities = [Modality("x", (3,), "normal", scale=SIGMA)]

    def __init__(self):
        super().__init__()
        self.W, self.b = nn.Parameter(W.clone()), nn.Parameter(B0.clone())

    def forward(self, batch, beta=1.0):
        n = batch.batch_size
        with pyro.plate("data", n):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(n, D, dtype=torch.float64), 1.0).to_event(1))
            with poutine.mask(mask=batch.present["x"]):
                pyro.sample("x_x", dist.Normal(z @ self.W.T + self.b, SIGMA).to_event(1), obs=batch.data["x"])


class RowGuide(PyroModule):
    """q_r(z) = N(μ_r, diag exp(2 s_r)) with free parameters per row r."""

    def __init__(self, loc, log_scale):
        super().__init__()
        self.loc, self.log_scale = nn.Parameter(loc.clone()), nn.Parameter(log_scale.clone())

    def forward(self, batch, subset=None, beta=1.0):
        with pyro.plate("data", batch.batch_size), poutine.scale(scale=beta):
            return pyro.sample("z", dist.Normal(self.loc, self.log_scale.exp()).to_event(1))


def exact_posterior():
    prec = torch.eye(D, dtype=torch.float64) + W.T @ W / SIGMA**2
    cov = torch.linalg.inv(prec)
    return cov @ W.T @ (X - B0) / SIGMA**2, cov


def log_evidence() -> float:
    cov = W @ W.T + SIGMA**2 * torch.eye(3, dtype=torch.float64)
    return dist.MultivariateNormal(B0, covariance_matrix=cov).log_prob(X).item()


def setup(rows: int, loc_shift=(0.6, -0.4), scale_factor=1.3):
    """Model, a guide away from the posterior (shifted mean, wider diagonal scale) and ``rows`` copies of x."""
    mean, cov = exact_posterior()
    loc = (mean + torch.tensor(loc_shift, dtype=torch.float64)).expand(rows, D)
    log_scale = torch.log(scale_factor * cov.diagonal().sqrt()).expand(rows, D)
    batch = MultimodalBatch({"x": X.expand(rows, 3).clone()})
    return LinearModel(), RowGuide(loc, log_scale), batch


def replicate_gradients(k: int, dreg: bool, rows: int = 3000, beta: float = 1.0, seed: int = 0):
    """Per-replicate encoder gradients ``(rows, 2D)`` of the per-point bound, and the model's gradients."""
    model, guide, batch = setup(rows)
    pyro.set_rng_seed(seed)
    loss = BetaELBO(num_particles=k, iwae=True, dreg=dreg).differentiable_loss(model, guide, batch, beta=beta)
    loss.backward()
    enc = -rows * torch.cat([guide.loc.grad, guide.log_scale.grad], -1)
    return enc, (model.W.grad.clone(), model.b.grad.clone()), loss.item()


def z_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|mean(a) − mean(b)| / its standard error, per coordinate (independent replicates)."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return (a.mean(0) - b.mean(0)).abs() / se


@pytest.mark.parametrize("beta", [1.0, 0.5], ids=["beta1", "beta0.5"])
def test_dreg_encoder_gradient_agrees_with_iwae_in_expectation(beta):
    iwae, _, _ = replicate_gradients(8, dreg=False, beta=beta, seed=1)
    dreg, _, _ = replicate_gradients(8, dreg=True, beta=beta, seed=2)
    # the guide is far enough from the posterior that the expected gradient is clearly non-zero
    signal = iwae.mean(0).abs() / (iwae.var(0) / iwae.shape[0]).sqrt()
    assert signal.max() > 8
    assert z_scores(iwae, dreg).max() < 4.0  # 4 coordinates, each |z| < 4 by chance with prob. > 0.9999


def test_authors_beta_one_weights_are_biased_when_beta_differs_from_one():
    """The authors' w̃² for every β (our estimator with beta=1 on β-scaled weights) is off at β = 0.5."""
    beta, k, rows = 0.5, 8, 3000
    model, guide, batch = setup(rows)
    elbo = BetaELBO(num_particles=k, iwae=True, dreg=True)
    pyro.set_rng_seed(3)
    bound, g = elbo._bound_and_guide_trace(model, guide, batch, beta, None)
    (-dreg_log_mean_exp(bound, [g.nodes["z"]["value"]], beta=1.0).mean()).backward()
    authors = -rows * torch.cat([guide.loc.grad, guide.log_scale.grad], -1)
    iwae, _, _ = replicate_gradients(k, dreg=False, beta=beta, seed=4)
    assert z_scores(iwae, authors).max() > 6.0


def test_dreg_has_lower_encoder_variance_at_large_k():
    iwae, _, _ = replicate_gradients(64, dreg=False, rows=2000, seed=5)
    dreg, _, _ = replicate_gradients(64, dreg=True, rows=2000, seed=6)
    ratio = dreg.var(0).sum() / iwae.var(0).sum()
    assert ratio < 0.25, f"DReG / IWAE encoder-gradient variance = {ratio:.3f}"


def test_dreg_changes_neither_the_value_nor_the_model_gradient():
    """Same draws: the loss value and the model's gradient Σ_k w̃_k ∇_θ log w_k are the IWAE ones exactly."""
    _, grads_iwae, value_iwae = replicate_gradients(16, dreg=False, rows=50, seed=7)
    _, grads_dreg, value_dreg = replicate_gradients(16, dreg=True, rows=50, seed=7)
    assert math.isclose(value_iwae, value_dreg, rel_tol=1e-12)
    for a, b in zip(grads_iwae, grads_dreg):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_importance_weighted_bound_converges_to_log_evidence():
    """E[L_K] rises with K towards log p(x) (closed form), the gap shrinking like 1/K."""
    rows, exact = 4000, log_evidence()
    means, errors = [], []
    for k in (1, 4, 32, 256):
        model, guide, batch = setup(rows, loc_shift=(0.3, -0.2), scale_factor=1.2)
        pyro.set_rng_seed(10 + k)
        elbo = BetaELBO(num_particles=k, iwae=True, dreg=True)
        with torch.no_grad():
            per_row = log_mean_exp(elbo.per_datapoint_bound(model, guide, batch), 0)
        means.append(per_row.mean().item())
        errors.append(per_row.std().item() / math.sqrt(rows))
    gaps = [exact - m for m in means]
    assert all(g > -4 * e for g, e in zip(gaps, errors))  # a lower bound, within Monte Carlo error
    assert gaps[0] > gaps[1] > gaps[2] > 0.0
    assert abs(gaps[-1]) < max(4 * errors[-1], 0.01 * gaps[0])


def test_dreg_needs_the_importance_weighted_bound():
    with pytest.raises(ValueError, match="iwae=True"):
        BetaELBO(num_particles=4, dreg=True)


def test_draws_must_match_the_weights_shape():
    log_w = torch.zeros(4, 3, requires_grad=True)
    draw = torch.zeros(3, 4, 2, requires_grad=True) * 1.0
    with pytest.raises(ValueError, match="does not start with the weights' shape"):
        dreg_log_mean_exp(log_w, [draw])
