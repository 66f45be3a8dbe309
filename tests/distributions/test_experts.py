import itertools
import math

import pyro
import pytest
import torch

from pyro_mmvae.distributions.detach import detach_distribution
from pyro_mmvae.distributions.experts import (
    MAX_MOPOE_MODALITIES,
    VAR_FLOOR,
    DiagNormalMixture,
    gaussian_product,
    mixture_of_experts,
    mixture_of_products,
    poe_variance,
    product_of_experts,
    subset_matrix,
)


def _experts(batch=5, m=3, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(batch, m, d, generator=g)
    variances = poe_variance(0.5 * torch.randn(batch, m, d, generator=g))
    mask = torch.rand(batch, m, generator=g) > 0.4
    mask[0] = False  # one empty row
    mask[1] = True  # one full row
    return locs, variances, mask


def _normal_logpdf(z, loc, var):
    return (-0.5 * (z - loc) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(-1)


# ------------------------------------------------------------------ product of experts
@pytest.mark.parametrize("mean", ["correct", "paper"])
def test_gaussian_product_matches_closed_form_row_by_row(mean):
    locs, variances, mask = _experts()
    loc, var = gaussian_product(locs, variances, mask, mean=mean)
    prior_var = 1.0 + VAR_FLOOR
    for b in range(locs.shape[0]):
        sel = mask[b]
        precision = 1 / prior_var + (1 / variances[b, sel]).sum(0)
        if mean == "correct":
            numerator = (locs[b, sel] / variances[b, sel]).sum(0)
        else:
            numerator = (locs[b, sel] * variances[b, sel]).sum(0)
        torch.testing.assert_close(var[b], 1 / precision)
        torch.testing.assert_close(loc[b], numerator / precision)


def test_product_of_experts_is_the_normalised_product_density():
    # The PoE density is ∝ N(z; 0, v0) Π_s N(z; μ_s, v_s): check the log-density differences on a grid.
    locs, variances, mask = _experts(batch=3, m=3, d=1, seed=1)
    q = product_of_experts(locs, variances, mask)
    z = torch.linspace(-3, 3, 7).reshape(7, 1, 1).expand(7, 3, 1)
    unnorm = _normal_logpdf(z, 0.0, torch.tensor(1.0 + VAR_FLOOR))
    for s in range(3):
        term = _normal_logpdf(z, locs[:, s], variances[:, s])
        unnorm = unnorm + torch.where(mask[:, s], term, torch.zeros_like(term))
    diff = q.log_prob(z) - unnorm  # constant in z for every row
    torch.testing.assert_close(diff, diff[:1].expand_as(diff), atol=1e-4, rtol=0)


def test_empty_subset_gives_the_prior_expert_and_nan_experts_do_not_leak():
    locs, variances, mask = _experts()
    locs[0] = float("nan")  # row 0 is empty: its experts must not matter
    variances[0] = float("inf")
    loc, var = gaussian_product(locs, variances, mask)
    torch.testing.assert_close(loc[0], torch.zeros(2))
    torch.testing.assert_close(var[0], torch.full((2,), 1.0 + VAR_FLOOR))
    assert torch.isfinite(loc).all() and torch.isfinite(var).all()


def test_gaussian_product_rejects_bad_shapes():
    locs, variances, mask = _experts()
    with pytest.raises(ValueError, match="mask"):
        gaussian_product(locs, variances, mask[:, :2])
    with pytest.raises(ValueError, match="variances"):
        gaussian_product(locs, variances[..., :1], mask)
    with pytest.raises(ValueError, match="poe mean"):
        gaussian_product(locs, variances, mask, mean="geometric")


# ------------------------------------------------------------------ mixture of diagonal Gaussians
def _mixture(batch=(4,), k=3, d=2, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    locs = 2 * torch.randn(*batch, k, d, generator=g)
    scales = 0.3 + torch.rand(*batch, k, d, generator=g)
    logits = torch.randn(*batch, k, generator=g)
    if requires_grad:
        locs, scales, logits = (t.requires_grad_() for t in (locs, scales, logits))
    return locs, scales, logits


@pytest.mark.parametrize("d", [1, 3], ids=["D1", "D3"])
def test_mixture_log_prob_matches_hand_computation(d):
    locs, scales, logits = _mixture(d=d)
    q = DiagNormalMixture(locs, scales, logits)
    z = torch.randn(5, 4, d)
    w = torch.softmax(logits, -1)
    by_hand = torch.zeros(5, 4)
    for i, b in itertools.product(range(5), range(4)):
        dens = sum(
            w[b, k] * torch.exp(_normal_logpdf(z[i, b], locs[b, k], scales[b, k] ** 2)) for k in range(locs.shape[-2])
        )
        by_hand[i, b] = torch.log(dens)
    torch.testing.assert_close(q.log_prob(z), by_hand, atol=1e-5, rtol=1e-5)
    assert q.batch_shape == (4,) and q.event_shape == (d,)


def test_mixture_samples_have_the_mixture_moments():
    locs, scales, logits = _mixture(batch=(2,), d=2)
    q = DiagNormalMixture(locs, scales, logits)
    n = 40000
    z = q.rsample((n,))
    assert z.shape == (n, 2, 2)
    se = q.variance.sqrt() / math.sqrt(n)
    assert ((z.mean(0) - q.mean).abs() < 5 * se).all()


def _per_sample_grads(d, k, n, f, seed):
    """Per-sample pathwise gradients of f(z) w.r.t. (locs, scales, logits), shapes (n, k, d)/(n, k)."""
    base = _mixture(batch=(), k=k, d=d, seed=seed)
    leaves = [t.expand(n, *t.shape).clone().requires_grad_() for t in base]
    z = DiagNormalMixture(*leaves).rsample()
    assert z.shape == (n, d)
    f(z).sum().backward()
    return base, [t.grad for t in leaves]


def _expectation_grads(base, expectation):
    leaves = [t.clone().requires_grad_() for t in base]
    expectation(*leaves).backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize(
    "d,f,expectation",
    [
        (
            1,
            lambda z: z[..., 0] ** 2 + z[..., 0],
            lambda locs, scales, logits: (
                torch.softmax(logits, -1) * (locs[:, 0] ** 2 + scales[:, 0] ** 2 + locs[:, 0])
            ).sum(),
        ),
        (
            2,
            lambda z: z[..., 0] * z[..., 1] + z[..., 1] ** 2,
            lambda locs, scales, logits: (
                torch.softmax(logits, -1) * (locs[:, 0] * locs[:, 1] + locs[:, 1] ** 2 + scales[:, 1] ** 2)
            ).sum(),
        ),
    ],
    ids=["D1", "D2-cross-term"],
)
def test_pathwise_gradients_are_unbiased(d, f, expectation):
    # E_q[∇θ f(z_θ)] = ∇θ E_q[f]: compare the Monte Carlo mean of per-sample gradients with the
    # gradient of the closed-form expectation, within 5 Monte Carlo standard errors.
    torch.manual_seed(0)
    n = 20000
    base, grads = _per_sample_grads(d, 3, n, f, seed=3)
    exact = _expectation_grads(base, expectation)
    for name, g, e in zip(("locs", "scales", "logits"), grads, exact):
        assert torch.isfinite(g).all(), name
        mean, se = g.mean(0), g.std(0) / math.sqrt(n)
        assert ((mean - e).abs() <= 5 * se + 1e-4).all(), (name, mean, e, se)
        assert e.abs().max() > 0 and g.abs().max() > 0, name


def test_rsample_value_is_the_sample_and_gradients_are_finite_with_switched_off_components():
    locs, scales, _ = _mixture(batch=(3,), d=2, requires_grad=True)
    logits = torch.tensor([[0.0, -math.inf, 0.0], [-math.inf, -math.inf, 0.0], [0.0, 0.0, 0.0]])
    q = DiagNormalMixture(locs, scales, logits)
    torch.manual_seed(1)
    z = q.rsample((50,))
    torch.manual_seed(1)
    assert torch.equal(z.detach(), q.sample((50,)))
    z.pow(2).sum().backward()
    assert torch.isfinite(locs.grad).all() and torch.isfinite(scales.grad).all()
    # Row 1 only ever draws component 2: the other components get no gradient there.
    assert (locs.grad[1, :2] == 0).all() and (locs.grad[1, 2] != 0).all()
    assert torch.isfinite(q.log_prob(z)).all()


def test_mixture_expands_under_a_particle_plate():
    q = DiagNormalMixture(*_mixture(batch=(4,), d=2))
    with pyro.plate("particles", 3, dim=-2), pyro.plate("data", 4, dim=-1):
        z = pyro.sample("z", q)
    assert z.shape == (3, 4, 2)
    e = q.expand((3, 4))
    torch.testing.assert_close(e.log_prob(z), q.log_prob(z))


def test_detached_mixture_passes_gradients_only_through_the_value():
    locs, scales, logits = _mixture(d=2, requires_grad=True)
    q = DiagNormalMixture(locs, scales, logits)
    z = q.rsample()
    qbar = detach_distribution(q)
    assert isinstance(qbar, DiagNormalMixture)
    assert not (qbar.locs.requires_grad or qbar.scales.requires_grad or qbar.logits.requires_grad)
    torch.testing.assert_close(qbar.log_prob(z), q.log_prob(z))
    params = (locs, scales, logits)
    got = torch.autograd.grad(qbar.log_prob(z).sum(), params, retain_graph=True)
    # Only the path through z: (∂ log q̄ / ∂z) · dz/dθ.
    z_leaf = z.detach().requires_grad_()
    (dz,) = torch.autograd.grad(qbar.log_prob(z_leaf).sum(), z_leaf)
    expected = torch.autograd.grad(z, params, grad_outputs=dz)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_mixture_rejects_bad_shapes():
    locs, scales, logits = _mixture()
    with pytest.raises(ValueError, match="logits"):
        DiagNormalMixture(locs, scales, logits[..., :2])
    with pytest.raises(ValueError, match="scales"):
        DiagNormalMixture(locs, scales[..., :1], logits)


# ------------------------------------------------------------------ MoE and MoPoE
def test_mixture_of_experts_log_prob_matches_hand_computation():
    locs, variances, mask = _experts(batch=6, m=3, d=2, seed=2)
    scales = variances.sqrt()
    q = mixture_of_experts(locs, scales, mask)
    z = torch.randn(6, 2)
    for b in range(6):
        sel = mask[b].nonzero().flatten().tolist()
        if sel:
            dens = sum(torch.exp(_normal_logpdf(z[b], locs[b, s], variances[b, s])) for s in sel) / len(sel)
        else:
            dens = torch.exp(_normal_logpdf(z[b], torch.zeros(2), torch.ones(2)))
        torch.testing.assert_close(q.log_prob(z)[b], torch.log(dens), atol=1e-5, rtol=1e-5)


def test_subset_matrix_enumerates_all_subsets():
    s = subset_matrix(3)
    assert s.shape == (8, 3) and not s[0].any()
    assert len({tuple(r.tolist()) for r in s}) == 8


@pytest.mark.parametrize("include_empty", [True, False], ids=["with-empty", "without-empty"])
def test_mixture_of_products_matches_brute_force(include_empty):
    locs, variances, mask = _experts(batch=6, m=3, d=2, seed=4)
    q = mixture_of_products(locs, variances, mask, include_empty=include_empty)
    z = torch.randn(6, 2)
    for b in range(6):
        members = mask[b].nonzero().flatten().tolist()
        subsets = [c for r in range(len(members) + 1) for c in itertools.combinations(members, r)]
        if not include_empty and members:
            subsets = [c for c in subsets if c]
        comps = []
        for c in subsets:
            sub = torch.zeros(3, dtype=torch.bool)
            sub[list(c)] = True
            loc, var = gaussian_product(locs[b], variances[b], sub)
            comps.append(_normal_logpdf(z[b], loc, var))
        expected = torch.logsumexp(torch.stack(comps), 0) - math.log(len(comps))
        torch.testing.assert_close(q.log_prob(z)[b], expected, atol=1e-5, rtol=1e-5)


def test_mixture_of_products_caps_the_number_of_modalities():
    m = MAX_MOPOE_MODALITIES + 1
    locs = torch.zeros(2, m, 1)
    with pytest.raises(ValueError, match=rf"M <= {MAX_MOPOE_MODALITIES}.*SumPooling"):
        mixture_of_products(locs, torch.ones_like(locs), torch.ones(2, m, dtype=torch.bool))


def test_poe_variance_is_exp_below_the_knee_and_finite_far_above():
    from pyro_mmvae.distributions.experts import POE_LOG_VARIANCE_KNEE, VAR_FLOOR, poe_variance

    low = torch.linspace(-4.0, POE_LOG_VARIANCE_KNEE / 2 - 0.01, 50)
    assert torch.equal(poe_variance(low), VAR_FLOOR + torch.exp(2 * low))
    high = torch.tensor([30.0, 48.0, 200.0], requires_grad=True)  # exp(2ℓ) overflows float32 from ℓ ≈ 44
    v = poe_variance(high)
    v.sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(high.grad).all() and (high.grad > 0).all()
