"""MMVAE's stratified importance-weighted objective against closed forms, missing modalities, DReG, training.

Closed-form set-up (float64): z ~ N(0, I_2) and x_m = a_m ⊙ z + σ_m ε for three modalities, so the
unimodal posteriors p(z | x_m) are diagonal Gaussians; the MoE guide's experts ARE those posteriors
(encoders computing them), and log p(x_S) is the Gaussian marginal of any subset S.
"""

import itertools
import math

import pyro
import pytest
import torch
from torch import nn

from pyro_mmvae.data import Modality, MultimodalBatch, MultimodalDataset
from pyro_mmvae.data.linear_gaussian import LinearGaussian
from pyro_mmvae.distributions.detach import detach_distribution
from pyro_mmvae.distributions.laplace import DiagLaplaceMixture, mixture_of_experts
from pyro_mmvae.experiments.baselines_mixture import build_mmvae, latent_sampler
from pyro_mmvae.guides import MoEGuide
from pyro_mmvae.guides.laplace_moe import LaplaceMoEGuide
from pyro_mmvae.infer.mmvae import MMVAEELBO
from pyro_mmvae.models import MultimodalVAE
from pyro_mmvae.train import fit
from tests.common import small_batch
from tests.guides.common import NAMES, assert_same_q, build_guide, guide_batch_and_subset, permuted_batch

F64 = torch.float64
# binary fractions: the model stores σ as a float32 buffer, so only these round-trip to float64 exactly
SCALES = {"a": torch.tensor([1.5, 0.5]), "b": torch.tensor([0.75, 2.0]), "c": torch.tensor([1.0, 1.25])}
SIGMA = {"a": 0.625, "b": 0.75, "c": 0.5}
MIN_SCALE = 1e-3  # MoEGuide: σ = min_scale + exp(ℓ)


class Diagonal(nn.Module):
    """The decoder z ↦ a ⊙ z (the mean of x_m)."""

    def __init__(self, a):
        super().__init__()
        self.register_buffer("a", a.to(F64))

    def forward(self, z):
        return z * self.a


class ExactExpert(nn.Module):
    """x_m ↦ [μ, ℓ] of p(z | x_m) = N(a x / (a² + σ²), σ² / (a² + σ²)) under σ = min_scale + exp(ℓ)."""

    def __init__(self, a, sigma, shift=0.0):
        super().__init__()
        self.register_buffer("a", a.to(F64))
        self.sigma, self.shift = sigma, shift

    def forward(self, x):
        denom = self.a**2 + self.sigma**2
        std = (self.sigma**2 / denom).sqrt().expand_as(x)
        return torch.cat([self.a * x / denom + self.shift, torch.log(std - MIN_SCALE)], -1)


def modalities():
    return [Modality(n, (2,), "normal", scale=SIGMA[n]) for n in SCALES]


def exact_pair(shift=0.0):
    """The diagonal linear-Gaussian model and the MoE of its exact unimodal posteriors (shifted by ``shift``)."""
    model = MultimodalVAE(modalities(), 2, decoders={n: Diagonal(a) for n, a in SCALES.items()}).double()
    experts = {n: ExactExpert(a, SIGMA[n], shift) for n, a in SCALES.items()}
    return model, MoEGuide(modalities(), 2, encoders=experts).double()


def sample_batch(n, seed=0, present=None):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    data = {m: z * a.to(F64) + SIGMA[m] * torch.randn(n, 2, generator=g, dtype=F64) for m, a in SCALES.items()}
    return MultimodalBatch(data, present or {})


def log_marginal(batch, names):
    """log p(x_names) per row, ``(B,)``."""
    w = torch.cat([torch.diag(SCALES[n].to(F64)) for n in names])
    var = torch.cat([torch.full((2,), SIGMA[n] ** 2, dtype=F64) for n in names])
    lg = LinearGaussian(w, torch.zeros(len(w), dtype=F64), var)
    return lg.log_likelihood(torch.cat([batch.data[n] for n in names], -1))


def bound(objective, model, guide, batch, seed=0):
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return objective.per_datapoint_bound(model, guide, batch, weighted=False)


