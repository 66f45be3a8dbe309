"""Conditional normalizing flows: densities against change-of-variables references, directions, dtypes."""

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_mmvae.nn.flows import ConditionalFlow, _FoldedContext, maf_log_prob_and_grad

KINDS = ["maf", "coupling"]
CONTEXTS = [0, 3]


def make(kind, context_dim, dim=3, batch=4, seed=0, **kw):
    """A randomly initialised flow, a Gaussian base (batch,) × (dim,) and a context (or None)."""
    torch.manual_seed(seed)
    kw.setdefault("identity_init", False)
    flow = ConditionalFlow(dim, kind, num_blocks=2, hidden=(8, 8), context_dim=context_dim, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    base = dist.Normal(torch.randn(batch, dim, generator=g), 0.5 + torch.rand(batch, dim, generator=g)).to_event(1)
    context = torch.randn(batch, context_dim, generator=g) if context_dim else None
    return flow, base, context


def density_direction(flow, z, context):
    """z → base point, by running the sampling-direction transforms backwards."""
    x = z
    for t in reversed(flow.transforms(context)):
        x = t.inv(x)
    return x


def sampling_direction(flow, u, context):
    for t in flow.transforms(context):
        u = t(u)
    return u


@pytest.mark.parametrize("context_dim", CONTEXTS, ids=["uncond", "cond"])
@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_is_change_of_variables(kind, context_dim):
    # Wide clamp: the autograd Jacobian below must see the same map as the log-det formula.
    flow, base, context = make(kind, context_dim, log_scale_clip=(-50.0, 50.0))
    q = flow(base, context)
    z = torch.randn(base.batch_shape[0], 3, generator=torch.Generator().manual_seed(5))
    expected = []
    for b in range(z.shape[0]):
        ctx = None if context is None else context[b : b + 1]

        def to_base(zb, ctx=ctx):
            return density_direction(flow, zb.unsqueeze(0), ctx).squeeze(0)

        jac = torch.autograd.functional.jacobian(to_base, z[b])
        u = to_base(z[b])
        base_b = dist.Normal(base.base_dist.loc[b], base.base_dist.scale[b]).to_event(1)
        expected.append(base_b.log_prob(u) + torch.linalg.slogdet(jac).logabsdet)
    torch.testing.assert_close(q.log_prob(z), torch.stack(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("context_dim", CONTEXTS, ids=["uncond", "cond"])
def test_maf_log_prob_matches_explicit_made_passes(context_dim):
    """MAF density: per block u = exp(s(z))·z + m(z) from ONE network pass, log|det| = Σ s."""
    flow, base, context = make("maf", context_dim, batch=5)
    z = 2.0 * torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(2))  # arbitrary points, (C, B, D)
    x, log_det = z, torch.zeros(7, 5)
    for net in reversed(flow.nets):  # density direction: last sampling block first
        mean, log_scale = net(x) if context is None else net(x, context=context)
        log_scale = log_scale.clamp(*flow.log_scale_clip)
        x = torch.exp(log_scale) * x + mean
        log_det = log_det + log_scale.sum(-1)
    expected = base.log_prob(x) + log_det
    torch.testing.assert_close(flow(base, context).log_prob(z), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("context_dim", CONTEXTS, ids=["uncond", "cond"])
@pytest.mark.parametrize("kind", KINDS)
def test_sample_then_log_prob_round_trips(kind, context_dim):
    flow, base, context = make(kind, context_dim, dim=4)
    u = base.sample((6,))
    z = sampling_direction(flow, u, context)
    torch.testing.assert_close(density_direction(flow, z.clone(), context), u, atol=1e-5, rtol=1e-5)
    q = flow(base, context)
    zs = q.rsample((6,))
    assert zs.shape == (6, 4, 4)
    # log_prob of a fresh sample (transform caches hit) equals log_prob of a copy (recomputed).
    torch.testing.assert_close(q.log_prob(zs), q.log_prob(zs.clone()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("context_dim", CONTEXTS, ids=["uncond", "cond"])
@pytest.mark.parametrize("kind", KINDS)
def test_density_integrates_to_one_in_2d(kind, context_dim):
    flow, base, context = make(kind, context_dim, dim=2, batch=1)
    q = flow(base, context)
    edge, n = 12.0, 600
    grid = torch.linspace(-edge, edge, n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)
    with torch.no_grad():
        mass = q.log_prob(zz.float()).double().exp().sum() * (grid[1] - grid[0]) ** 2
    # Riemann sum on a fine grid of a smooth density: error well below 1e-2.
    assert abs(mass.item() - 1.0) < 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_broadcasts_over_leading_dims(kind):
    flow, base, context = make(kind, 3, dim=3, batch=5)
    q = flow(base, context)
    z = torch.randn(2, 3, 5, 3)
    lp = q.log_prob(z)
    assert lp.shape == (2, 3, 5)
    for i in range(2):
        for c in range(3):
            torch.testing.assert_close(lp[i, c], q.log_prob(z[i, c].clone()), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_flow_parameters_and_z(kind):
    flow, base, context = make(kind, 3, identity_init=True)
    z = torch.randn(2, 4, 3, requires_grad=True)
    flow(base, context).log_prob(z).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    last = [net.layers[-1].weight.grad for net in flow.nets]
    assert all(g is not None and torch.isfinite(g).all() for g in last)
    assert any(g.abs().sum() > 0 for g in last)


@pytest.mark.parametrize("kind", KINDS)
def test_identity_init_starts_at_the_base(kind):
    flow, base, context = make(kind, 0, identity_init=True)
    z = torch.randn(3, 4, 3)
    torch.testing.assert_close(flow(base).log_prob(z), base.log_prob(z))


def test_zero_blocks_returns_the_base():
    flow = ConditionalFlow(3, "maf", num_blocks=0)
    base = dist.Normal(torch.zeros(2, 3), torch.ones(2, 3)).to_event(1)
    assert flow(base) is base


@pytest.mark.parametrize("kind", KINDS)
def test_permutations_are_seeded_buffers(kind):
    a = ConditionalFlow(8, kind, num_blocks=3, hidden=(16,), seed=3)
    b = ConditionalFlow(8, kind, num_blocks=3, hidden=(16,), seed=3)
    c = ConditionalFlow(8, kind, num_blocks=3, hidden=(16,), seed=4)
    assert torch.equal(a.permutations, b.permutations)
    assert not torch.equal(a.permutations, c.permutations)
    buffers = dict(a.named_buffers())
    assert "permutations" in buffers
    if kind == "maf":  # each MADE keeps its variable order as a buffer, seeded from ours
        for i, net in enumerate(a.nets):
            assert f"nets.{i}.permutation" in buffers
            assert torch.equal(net.permutation, a.permutations[i])


@pytest.mark.parametrize("context_dim", CONTEXTS, ids=["uncond", "cond"])
@pytest.mark.parametrize("kind", KINDS)
def test_float64_conversion_moves_everything(kind, context_dim):
    flow, base, context = make(kind, context_dim)
    z = torch.randn(2, 4, 3)
    lp32 = flow(base, context).log_prob(z)
    flow = flow.to(torch.float64)
    assert flow.permutations.dtype == torch.long
    base64 = dist.Normal(base.base_dist.loc.double(), base.base_dist.scale.double()).to_event(1)
    ctx64 = None if context is None else context.double()
    q = flow(base64, ctx64)
    lp64 = q.log_prob(z.double())
    assert lp64.dtype == torch.float64
    torch.testing.assert_close(lp64.float(), lp32, atol=1e-4, rtol=1e-4)
    s = q.rsample((3,))  # the sampling direction (D passes for maf) keeps the dtype too
    assert s.dtype == torch.float64 and torch.isfinite(q.log_prob(s)).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_to_cuda_moves_permutations(kind):
    flow, base, context = make(kind, 3)
    flow = flow.cuda()
    assert flow.permutations.is_cuda
    base = dist.Normal(base.base_dist.loc.cuda(), base.base_dist.scale.cuda()).to_event(1)
    q = flow(base, context.cuda())
    s = q.rsample((2,))
    assert s.is_cuda and torch.isfinite(q.log_prob(s)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_folded_context_equals_the_network(kind):
    flow, base, context = make(kind, 3, dim=4)
    for net in flow.nets:
        x = torch.randn(2, 4, net.input_dim)
        for a, b in zip(_FoldedContext(net, context)(x), net(x, context=context)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown flow kind"):
        ConditionalFlow(3, "iaf")
    with pytest.raises(ValueError, match="hidden size >= dim"):
        ConditionalFlow(10, "maf", hidden=(8,))
    with pytest.raises(ValueError, match="dim >= 2"):
        ConditionalFlow(1, "coupling")
    flow = ConditionalFlow(3, "maf", hidden=(8,), context_dim=2)
    base = dist.Normal(torch.zeros(4, 3), torch.ones(4, 3)).to_event(1)
    with pytest.raises(ValueError, match="conditional"):
        flow(base)
    with pytest.raises(ValueError, match="last dimension 2"):
        flow(base, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="unconditional"):
        ConditionalFlow(3, "maf", hidden=(8,))(base, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="event shape"):
        flow(dist.Normal(torch.zeros(4, 2), torch.ones(4, 2)).to_event(1), torch.zeros(4, 2))


def test_standard_normal_base_log_prob_value():
    """Sanity anchor: an identity flow on N(0, I) gives −D/2·log(2π) at the origin."""
    flow = ConditionalFlow(2, "coupling", hidden=(4,))
    q = flow(dist.Normal(torch.zeros(1, 2), torch.ones(1, 2)).to_event(1))
    assert q.log_prob(torch.zeros(1, 2)).item() == pytest.approx(-math.log(2 * math.pi), abs=1e-6)


@pytest.mark.parametrize("context_dim", CONTEXTS, ids=["uncond", "cond"])
@pytest.mark.parametrize("strength", [0.5, 40.0], ids=["inside-clamp", "at-clamp"])
def test_fused_maf_gradient_equals_autograd(context_dim, strength):
    """Value and z-gradient of the hand-written sweep equal log_prob and its autograd gradient, clamp included."""
    flow, base, context = make("maf", context_dim, dim=4, batch=5)
    flow = flow.double()
    with torch.no_grad():
        for net in flow.nets:
            net.layers[-1].weight.mul_(strength)  # 40: many log-scales sit at the clamp
    base = dist.Normal(base.base_dist.loc.double(), base.base_dist.scale.double()).to_event(1)
    q = flow(base, None if context is None else context.double())
    for lead in [(), (3,), (2, 3)]:
        z = torch.randn(*lead, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(len(lead)))
        z = (3 * z).requires_grad_(True)
        lp = q.log_prob(z)
        (grad,) = torch.autograd.grad(lp.sum(), z)
        fused_lp, fused_grad = maf_log_prob_and_grad(q, z.detach())
        torch.testing.assert_close(fused_lp, lp.detach(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fused_grad, grad, rtol=1e-9, atol=1e-9)
        assert fused_lp.shape == lead + (5,) and fused_grad.shape == z.shape


def test_fused_maf_gradient_declines_what_it_does_not_know():
    flow, base, context = make("coupling", 3)
    assert maf_log_prob_and_grad(flow(base, context), torch.zeros(4, 3)) is None
    flow, base, context = make("maf", 3)
    assert maf_log_prob_and_grad(base, torch.zeros(4, 3)) is None  # a Gaussian: no flow
    tanh_flow = ConditionalFlow(3, "maf", num_blocks=1, hidden=(8,), identity_init=False)
    tanh_flow.nets[0].f = torch.nn.Tanh()
    assert maf_log_prob_and_grad(tanh_flow(base), torch.zeros(4, 3)) is None
    laplace_base = dist.Laplace(torch.zeros(4, 3), 1.0).to_event(1)
    assert maf_log_prob_and_grad(flow(laplace_base, context), torch.zeros(4, 3)) is None
