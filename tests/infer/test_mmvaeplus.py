"""MMVAE+'s objective, model and guide: closed forms, auxiliary priors, missing modalities, training, sampling.

Closed-form set-up (float64, Gaussian family): z ∈ R (shared), w_n ∈ R² (private), x_n ∈ R³ with
x_n = W_n z + V_n w_n + σ_n ε, where the columns of [W_n V_n] are orthogonal: the unimodal posterior
p(z, w_n | x_n) then factorises into diagonal Gaussians, which the guide's experts compute exactly.
"""

import itertools
import math

import pyro
import pytest
import torch
from torch import nn

from pyro_mmvae.data import Modality, MultimodalBatch, MultimodalDataset
from pyro_mmvae.data.linear_gaussian import LinearGaussian
from pyro_mmvae.experiments.baselines_mixture import build_mmvaeplus, conditional_generator, latent_sampler
from pyro_mmvae.guides.mmvaeplus import MMVAEPlusGuide
from pyro_mmvae.infer.conditional import conditional_decoder
from pyro_mmvae.infer.mmvaeplus import MMVAEPlusELBO
from pyro_mmvae.models.mmvaeplus import MMVAEPlus
from pyro_mmvae.train import fit
from tests.guides.common import NAMES, assert_same_q, build_guide, guide_batch_and_subset, permuted_batch

F64 = torch.float64
MIN_SCALE = 1e-3
SIGMA = {"a": 0.5, "b": 0.75}  # binary fractions: the likelihood keeps σ in a float32 buffer
# columns: W_n (shared) then V_n (private); mutually orthogonal
LOADINGS = {
    "a": torch.tensor([[1.0, 0.5, 0.0], [1.0, -0.5, 0.0], [0.0, 0.0, 0.75]], dtype=F64),
    "b": torch.tensor([[0.5, 1.0, 0.0], [0.5, -1.0, 0.0], [0.0, 0.0, 1.5]], dtype=F64),
}


class Linear(nn.Module):
    """[z, w] ↦ [W V] [z; w] (the mean of x_n), broadcasting over leading dimensions."""

    def __init__(self, loadings):
        super().__init__()
        self.register_buffer("loadings", loadings)

    def forward(self, u):
        return u @ self.loadings.T


class ExactMarginal(nn.Module):
    """x_n ↦ [μ, ℓ] of the exact posterior of the latents ``cols`` (columns of [W V]) given x_n alone."""

    def __init__(self, loadings, sigma, cols):
        super().__init__()
        self.register_buffer("w", loadings[:, cols])
        self.sigma = sigma

    def forward(self, x):
        precision = 1 + (self.w**2).sum(0) / self.sigma**2  # orthogonal columns: a diagonal posterior
        mean = (x @ self.w) / self.sigma**2 / precision
        return torch.cat([mean, torch.log(precision.rsqrt() - MIN_SCALE).expand_as(mean)], -1)


def modalities():
    return [Modality(n, (3,), "normal", scale=s) for n, s in SIGMA.items()]


def exact_pair():
    """The linear private-latent model (Gaussian family) and the guide of its exact unimodal posteriors."""
    model = MMVAEPlus(modalities(), 1, 2, "normal", decoders={n: Linear(w) for n, w in LOADINGS.items()}).double()
    shared = {n: ExactMarginal(w, SIGMA[n], [0]) for n, w in LOADINGS.items()}
    private = {n: ExactMarginal(w, SIGMA[n], [1, 2]) for n, w in LOADINGS.items()}
    guide = MMVAEPlusGuide(
        modalities(),
        1,
        2,
        shared_encoders=shared,
        private_encoders=private,
        family="normal",
        scale="exp",
        min_scale=MIN_SCALE,
    ).double()
    return model, guide


def joint_gaussian() -> LinearGaussian:
    """x = [x_a; x_b] as a linear-Gaussian model of the stacked latents (z, w_a, w_b)."""
    w = torch.zeros(6, 5, dtype=F64)
    w[:3, :3], w[3:, [0, 3, 4]] = LOADINGS["a"], LOADINGS["b"]
    var = torch.cat([torch.full((3,), SIGMA[n] ** 2, dtype=F64) for n in SIGMA])
    return LinearGaussian(w, torch.zeros(6, dtype=F64), var)