# ---------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("bound_kind", ["stratified", "pooled"])
@pytest.mark.parametrize("dreg", [True, False], ids=["dreg", "iwae"])
def test_single_observed_modality_gives_its_exact_log_likelihood(bound_kind, dreg):
    """A row observing only m: q(z | x_m) is the exact posterior, so the bound is log p(x_m) for every draw."""
    present = {n: torch.tensor([n == "a", n == "b", n == "c", n == "a"]) for n in SCALES}
    batch = sample_batch(4, present=present)
    model, guide = exact_pair()
    got = bound(MMVAEELBO(5, dreg=dreg, bound=bound_kind), model, guide, batch)
    expected = torch.stack([log_marginal(batch, [n])[i] for i, n in enumerate(["a", "b", "c", "a"])])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_pooled_bound_converges_to_the_log_likelihood_of_the_observed_modalities():
    """Rows with two or three observed modalities: the pooled bound rises to log p(x_S) as K grows."""
    rows = 6
    present = {"a": torch.ones(rows, dtype=torch.bool), "b": torch.ones(rows, dtype=torch.bool)}
    present["c"] = torch.tensor([True, False] * 3)
    batch = sample_batch(rows, seed=3, present=present)
    exact = torch.where(present["c"], log_marginal(batch, ["a", "b", "c"]), log_marginal(batch, ["a", "b"]))
    model, guide = exact_pair()
    gaps = []
    for k in (1, 16, 2048):
        reps = [bound(MMVAEELBO(k, bound="pooled"), model, guide, batch, seed=s) for s in range(4)]
        gaps.append((exact - torch.stack(reps).mean(0)).mean().item())
    assert gaps[0] > gaps[1] > 0
    assert abs(gaps[2]) < 0.02 * gaps[0] + 5e-3


def stratified_limit(batch, names, draws=200_000, seed=0):
    """(1/|M|) Σ_m log E_{q(z|x_m)}[p(X, z) / q(z | X)], estimated independently of the objective (row 0)."""
    g = torch.Generator().manual_seed(seed)
    experts = {}
    for n in names:
        a, s2, x = SCALES[n].to(F64), SIGMA[n] ** 2, batch.data[n][0]
        experts[n] = torch.distributions.Normal(a * x / (a**2 + s2), (s2 / (a**2 + s2)).sqrt())
    total = 0.0
    for n in names:
        z = experts[n].mean + experts[n].stddev * torch.randn(draws, 2, generator=g, dtype=F64)
        log_q = torch.logsumexp(torch.stack([experts[m].log_prob(z).sum(-1) for m in names]), 0) - math.log(len(names))
        log_joint = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        for m in names:
            mean = z * SCALES[m].to(F64)
            log_joint = log_joint + torch.distributions.Normal(mean, SIGMA[m]).log_prob(batch.data[m][0]).sum(-1)
        total += (torch.logsumexp(log_joint - log_q, 0) - math.log(draws)).item()
    return total / len(names)


def test_stratified_bound_converges_to_its_own_limit_below_the_log_likelihood():
    """As K → ∞ the paper's stratified bound tends to (1/|M|) Σ_m log E_{q_m}[p(X,z)/q(z|X)] — by Jensen
    below log p(X) — not to log p(X); the pooled bound tends to log p(X). One data point whose three
    modalities disagree (generated from three different z), so that the Jensen gap is visible."""
    zs = {"a": (1.5, 1.0), "b": (-1.0, 0.0), "c": (0.5, -1.0)}
    batch = MultimodalBatch({n: (torch.tensor(z, dtype=F64) * SCALES[n].to(F64)).unsqueeze(0) for n, z in zs.items()})
    model, guide = exact_pair()
    names = list(SCALES)
    limit, exact = stratified_limit(batch, names), log_marginal(batch, names)[0].item()
    k = 2**13
    stratified = (
        sum(bound(MMVAEELBO(k, bound="stratified"), model, guide, batch, seed=s)[0].item() for s in range(3)) / 3
    )
    pooled = sum(bound(MMVAEELBO(k, bound="pooled"), model, guide, batch, seed=s)[0].item() for s in range(3)) / 3
    # the Jensen gap is ≈ 0.094 here; a mean of 3 estimates at this K deviates by ≤ 0.025 (30 seeds measured)
    assert exact - limit > 0.06
    assert abs(stratified - limit) < 0.035 and exact - stratified > 0.055
    assert abs(pooled - exact) < 0.035


# ---------------------------------------------------------------------------------------------- missing modalities
def learned_pair(family, seed=0):
    torch.manual_seed(seed)
    mods = [Modality("a", (3,), "normal", scale=0.5), Modality("b", (2,), "laplace", scale=0.75)]
    model = MultimodalVAE(mods, 2, hidden=(8,))
    guide = LaplaceMoEGuide(mods, 2, hidden=(8,), family=family)
    return model, guide


