"""MCC via CCA + Hungarian matching: the spec's sanity values and invariances."""

import math

import numpy as np
import pytest
import torch

from pyro_mmvae.data.synthetic import multimodal_linear
from pyro_mmvae.metrics.mcc import (
    correlation_matrix,
    encode_dataset_with_private,
    fit_cca,
    largest_canonical_correlation,
    latent_mcc,
    mcc,
    mean_corr_coef,
    mean_corr_coef_out_of_sample,
    randomized_dependence,
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


def test_randomized_dependence_against_known_dependences():
    rng = np.random.default_rng(3)
    n = 20_000
    x, e = rng.standard_normal((2, n))
    # a Gaussian pair: the maximal correlation is |ρ|, reached by the identity maps (4 standard errors)
    rho = 0.8
    assert randomized_dependence(x, rho * x + 0.6 * e) == pytest.approx(rho, abs=4 * (1 - rho**2) / math.sqrt(n))
    # deterministic but non-monotone: Pearson sees (almost) nothing, RDC sees the full dependence
    for y in (x**2, np.sin(3 * x)):
        assert abs(np.corrcoef(x, y)[0, 1]) < 0.1 and randomized_dependence(x, y) > 0.95
    # independent: only the finite-sample bias of the largest canonical correlation of 2 × 20 features
    assert randomized_dependence(x[:5000], e[:5000]) < 0.1
    # a function of the ranks alone: unchanged by monotone maps of either variable (same random features)
    assert randomized_dependence(np.exp(x), (x + e) ** 3, rng=5) == randomized_dependence(x, x + e, rng=5)
    g = np.random.default_rng(7)
    assert randomized_dependence(x, e, rng=g) != randomized_dependence(x, e, rng=g)  # the generator advances
    assert randomized_dependence(x, np.ones(n)) == 0.0
    with pytest.raises(ValueError, match="num_features"):
        randomized_dependence(x, e, num_features=0)
    with pytest.raises(ValueError, match="disagree"):
        randomized_dependence(x, e[:10])
    assert randomized_dependence(x[:, None], e[:, None], rng=1) == randomized_dependence(x, e, rng=1)  # (N, 1)
    with pytest.raises(ValueError, match=r"one variable.*\(100, 2\)"):  # not silently flattened
        randomized_dependence(np.zeros((100, 2)), np.zeros(200))
    with pytest.raises(ValueError, match="at least 2 rows"):
        randomized_dependence([], [])
    for scale in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="scale"):
            randomized_dependence(x, e, scale=scale)


def test_largest_canonical_correlation_is_that_of_the_spans():
    rng = np.random.default_rng(8)
    n = 20_000
    a0, a1, a2, e = rng.standard_normal((4, n))
    # y = a1 + 0.5 e: its canonical correlation with any x spanning a1 is 1/sqrt(1.25), whatever the
    # columns' scales and offsets (a basis cut relative to the largest column would drop the tiny a1)
    y = (a1 + 0.5 * e)[:, None]
    expected = 1 / math.sqrt(1.25)
    tol = 4 * (1 - expected**2) / math.sqrt(n)
    for x in (np.c_[a0, a1], np.c_[1e8 * a0, 1e-8 * a1], np.c_[a0 + 1e6, 1e-3 * a1 - 7.0], np.c_[a1, 2 * a1, a0]):
        assert largest_canonical_correlation(x, y) == pytest.approx(expected, abs=tol)
    # two blocks: the first canonical pair is the best linear combination (a1 + a2 vs its noisy copy)
    x2, y2 = np.c_[a1, a2], np.c_[a1 + a2 + e, a0]
    assert largest_canonical_correlation(x2, y2) == pytest.approx(math.sqrt(2 / 3), abs=4 / math.sqrt(n))
    assert largest_canonical_correlation(np.c_[np.full(n, 3.0), np.zeros(n)], y) == 0.0  # constant columns
    assert largest_canonical_correlation(x2, np.c_[a0]) < 4 / math.sqrt(n)  # independent
    with pytest.raises(ValueError, match="disagree"):
        largest_canonical_correlation(x2, y[:10])


def test_rdc_mcc_scores_a_nonlinear_but_invertible_latent_as_identified():
    # ẑ = z³: identified up to a monotone map; Pearson gives 3/√15, RDC (the published weak score) ≈ 1
    z = np.random.default_rng(4).standard_normal((20_000, 1))
    pearson, rdc = mcc(z, z**3), mcc(z, z**3, method="rdc", rng=0)
    assert pearson.weak_out == pytest.approx(3 / math.sqrt(15), abs=0.03)
    assert rdc.weak_out > 0.99 and rdc.weak_in > 0.99 and rdc.strong_out > 0.99
    assert mcc(z, z**3, method="rdc", rng=0) == rdc  # seeded: reproducible