def sample_batch(n, seed=0, present=None):
    g = torch.Generator().manual_seed(seed)
    lg = joint_gaussian()
    x = torch.randn(n, 5, generator=g, dtype=F64) @ lg.W.T + lg.noise_var.sqrt() * torch.randn(
        n, 6, generator=g, dtype=F64
    )
    return MultimodalBatch({"a": x[:, :3], "b": x[:, 3:]}, present or {})


def log_marginal(batch, names):
    dims = {"a": [0, 1, 2], "b": [3, 4, 5]}
    x = torch.cat([batch.data["a"], batch.data["b"]], -1)
    return joint_gaussian().log_likelihood(x, [d for n in names for d in dims[n]])


def bound(objective, model, guide, batch, seed=0):
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return objective.per_datapoint_bound(model, guide, batch, weighted=False)


# ---------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("bound_kind", ["stratified", "pooled"])
@pytest.mark.parametrize("dreg", [True, False], ids=["dreg", "iwae"])
def test_single_observed_modality_gives_its_exact_log_likelihood(bound_kind, dreg):
    """Rows observing one modality: exact proposal, no cross-modal term, so the bound is log p(x_n) exactly."""
    present = {"a": torch.tensor([True, False, True]), "b": torch.tensor([False, True, False])}
    batch = sample_batch(3, present=present)
    model, guide = exact_pair()
    with torch.no_grad():
        model.auxiliary["b"].raw_scale.copy_(torch.tensor([2.0, -2.0]))  # r_b ≠ p(w_b): must not matter here
    got = bound(MMVAEPlusELBO(6, dreg=dreg, bound=bound_kind), model, guide, batch)
    expected = torch.stack([log_marginal(batch, [n])[i] for i, n in enumerate("aba")])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_pooled_bound_converges_to_the_joint_log_likelihood_while_r_equals_the_prior():
    """Both modalities observed, r_n = p(w_n) (initialisation): the pooled bound rises to log p(X)."""
    batch = sample_batch(4, seed=2)
    exact = log_marginal(batch, ["a", "b"])
    model, guide = exact_pair()
    gaps = []
    for k in (1, 32, 4096):
        reps = [bound(MMVAEPlusELBO(k, bound="pooled"), model, guide, batch, seed=s) for s in range(3)]
        gaps.append((exact - torch.stack(reps).mean(0)).mean().item())
    assert gaps[0] > gaps[1] > 0
    assert abs(gaps[2]) < 0.03 * gaps[0] + 0.01
    # Cross-modal terms decode with w̃ ~ r_n and carry no density ratio: with r_n ≠ p(w_n) the limit moves
    # away from log p(X), and the objective is no longer a lower bound (it exceeds log p(X) in some rows).
    with torch.no_grad():
        for aux in model.auxiliary.values():
            aux.raw_scale.copy_(torch.tensor([2.0, -2.0]))
    reps = [bound(MMVAEPlusELBO(4096, bound="pooled"), model, guide, batch, seed=s) for s in range(3)]
    moved = torch.stack(reps).mean(0) - exact  # the spread of one estimate at this K is ≈ 0.03
    assert moved.abs().mean().item() > 0.2
    assert moved.max().item() > 0.3


def test_auxiliary_priors_learn_from_cross_modal_reconstructions_only():
    model, guide = exact_pair()
    single = {"a": torch.tensor([True, True, False]), "b": torch.tensor([False, False, True])}
    MMVAEPlusELBO(4).differentiable_loss(model, guide, sample_batch(3, present=single)).backward()
    assert all(p.raw_scale.grad is None or p.raw_scale.grad.abs().max() == 0 for p in model.auxiliary.values())
    MMVAEPlusELBO(4).differentiable_loss(model, guide, sample_batch(3)).backward()
    assert all(p.raw_scale.grad.abs().max() > 0 for p in model.auxiliary.values())


# ---------------------------------------------------------------------------------------------- missing modalities
TOY = [Modality("a", (4,), "normal", scale=0.3), Modality("b", (3,), "laplace", scale=0.3)]


def learned_triple(seed=0, **options):
    torch.manual_seed(seed)
    return build_mmvaeplus("toy", TOY, 2, 2, **options)