@pytest.mark.parametrize("family", ["laplace", "normal"])
def test_nan_in_missing_rows_changes_neither_the_bound_nor_the_gradients(family):
    g = torch.Generator().manual_seed(0)
    data = {"a": torch.randn(5, 3, generator=g), "b": torch.randn(5, 2, generator=g)}
    present = {"a": torch.tensor([1, 1, 0, 1, 0]).bool(), "b": torch.tensor([1, 0, 1, 1, 1]).bool()}
    poisoned = {n: torch.where(present[n].unsqueeze(-1), x, torch.full_like(x, math.nan)) for n, x in data.items()}
    results = []
    for values in (data, poisoned):
        model, guide = learned_pair(family)
        pyro.set_rng_seed(1)
        per_row = MMVAEELBO(4, bound="stratified").per_datapoint_bound(model, guide, MultimodalBatch(values, present))
        (-per_row.mean()).backward()
        grads = [p.grad.clone() for p in (*model.parameters(), *guide.parameters()) if p.grad is not None]
        results.append((per_row.detach(), grads))
    assert torch.isfinite(results[0][0]).all()
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reused_encodings_run_each_encoder_once_and_change_nothing(monkeypatch):
    """MMVAE traces the guide 2M times per loss; with the guide's reuse_encodings each encoder runs once."""
    model, guide = learned_pair("laplace")
    g = torch.Generator().manual_seed(0)
    present = {"a": torch.tensor([1, 1, 0, 1]).bool(), "b": torch.tensor([1, 0, 1, 1]).bool()}
    batch = MultimodalBatch({"a": torch.randn(4, 3, generator=g), "b": torch.randn(4, 2, generator=g)}, present)
    calls = {n: 0 for n in guide.names}
    for n, enc in guide.encoders.encoders.items():
        enc.register_forward_hook(lambda *args, n=n: calls.__setitem__(n, calls[n] + 1))
    objective = MMVAEELBO(3)
    pyro.set_rng_seed(2)
    reused = objective.per_datapoint_bound(model, guide, batch)
    assert calls == {"a": 1, "b": 1}
    monkeypatch.setattr(guide, "reuse_encodings", None)
    pyro.set_rng_seed(2)
    plain = objective.per_datapoint_bound(model, guide, batch)
    assert calls == {"a": 1 + 4, "b": 1 + 4}  # 2 strata × (draw + mixture) guide traces
    torch.testing.assert_close(reused, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", ["laplace", "normal"])
def test_laplace_moe_guide_is_invariant_and_ignores_unobserved_modalities(family):
    """The guide's contract, as for the library's aggregation guides: permuting the modalities (weights
    matched by name) changes nothing, and a missing modality equals one left out of the subset or the guide."""
    builders = {"moe": lambda mods: LaplaceMoEGuide(mods, 3, hidden=(8,), family=family)}
    guide, batch, subset = guide_batch_and_subset(builders, "moe")
    q = guide.posterior(batch, subset)
    z = torch.cat([q.sample((3,)), torch.randn(2, 8, 3)])
    for perm in itertools.permutations(NAMES):
        other = build_guide(builders, "moe", list(perm), like=guide)
        assert_same_q(other.posterior(permuted_batch(batch, perm), subset), q, z)
    batch = small_batch(6)
    small = build_guide(builders, "moe", ["a", "c"], like=guide)
    assert_same_q(guide.posterior(batch.with_missing(["b"])), guide.posterior(batch, ["a", "c"]))
    assert_same_q(guide.posterior(batch.with_missing(["b"])), small.posterior(batch.select(["a", "c"])))


# ---------------------------------------------------------------------------------------------- DReG
class RowParams(nn.Module):
    """An "encoder" returning free parameters per row ``(R, 2D)``: each row is an independent replicate."""

    def __init__(self, params):
        super().__init__()
        self.params = nn.Parameter(params.clone())

    def forward(self, x):
        return self.params


def replicate_gradients(bound_kind, dreg, rows=10_000, k=4, seed=0):
    """Per-replicate encoder gradients ``(rows, 8)`` of the two-modality MMVAE bound, away from the optimum."""
    names = ["a", "b"]
    mods = [m for m in modalities() if m.name in names]
    model = MultimodalVAE(mods, 2, decoders={n: Diagonal(SCALES[n]) for n in names}).double()
    x = {"a": torch.tensor([1.0, -0.5], dtype=F64), "b": torch.tensor([0.2, 1.5], dtype=F64)}
    encoders = {}
    for n in names:
        a, s2 = SCALES[n].to(F64), SIGMA[n] ** 2
        mean, std = a * x[n] / (a**2 + s2), (s2 / (a**2 + s2)).sqrt()
        encoders[n] = RowParams(torch.cat([mean + 1.5, torch.log(0.8 * std - MIN_SCALE)]).expand(rows, 4))
    guide = MoEGuide(mods, 2, encoders=encoders).double()
    batch = MultimodalBatch({n: x[n].expand(rows, 2).clone() for n in names})
    pyro.set_rng_seed(seed)
    MMVAEELBO(k, dreg=dreg, bound=bound_kind).differentiable_loss(model, guide, batch).backward()
    return -rows * torch.cat([guide.encoders.encoders[n].params.grad for n in names], -1)


def z_scores(a, b):
    return (a.mean(0) - b.mean(0)).abs() / (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()


def test_pooled_dreg_agrees_with_iwae_and_stratified_dreg_does_not():
    """The authors' DReG on the stratified bound weighs each particle by the mixture it was not drawn from:
    its expected encoder gradient differs from the IWAE one (the module docstring's caveat). On the pooled
    bound no difference is detectable at 10,000 replicates (nor at 40,000, measured once)."""
    pooled = z_scores(replicate_gradients("pooled", False, seed=1), replicate_gradients("pooled", True, seed=2))
    stratified = z_scores(
        replicate_gradients("stratified", False, seed=3), replicate_gradients("stratified", True, seed=4)
    )
    assert pooled.max() < 4.5
    assert stratified.max() > 5.0  # 6.6-8.8 over four seed pairs


# ---------------------------------------------------------------------------------------------- Laplace mixture
def test_laplace_mixture_density_and_pathwise_gradients():
    locs = torch.tensor([[-1.0, 0.5], [2.0, -0.5]], dtype=F64, requires_grad=True)
    scales = torch.tensor([[0.7, 1.2], [0.4, 0.9]], dtype=F64, requires_grad=True)
    logits = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    q = DiagLaplaceMixture(locs, scales, logits)
    value = torch.tensor([[0.1, 0.2], [1.5, -1.0]], dtype=F64)
    comps = torch.distributions.Laplace(locs, scales).log_prob(value.unsqueeze(-2)).sum(-1)
    torch.testing.assert_close(q.log_prob(value), torch.logsumexp(torch.log_softmax(logits, 0) + comps, -1))
    # E[Σ_d z_d²] = Σ_k w_k Σ_d (μ_kd² + 2 b_kd²): its exact gradient against the pathwise estimate
    torch.manual_seed(0)
    n = 200_000
    z = q.rsample((n,))
    per_draw = (z**2).sum(-1)
    estimate = torch.autograd.grad(per_draw.mean(), (locs, scales, logits))
    w = torch.softmax(logits, 0)
    exact = torch.autograd.grad((w * (locs**2 + 2 * scales**2).sum(-1)).sum(), (locs, scales, logits))
    for e, x in zip(estimate, exact):
        # the per-draw gradient has a standard deviation of a few units: 5 / sqrt(n) ≈ 0.011
        torch.testing.assert_close(e, x, atol=0.04, rtol=0.0)
    assert isinstance(detach_distribution(q.expand((3, 1))), DiagLaplaceMixture)
    assert q.expand((3,)).sample((4,)).shape == (4, 3, 2)


def test_laplace_moe_of_an_empty_subset_is_the_standard_laplace():
    locs, scales = torch.randn(2, 3, 4), torch.rand(2, 3, 4) + 0.5
    mask = torch.tensor([[True, False, True], [False, False, False]])
    q = mixture_of_experts("laplace", locs, scales, mask)
    value = torch.randn(2, 4)
    standard = torch.distributions.Laplace(0.0, 1.0).log_prob(value[1]).sum()
    torch.testing.assert_close(q.log_prob(value)[1], standard)
    on = torch.distributions.Laplace(locs[0, [0, 2]], scales[0, [0, 2]]).log_prob(value[0]).sum(-1)
    torch.testing.assert_close(q.log_prob(value)[0], torch.logsumexp(on, 0) - math.log(2))


# ---------------------------------------------------------------------------------------------- builder, training
TOY = [Modality("a", (4,), "normal", scale=0.3), Modality("b", (3,), "normal", scale=0.3)]


def toy_like_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    wa, wb = torch.randn(2, 4, generator=g), torch.randn(2, 3, generator=g)
    data = {"a": torch.tanh(z @ wa) + 0.1 * torch.randn(n, 4, generator=g), "b": z @ wb}
    return MultimodalDataset(data, modalities=TOY)


def test_mmvae_trains_on_toy_like_data():
    torch.manual_seed(0)
    model, guide, objective = build_mmvae("toy", TOY, 2, num_particles=4)  # Laplace, DReG, stratified
    result = fit(model, guide, toy_like_data(), objective, epochs=5, batch_size=32, lr=1e-3, progress=False)
    losses = result.train_loss
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0]


def test_builder_defaults_and_latent_sampler_shapes():
    model, guide, objective = build_mmvae("toy", TOY, 3)
    assert (objective.num_particles, objective.dreg, objective.bound) == (10, True, "stratified")
    assert guide.family == "laplace" and model.prior_dist().event_shape == (3,)
    batch = MultimodalBatch({"a": torch.randn(5, 4), "b": torch.randn(5, 3)})
    sampler = latent_sampler("mmvae", model, guide)
    assert sampler(batch, ["a"], 3).shape == (3, 5, 3)
    assert sampler(batch, ["a", "b"], 1).shape == (1, 5, 3)
    with pytest.raises(ValueError, match="latent size"):
        build_mmvae("toy", TOY)
