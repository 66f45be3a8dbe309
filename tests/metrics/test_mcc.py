"""MCC via CCA + Hungarian matching: the spec's sanity values and invariances."""

import math

import numpy as np
import pytest
import torch

from pyro_mmvae.data.synthetic import multimodal_linear
from pyro_mmvae.metrics.mcc import (
    correlation_matrix,
    fit_cca,
    latent_mcc,
    mcc,
    mean_corr_coef,
    mean_corr_coef_out_of_sample,
)

N = 20_000


@pytest.fixture(scope="module")
def dense_linear():
    """Table 2's dense linear model: true latents, exact posterior means and one posterior sample."""
    data = multimodal_linear(num_samples=N, seed=0)
    lg = data.truth["model"]
    x = torch.cat([data.train.full.data[n].double() for n in data.train.names], -1)
    mean, cov = lg.posterior(x)
    g = torch.Generator().manual_seed(0)
    sample = mean + torch.randn(mean.shape, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov[0]).T
    return data.train.full.labels["z"].double(), mean, sample, cov[0]


def test_exact_posterior_covariance_is_one_sixth(dense_linear):
    # W^T W = Σ_s W_sᵀ W_s = 5 I (orthonormal columns), σ = 1 ⇒ Cov(z | x) = (I + 5 I)⁻¹
    *_, cov = dense_linear
    assert torch.allclose(cov, torch.eye(30, dtype=torch.float64) / 6, atol=1e-10)


@pytest.mark.parametrize("n_components", [None, 1], ids=["all_components", "one_component"])
def test_sanity_values_of_the_spec(dense_linear, n_components):
    # corr(z_i, ẑ_i) = 5/6 for a posterior sample, √(5/6) for the posterior mean
    z, mean, sample, _ = dense_linear
    half = N // 2
    for latents, rho in ((sample, 5 / 6), (mean, math.sqrt(5 / 6))):
        tol = 4 * (1 - rho**2) / math.sqrt(half)  # 4 standard errors of one sample correlation
        res = mcc(z, latents, n_components=n_components)
        assert abs(res.weak_out - rho) < tol
        assert abs(res.strong_out - rho) < tol
        assert abs(res.strong_in - rho) < tol


def test_strong_mcc_is_invariant_to_permutation_and_sign_but_not_rotation(dense_linear):
    z, mean, _, _ = dense_linear
    base = mcc(z, mean)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    signs = torch.where(torch.arange(30) % 2 == 0, 1.0, -1.0).double()
    flipped = mcc(z, mean[:, perm] * signs * 3.0)
    assert flipped.strong_out == pytest.approx(base.strong_out, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    rotated = mcc(z, mean @ q)
    assert rotated.strong_out < 0.6 < rotated.weak_out  # CCA undoes the rotation, the raw matching cannot
    assert rotated.weak_out == pytest.approx(base.weak_out, abs=0.01)


def test_cca_recovers_analytic_canonical_correlations():
    # x = (a, b), y = (a + 0.5 e1, b + 2 e2) with a, b, e ~ N(0, 1) independent ⇒ ρ = 1/√1.25, 1/√5
    rng = np.random.default_rng(0)
    n = 50_000
    a, b, e1, e2 = rng.standard_normal((4, n))
    x = np.stack([a, b], 1)
    y = np.stack([a + 0.5 * e1, b + 2 * e2], 1)
    cca = fit_cca(x, y)
    want = np.array([1 / math.sqrt(1.25), 1 / math.sqrt(5)])
    se = (1 - want**2) / math.sqrt(n)
    assert (np.abs(cca.correlations - want) < 5 * se).all()
    u, v = cca.transform(x, y)
    assert np.allclose(np.corrcoef(u.T, v.T)[[0, 1], [2, 3]], cca.correlations, atol=1e-8)
    assert fit_cca(x, y, n_components=1).x_weights.shape == (2, 1)
    with pytest.raises(ValueError, match="n_components"):
        fit_cca(x, y, n_components=3)


def test_correlation_helpers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 3))
    y = np.concatenate([x[:, [2, 0]], rng.standard_normal((500, 1))], 1)
    cc = correlation_matrix(x, y)
    assert cc.shape == (3, 3) and np.allclose(cc, np.corrcoef(x.T, y.T)[:3, 3:])
    assert mean_corr_coef(x[:, :2], -x[:, [1, 0]]) == pytest.approx(1.0)
    assert mean_corr_coef_out_of_sample(x[:250], y[:250], x[250:], y[250:]) > 0.6
    assert mean_corr_coef(x, np.exp(x), method="spearman") == pytest.approx(1.0)
    const = np.concatenate([x[:, :1], np.ones((500, 1))], 1)
    assert np.isfinite(correlation_matrix(x, const)).all()


def test_bad_input_raises():
    with pytest.raises(ValueError, match="disagree"):
        mcc(np.zeros((10, 2)), np.zeros((12, 2)))
    with pytest.raises(ValueError, match="NaN"):
        mcc(np.full((10, 2), np.nan), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="method"):
        correlation_matrix(np.zeros((4, 1)), np.zeros((4, 1)), method="kendall")


def test_latent_mcc_encodes_a_dataset():
    from tests.exact_linear import ExactGuide, LinearVAE

    data = multimodal_linear(num_samples=400, num_modalities=2, latent_dim=3, min_dim=4, max_dim=6, seed=1)

    class TrueModel(LinearVAE):
        def __init__(self):
            super().__init__({n: m.shape[0] for n, m in zip(data.train.names, data.modalities)}, 3, sigma=1.0)
            for n in self.names:
                self.W[n] = torch.as_tensor(data.truth["W"][n])
                self.b[n] = torch.as_tensor(data.truth["b"][n])

    guide = ExactGuide(TrueModel())
    train = data.train
    train.full = train.full.to(dtype=torch.float64)
    res = latent_mcc(guide, train, sample=False, batch_size=128)
    assert 0.8 < res.weak_out <= 1.0
    with pytest.raises(KeyError, match="true latents"):
        latent_mcc(guide, train, latent_label="nope")
