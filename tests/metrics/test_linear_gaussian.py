"""Linear-Gaussian closed forms, the probabilistic-PCA MLE and the learned-decoder log-likelihood."""

import math

import pytest
import torch
from torch import nn

from pyro_mmvae.data import Modality
from pyro_mmvae.data.linear_gaussian import LinearGaussian, gaussian_log_prob, gaussian_mle, ppca_mle
from pyro_mmvae.metrics.linear_gaussian import affine_params, linear_decoder_model, relative_llh_gap, stack_modalities
from pyro_mmvae.models import MultimodalVAE
from tests.exact_linear import draw_data


def random_model(dx=6, d=2, seed=0, noise=0.5):
    g = torch.Generator().manual_seed(seed)
    return LinearGaussian(
        torch.randn(dx, d, generator=g, dtype=torch.float64), torch.randn(dx, generator=g, dtype=torch.float64), noise
    )


def test_gaussian_log_prob_matches_torch():
    lg = random_model()
    x = draw_data(lg, 7)
    want = torch.distributions.MultivariateNormal(lg.b, covariance_matrix=lg.covariance()).log_prob(x)
    assert torch.allclose(gaussian_log_prob(x, lg.b, lg.covariance()), want)
    assert torch.allclose(lg.log_likelihood(x), want)


def test_marginal_over_coordinates():
    lg = random_model()
    x = draw_data(lg, 5)
    idx = [0, 3, 4]
    cov = lg.covariance()[idx][:, idx]
    want = torch.distributions.MultivariateNormal(lg.b[idx], covariance_matrix=cov).log_prob(x[:, idx])
    assert torch.allclose(lg.log_likelihood(x, idx), want)
    mask = torch.zeros(6, dtype=torch.bool)
    mask[idx] = True
    assert torch.allclose(lg.log_likelihood(x, mask), want)
    assert torch.equal(lg.log_likelihood(x, []), torch.zeros(5, dtype=torch.float64))


def test_posterior_matches_gaussian_conditioning():
    # joint of (z, x_O) is Gaussian: z | x_O has mean C_zx C_xx⁻¹ (x_O − b_O), cov I − C_zx C_xx⁻¹ C_xz
    lg = random_model(noise=torch.linspace(0.2, 1.0, 6, dtype=torch.float64))
    x = draw_data(lg, 4)
    obs = torch.tensor([[1, 1, 0, 1, 0, 1], [0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]).bool()
    x_noisy_missing = torch.where(obs, x, torch.full_like(x, 1e6))  # unobserved entries must be ignored
    mean, cov = lg.posterior(x_noisy_missing, obs)
    for i in range(4):
        o = obs[i]
        czx = lg.W[o].T
        cxx = lg.covariance()[o][:, o]
        k = czx @ torch.linalg.inv(cxx) if o.any() else torch.zeros(2, 0, dtype=torch.float64)
        assert torch.allclose(mean[i], k @ (x[i, o] - lg.b[o]), atol=1e-10)
        assert torch.allclose(cov[i], torch.eye(2, dtype=torch.float64) - k @ czx.T, atol=1e-10)


def test_ppca_mle_beats_other_parameters_and_the_truth():
    truth = random_model(dx=8, d=3, noise=0.4)
    x = draw_data(truth, 400)
    mle = ppca_mle(x, 3)
    ll_mle = mle.log_likelihood(x).sum()
    assert mle.W.shape == (8, 3) and torch.allclose(mle.b, x.mean(0))
    assert ll_mle >= truth.log_likelihood(x).sum()
    g = torch.Generator().manual_seed(5)
    for _ in range(20):  # random perturbations of every parameter
        other = LinearGaussian(
            mle.W + 0.05 * torch.randn(8, 3, generator=g, dtype=torch.float64),
            mle.b + 0.05 * torch.randn(8, generator=g, dtype=torch.float64),
            mle.noise_var * math.exp(0.1 * torch.randn(1, generator=g).item()),
        )
        assert ll_mle >= other.log_likelihood(x).sum()


def test_ppca_eigen_solution_matches_numerical_optimum():
    truth = random_model(dx=5, d=2, noise=0.3, seed=3)
    x = draw_data(truth, 300, seed=4)
    mle = ppca_mle(x, 2)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 2, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    log_var = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b, log_var], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-12)

    def closure():
        opt.zero_grad()
        cov = W @ W.T + log_var.exp() * torch.eye(5, dtype=torch.float64)
        loss = -gaussian_log_prob(x, b, cov).mean()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    numeric = LinearGaussian(W.detach(), b.detach(), log_var.exp().detach())
    ll_num, ll_mle = numeric.log_likelihood(x).sum().item(), mle.log_likelihood(x).sum().item()
    assert ll_num <= ll_mle + 1e-9 * abs(ll_mle)  # the eigen-solution is the maximum ...
    assert math.isclose(ll_num, ll_mle, rel_tol=1e-8)  # ... which the optimiser reaches
    # the likelihood is flat near its maximum: parameters agree to the optimiser's precision
    assert torch.allclose(numeric.covariance(), mle.covariance(), atol=1e-3)
    assert math.isclose(log_var.exp().item(), mle.noise_var[0].item(), rel_tol=1e-3)


def test_ppca_with_enough_latents_is_the_full_gaussian_mle():
    x = draw_data(random_model(dx=2, d=3), 500)
    mean, cov = gaussian_mle(x)
    mle = ppca_mle(x, 3)
    assert torch.allclose(mle.covariance(), cov, atol=1e-10) and torch.allclose(mle.b, mean)
    assert torch.allclose(cov, torch.cov(x.T, correction=0))


