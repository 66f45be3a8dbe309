"""Set networks: a permutation π of the modalities acts as (h[..., π, :], mask[..., π]) on inputs
and as out[..., π, :] on equivariant outputs."""

import math

import pytest
import torch
from torch import nn

from pyro_mmvae.nn.set_aggregators import (
    LAYER_NORM_EPS,
    EquivariantSelfAttention,
    EquivariantSumPooling,
    MaskedSelfAttention,
    SelfAttentionPooling,
    SetTransformer,
    SumPooling,
    lecun_normal_,
    masked_logit_fill,
)

E, C, OUT, M, B = 6, 3, 5, 4, 7
KINDS = ["sum", "attention"]


def _inputs(seed=0, lead=(B,)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*lead, M, E, generator=g)
    mask = torch.rand(*lead, M, generator=g) > 0.4
    mask[..., 0, :] = False  # an empty set
    mask[..., 1, :] = True  # a full set
    mask[..., 2, :] = torch.tensor([True, False, False, False])  # a singleton
    return h, mask


def _invariant(kind):
    torch.manual_seed(0)
    if kind == "sum":
        return SumPooling(E, OUT, hidden=8, pooled_dim=8)
    return SelfAttentionPooling(E, OUT, hidden=8, dim=8, num_layers=2, num_heads=4)


def _equivariant(kind):
    torch.manual_seed(0)
    if kind == "sum":
        return EquivariantSumPooling(E, C, OUT, hidden=8, pooled_dim=8)
    return EquivariantSelfAttention(E, C, OUT, hidden=8, dim=8, num_layers=2, num_heads=4)


def _invariant_case(kind):
    """An invariant network of ``kind``, the inputs of :func:`_inputs` and its output ``(B, OUT)``."""
    net = _invariant(kind)
    h, mask = _inputs()
    return net, h, mask, net(h, mask)


def _equivariant_case(kind, lead=()):
    """An equivariant network of ``kind``, the inputs of :func:`_inputs`, a random condition ``(*lead, B, C)``
    and the output ``(*lead, B, M, OUT)``."""
    net = _equivariant(kind)
    h, mask = _inputs()
    c = torch.randn(*lead, B, C)
    return net, h, mask, c, net(h, mask, c)


def _permutations(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(M, generator=g) for _ in range(n)]


@pytest.mark.parametrize("kind", KINDS)
def test_invariant_networks_are_permutation_invariant(kind):
    net, h, mask, out = _invariant_case(kind)
    assert out.shape == (B, OUT) and torch.isfinite(out).all()
    for perm in _permutations():
        torch.testing.assert_close(net(h[:, perm], mask[:, perm]), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_equivariant_networks_are_permutation_equivariant(kind):
    net, h, mask, c, out = _equivariant_case(kind)
    assert out.shape == (B, M, OUT)
    for perm in _permutations():
        permuted = net(h[:, perm], mask[:, perm], c)
        # Only positions inside S carry meaning; outside S the output is discarded downstream.
        keep = mask[:, perm].unsqueeze(-1).expand_as(permuted)
        torch.testing.assert_close(permuted[keep], out[:, perm][keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_elements_do_not_influence_invariant_networks(kind):
    net, h, mask, out = _invariant_case(kind)
    garbage = torch.where(mask.unsqueeze(-1), h, 1e3 * torch.randn_like(h))
    torch.testing.assert_close(net(garbage, mask), out, atol=1e-5, rtol=1e-5)
    # Leaving the element out of the set altogether gives the same output (row 3, element 3 masked).
    row = 3
    mask[row, 3] = False
    kept = [0, 1, 2]
    torch.testing.assert_close(
        net(h[row : row + 1, kept], mask[row : row + 1, kept]), net(h, mask)[row : row + 1], atol=1e-5, rtol=1e-5
    )
    # ... and its features get exactly zero gradient.
    h_leaf = h.clone().requires_grad_()
    net(h_leaf, mask).sum().backward()
    assert (h_leaf.grad[~mask] == 0).all() and (h_leaf.grad[mask] != 0).any()


@pytest.mark.parametrize("kind", KINDS)
def test_masked_elements_do_not_influence_equivariant_outputs_inside_the_set(kind):
    net, h, mask, c, out = _equivariant_case(kind)
    garbage = torch.where(mask.unsqueeze(-1), h, 1e3 * torch.randn_like(h))
    keep = mask.unsqueeze(-1).expand_as(out)
    torch.testing.assert_close(net(garbage, mask, c)[keep], out[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_set_gives_rho_of_zero(kind):
    net, _, mask, out = _invariant_case(kind)
    expected = net.rho(torch.zeros(net.rho.in_dim))
    torch.testing.assert_close(out[0], expected)
    h2, _ = _inputs(seed=5)
    torch.testing.assert_close(net(h2, mask)[0], expected)


@pytest.mark.parametrize("kind", KINDS)
def test_equivariant_networks_broadcast_a_condition_with_particle_dims(kind):
    net, h, mask, c, out = _equivariant_case(kind, lead=(3,))
    assert out.shape == (3, B, M, OUT)
    torch.testing.assert_close(out[1], net(h, mask, c[1]), atol=1e-6, rtol=1e-6)


def test_attention_matches_scaled_dot_product_attention_on_valid_queries():
    torch.manual_seed(0)
    dim, heads = 8, 4
    att = MaskedSelfAttention(dim, heads)
    assert all(lin.bias is None for lin in (att.query, att.key, att.value, att.output))
    x, mask = torch.randn(B, M, dim), _inputs()[1]
    out = att(x, mask)

    def split(t):
        return t.reshape(B, M, heads, dim // heads).transpose(1, 2)

    q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
    pair = (mask.unsqueeze(-1) & mask.unsqueeze(-2)).unsqueeze(1)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=pair)  # scale 1/√head_dim
    ref = att.output(ref.transpose(1, 2).reshape(B, M, dim))
    torch.testing.assert_close(out[mask], ref[mask], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()  # rows without any valid key stay finite


def test_attention_rejects_widths_not_divisible_by_heads():
    with pytest.raises(ValueError, match="divisible"):
        MaskedSelfAttention(10, 4)


def test_masked_logit_fill_is_finite_and_very_negative():
    for dtype in (torch.float16, torch.float32, torch.float64):
        v = torch.tensor(masked_logit_fill(dtype), dtype=dtype)
        assert torch.isfinite(v) and v < -1e4


def test_transformer_layer_norms_use_eps_1e_6_and_final_norm():
    t = SetTransformer(8, 8, num_layers=2)
    norms = [mod for mod in t.modules() if isinstance(mod, nn.LayerNorm)]
    assert len(norms) == 5 and all(n.eps == LAYER_NORM_EPS == 1e-6 for n in norms)


def test_lecun_normal_init():
    torch.manual_seed(0)
    layer = lecun_normal_(nn.Sequential(nn.Linear(400, 300)))[0]
    assert (layer.bias == 0).all()
    w = layer.weight
    # Truncated normal rescaled so that its std is 1/sqrt(fan_in); 120k draws give ~0.3% precision.
    assert abs(w.std().item() * math.sqrt(400) - 1) < 0.02
    assert w.abs().max().item() <= 2 / 0.87962566103423978 / math.sqrt(400) + 1e-6


def test_bad_inputs_are_named():
    net = _invariant("sum")
    h, mask = _inputs()
    with pytest.raises(ValueError, match="set features"):
        net(h[..., :3], mask)
    with pytest.raises(TypeError, match="bool"):
        net(h, mask.float())
    with pytest.raises(ValueError, match="condition"):
        _equivariant("sum")(h, mask, torch.randn(B, C + 1))