@pytest.mark.parametrize("family", ["laplace", "normal"])
def test_nan_in_missing_rows_changes_neither_the_bound_nor_the_gradients(family):
    g = torch.Generator().manual_seed(0)
    data = {"a": torch.randn(5, 4, generator=g), "b": torch.randn(5, 3, generator=g)}
    present = {"a": torch.tensor([1, 1, 0, 1, 0]).bool(), "b": torch.tensor([1, 0, 1, 1, 1]).bool()}
    poisoned = {n: torch.where(present[n].unsqueeze(-1), x, torch.full_like(x, math.nan)) for n, x in data.items()}
    results = []
    for values in (data, poisoned):
        model, guide, objective = learned_triple(family=family, num_particles=3)
        pyro.set_rng_seed(1)
        per_row = objective.per_datapoint_bound(model, guide, MultimodalBatch(values, present))
        (-per_row.mean()).backward()
        grads = [p.grad.clone() for p in (*model.parameters(), *guide.parameters()) if p.grad is not None]
        results.append((per_row.detach(), grads))
    assert torch.isfinite(results[0][0]).all()
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    assert len(results[0][1]) == len(results[1][1]) > 0
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- training, sampling
def toy_like_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    wa, wb = torch.randn(2, 4, generator=g), torch.randn(2, 3, generator=g)
    data = {"a": torch.tanh(z @ wa) + 0.1 * torch.randn(n, 4, generator=g), "b": z @ wb}
    return MultimodalDataset(data, modalities=TOY)


def test_mmvaeplus_trains_on_toy_like_data():
    model, guide, objective = learned_triple(num_particles=4)  # Laplace, DReG, stratified
    result = fit(model, guide, toy_like_data(), objective, epochs=5, batch_size=32, lr=1e-3, progress=False)
    losses = result.train_loss
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0]


def test_latent_sampler_reconstruct_and_generators_shapes():
    model, guide, objective = learned_triple()
    assert (objective.num_particles, objective.dreg, objective.bound) == (10, True, "stratified")
    batch = MultimodalBatch({"a": torch.randn(5, 4), "b": torch.randn(5, 3)})
    sampler = latent_sampler("mmvaeplus", model, guide)
    z = sampler(batch, ["a"], 3)
    assert z.shape == (3, 5, 2)
    out = model.reconstruct(z, ["b"])  # w_b drawn from p(w_b)
    assert out["b"].shape == (3, 5, 3)
    assert model.reconstruct(z, ["a"], private="auxiliary")["a"].shape == (3, 5, 4)
    w = {"a": torch.zeros(3, 5, 2)}
    torch.testing.assert_close(model.reconstruct(z, ["a"], w)["a"], model.reconstruct(z, w, ["a"])["a"])
    generated = conditional_decoder(model, sampler)(batch, ["a"], ["b"])
    assert generated["b"].shape == (5, 3)
    both = conditional_generator(model, guide)(batch, ["a"], ["a", "b"])
    assert both["a"].shape == (5, 4) and both["b"].shape == (5, 3)
    joint = model.sample_joint(7)
    assert joint["z"].shape == (7, 2) and joint["w_b"].shape == (7, 2) and joint["b"].shape == (7, 3)


def test_private_posterior_outside_the_subset_is_the_prior():
    model, guide, _ = learned_triple()
    batch = MultimodalBatch({"a": torch.randn(4, 4), "b": torch.randn(4, 3)})
    z = guide.posterior(batch, ["a"]).sample((2,))
    private = guide.private_posterior(batch, ["a"], z)
    assert private["b"].batch_shape == (2, 4) and private["b"].event_shape == (2,)
    value = torch.randn(2, 4, 2)
    standard = torch.distributions.Laplace(0.0, 1.0).log_prob(value).sum(-1)
    torch.testing.assert_close(private["b"].log_prob(value), standard)
    assert not torch.allclose(private["a"].log_prob(value), standard)


def test_guide_is_invariant_for_z_and_equivariant_for_the_private_latents():
    builders = {"plus": lambda mods: MMVAEPlusGuide(mods, 3, 2, hidden=(8,))}
    guide, batch, subset = guide_batch_and_subset(builders, "plus")
    q = guide.posterior(batch, subset)
    z = q.sample((2,))
    private = guide.private_posterior(batch, subset, z)
    w = torch.randn(2, 8, 2)
    for perm in itertools.permutations(NAMES):
        other = build_guide(builders, "plus", list(perm), like=guide)
        permuted = permuted_batch(batch, perm)
        assert_same_q(other.posterior(permuted, subset), q, z)
        for name, p in other.private_posterior(permuted, subset, z).items():
            torch.testing.assert_close(p.log_prob(w), private[name].log_prob(w))