def test_relative_gap():
    assert relative_llh_gap(-100.0, -101.0) == pytest.approx(0.01)
    assert relative_llh_gap(torch.tensor([-50.0, -50.0]), torch.tensor([-100.0])) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        relative_llh_gap(0.0, -1.0)


def test_learned_linear_decoder_model_reads_the_affine_decoders():
    mods = [Modality("u", (3,), scale=0.5), Modality("v", (1,), scale=2.0)]
    dec = {"u": nn.Linear(2, 3), "v": nn.Linear(2, 1)}
    model = MultimodalVAE(mods, 2, decoders=dec)
    lg = linear_decoder_model(model)
    assert torch.allclose(lg.W, torch.cat([dec["u"].weight, dec["v"].weight]).double(), atol=1e-6)
    assert torch.allclose(lg.b, torch.cat([dec["u"].bias, dec["v"].bias]).double(), atol=1e-6)
    assert torch.allclose(lg.noise_var, torch.tensor([0.25, 0.25, 0.25, 4.0], dtype=torch.float64))
    x = {"u": torch.randn(4, 3), "v": torch.randn(4, 1)}
    stacked = stack_modalities(x, ["u", "v"])
    assert stacked.shape == (4, 4)


def test_non_affine_decoder_or_likelihood_raises():
    mods = [Modality("u", (3,), scale=0.5)]
    with pytest.raises(ValueError, match="not affine"):
        linear_decoder_model(MultimodalVAE(mods, 2, hidden=(4,)))
    bern = [Modality("u", (3,), likelihood="bernoulli")]
    with pytest.raises(ValueError, match="Normal"):
        linear_decoder_model(MultimodalVAE(bern, 2, decoders={"u": nn.Linear(2, 3)}))
    with pytest.raises(ValueError, match="not affine"):
        affine_params(lambda z: z**2, 2)


def _private_linear_vae(d=2, dp=3, seed=0):
    from pyro_mmvae.models.private import PrivateLatentVAE

    torch.manual_seed(seed)
    mods = [Modality("u", (3,), scale=0.5), Modality("v", (2,), scale=2.0)]
    dec = {"u": nn.Linear(d + dp, 3), "v": nn.Linear(d + dp, 2)}
    return PrivateLatentVAE(mods, d, dp, decoders=dec), dec


def test_linear_decoder_model_of_a_private_latent_model_has_its_analytic_covariance():
    # x_s = A_s [z′, z̃_s] + c_s + ε_s with z′, z̃_u, z̃_v, ε independent ⇒
    # Cov(x_s, x_s) = A_s A_sᵀ + σ_s² I, Cov(x_u, x_v) = A_u′ A_v′ᵀ (shared columns only)
    d, dp = 2, 3
    model, dec = _private_linear_vae(d, dp)
    a_u, a_v = dec["u"].weight.detach().double(), dec["v"].weight.detach().double()
    cross = a_u[:, :d] @ a_v[:, :d].T
    want = torch.cat(
        [
            torch.cat([a_u @ a_u.T + 0.25 * torch.eye(3, dtype=torch.float64), cross], 1),
            torch.cat([cross.T, a_v @ a_v.T + 4.0 * torch.eye(2, dtype=torch.float64)], 1),
        ]
    )
    lg = linear_decoder_model(model)
    assert lg.W.shape == (5, d + 2 * dp)
    torch.testing.assert_close(lg.covariance(), want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lg.b, torch.cat([dec["u"].bias, dec["v"].bias]).double(), atol=1e-6, rtol=1e-6)
    # modality u loads z′ and its own private block only (layout: z′, z̃_u, z̃_v)
    assert (lg.W[:3, d + dp :] == 0).all() and (lg.W[3:, d : d + dp] == 0).all()
    # the stacked model reproduces the decoders at any (z′, z̃_u, z̃_v)
    g = torch.Generator().manual_seed(1)
    z, w = torch.randn(4, d, generator=g), {n: torch.randn(4, dp, generator=g) for n in model.names}
    full = torch.cat([z, w["u"], w["v"]], -1).double()
    decoded = torch.cat([model.decode(n, z, w[n]) for n in model.names], -1).detach().double()
    torch.testing.assert_close(full @ lg.W.T + lg.b, decoded, atol=1e-5, rtol=1e-5)
    # a subset of modalities: the latent holds z′ and the selected private blocks
    only_v = linear_decoder_model(model, names=["v"])
    assert only_v.W.shape == (2, d + dp)
    torch.testing.assert_close(only_v.covariance(), want[3:, 3:], atol=1e-6, rtol=1e-6)


def test_linear_decoder_model_of_a_private_latent_model_matches_monte_carlo_moments():
    # Independent check of the covariance by simulation: draws of (z′, z̃) through the model's decoders.
    model, _ = _private_linear_vae()
    lg = linear_decoder_model(model)
    n = 200_000
    g = torch.Generator().manual_seed(2)
    z = torch.randn(n, 2, generator=g)
    with torch.no_grad():
        x = torch.cat(
            [model.likelihood_dist(s, z, torch.randn(n, 3, generator=g)).sample() for s in model.names], -1
        ).double()
    emp = torch.cov(x.T)
    # entries of a sample covariance have standard error sqrt((Σ_ii Σ_jj + Σ_ij²) / n)
    cov = lg.covariance()
    se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((emp - cov).abs() < 5 * se).all()


def test_linear_decoder_model_rejects_non_affine_private_decoders():
    from pyro_mmvae.models.private import PrivateLatentVAE

    mods = [Modality("u", (3,), scale=0.5)]
    with pytest.raises(ValueError, match="'u'.*not affine"):
        linear_decoder_model(PrivateLatentVAE(mods, 2, 2, hidden=(4,)))