def test_bad_input_raises():
    with pytest.raises(ValueError, match="disagree"):
        mcc(np.zeros((10, 2)), np.zeros((12, 2)))
    with pytest.raises(ValueError, match="NaN"):
        mcc(np.full((10, 2), np.nan), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="method"):
        correlation_matrix(np.zeros((4, 1)), np.zeros((4, 1)), method="kendall")
    with pytest.raises(ValueError, match="method"):
        mcc(np.zeros((10, 2)), np.ones((10, 2)), method="kendall")


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


class _LinearPrivateGuide(torch.nn.Module):
    """A guide with private latents that reads the TRUE latents from the batch labels (sparse Table 2 data).

    q(z′ | x) = N(A z_shared, ε²); q(z̃_s | z′, x) = N(B_s z_private_s + C_s z′, ε²) for s ∈ S, N(0, I) otherwise.
    (z′, z̃) is then an invertible linear map of the true latents (when every modality is in S).
    """

    def __init__(self, names, block, seed=0, eps=1e-6):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.names, self.eps = list(names), eps
        self.A = torch.randn(block, block, generator=g)
        self.B = {n: torch.randn(block, block, generator=g) for n in self.names}
        self.C = {n: torch.randn(block, block, generator=g) for n in self.names}

    def posterior(self, batch, subset=None):
        loc = batch.labels["z_shared"].float() @ self.A.T
        return torch.distributions.Independent(torch.distributions.Normal(loc, self.eps), 1)

    def private_posterior(self, batch, subset, z):
        inside = self.names if subset is None else list(subset)
        out = {}
        for n in self.names:
            loc = batch.labels[f"z_private_{n}"].float() @ self.B[n].T + z @ self.C[n].T
            loc, scale = (loc, self.eps) if n in inside else (torch.zeros_like(loc), 1.0)
            out[n] = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
        return out


@pytest.fixture(scope="module")
def sparse_linear():
    data = multimodal_linear(num_samples=2000, sparse=True, seed=3)
    return data, _LinearPrivateGuide(data.train.names, 5)


@pytest.mark.parametrize("sample", [True, False], ids=["sample", "mean"])
def test_private_mcc_of_an_invertible_linear_map_of_the_true_latents_is_one(sparse_linear, sample):
    data, guide = sparse_linear
    torch.manual_seed(0)
    res = latent_mcc(guide, data.train, "z", private=True, sample=sample, batch_size=300)
    assert res.weak_out == pytest.approx(1.0, abs=1e-4) and res.weak_in == pytest.approx(1.0, abs=1e-4)


def test_private_latents_are_stacked_shared_first_in_guide_order(sparse_linear):
    data, guide = sparse_linear
    z_hat = encode_dataset_with_private(guide, data.train, batch_size=300, sample=False)
    labels = data.train.full.labels
    shared = labels["z_shared"].float() @ guide.A.T
    assert z_hat.shape == (2000, 30)
    torch.testing.assert_close(z_hat[:, :5], shared)
    for j, n in enumerate(guide.names):
        want = labels[f"z_private_{n}"].float() @ guide.B[n].T + shared @ guide.C[n].T
        torch.testing.assert_close(z_hat[:, 5 * (j + 1) : 5 * (j + 2)], want, atol=1e-5, rtol=1e-5)


def test_private_blocks_outside_the_subset_carry_no_information(sparse_linear):
    # S = {m0}: z′ and z̃_m0 are recovered (10 of 30 canonical pairs ≈ 1); the other 20 blocks are prior
    # noise, whose out-of-sample canonical correlations are only the small spurious ones of a CCA fitted
    # on 1000 rows (≈ 0.06 each after matching), far from the 1 they reach with S = M.
    data, guide = sparse_linear
    torch.manual_seed(0)
    res = latent_mcc(guide, data.train, "z", subset=["m0"], private=True, batch_size=300)
    assert 10 / 30 - 0.01 < res.weak_out < 0.5


def test_private_mcc_needs_a_guide_with_private_latents():
    from tests.exact_linear import ExactGuide, LinearVAE

    data = multimodal_linear(num_samples=40, num_modalities=2, latent_dim=3, min_dim=4, max_dim=6, seed=1)
    guide = ExactGuide(LinearVAE({n: m.shape[0] for n, m in zip(data.train.names, data.modalities)}, 3, sigma=1.0))
    with pytest.raises(TypeError, match="private_posterior"):
        latent_mcc(guide, data.train, private=True)
