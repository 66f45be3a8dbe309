"""Aggregation guides. A permutation of the modalities acts on a guide by building it with the
modalities in the permuted order (same weights, loaded by name) and on a batch by reordering its
modality dict; the stacked features then appear in the permuted order along the set axis."""

import functools
import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_mmvae.data.batch import MultimodalBatch
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.distributions.detach import detach_distribution
from pyro_mmvae.distributions.experts import MAX_MOPOE_MODALITIES, VAR_FLOOR, DiagNormalMixture
from pyro_mmvae.guides.aggregation import (
    MoEGuide,
    MoPoEGuide,
    PoEGuide,
    SelfAttentionGuide,
    SelfAttentionMixtureGuide,
    SumPoolingGuide,
    SumPoolingMixtureGuide,
    distribution_from_output,
)
from pyro_mmvae.infer.elbo import BetaELBO
from pyro_mmvae.models.multimodal_vae import MultimodalVAE
from tests.common import assert_finite_nonzero_grads, small_batch, small_modalities
from tests.guides.common import (
    NAMES,
    SET,
    assert_same_q,
    build_guide,
    guide_batch_and_subset,
    permuted_batch,
    row_masks,
)

D = 3
BUILDERS = {
    "poe": lambda mods: PoEGuide(mods, D, hidden=(8,)),
    "poe-paper": lambda mods: PoEGuide(mods, D, hidden=(8,), poe_mean="paper"),
    "poe-plus": lambda mods: PoEGuide(mods, D, hidden=(8,), plus=True),
    "moe": lambda mods: MoEGuide(mods, D, hidden=(8,)),
    "moe-plus": lambda mods: MoEGuide(mods, D, hidden=(8,), plus=True),
    "mopoe": lambda mods: MoPoEGuide(mods, D, hidden=(8,)),
    "mopoe-no-empty": lambda mods: MoPoEGuide(mods, D, hidden=(8,), include_empty=False),
    "sumpooling": lambda mods: SumPoolingGuide(mods, D, pooled_dim=8, **SET),
    "selfattention": lambda mods: SelfAttentionGuide(mods, D, dim=8, num_layers=2, **SET),
    "sumpooling-mixture": lambda mods: SumPoolingMixtureGuide(mods, D, num_components=3, pooled_dim=8, **SET),
    "selfattention-mixture": lambda mods: SelfAttentionMixtureGuide(mods, D, num_components=3, dim=8, **SET),
}
KINDS = list(BUILDERS)


_build = functools.partial(build_guide, BUILDERS)
_scene = functools.partial(guide_batch_and_subset, BUILDERS)


@pytest.mark.parametrize("kind", KINDS)
def test_posterior_shapes_and_forward_site(kind):
    guide = _build(kind)
    batch = small_batch(5)
    q = guide.posterior(batch)
    assert q.batch_shape == (5,) and q.event_shape == (D,)
    tr = poutine.trace(guide).get_trace(batch, beta=0.5)
    assert tr.nodes["z"]["value"].shape == (5, D) and tr.nodes["z"]["scale"] == 0.5
    with pyro.plate("particles", 2, dim=-2):
        tr = poutine.trace(guide).get_trace(batch)
    assert tr.nodes["z"]["value"].shape == (2, 5, D)


@pytest.mark.parametrize("kind", KINDS)
def test_permutation_invariance(kind):
    guide, batch, subset = _scene(kind)
    q = guide.posterior(batch, subset)
    z = torch.cat([q.sample((3,)), torch.randn(2, 8, D)])
    for perm in itertools.permutations(NAMES):
        permuted_guide = _build(kind, list(perm), like=guide)
        assert permuted_guide.names == list(perm)
        assert_same_q(permuted_guide.posterior(permuted_batch(batch, perm), subset), q, z)


@pytest.mark.parametrize("kind", KINDS)
def test_masking_a_modality_equals_leaving_it_out(kind):
    guide = _build(kind)
    batch = small_batch(6)
    q_missing = guide.posterior(batch.with_missing(["b"]))
    q_subset = guide.posterior(batch, ["a", "c"])
    small = _build(kind, ["a", "c"], like=guide)
    q_small = small.posterior(batch.select(["a", "c"]))
    assert_same_q(q_missing, q_subset)
    assert_same_q(q_missing, q_small)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_inputs_are_zeroed_before_encoding(kind):
    guide = _build(kind)
    batch = small_batch(6)
    present = batch.present["a"].clone()
    present[::2] = False
    nan_data = dict(batch.data, a=torch.where(present.unsqueeze(-1), batch.data["a"], float("nan")))
    zero_data = dict(batch.data, a=torch.where(present.unsqueeze(-1), batch.data["a"], 0.0))
    q_nan = guide.posterior(MultimodalBatch(nan_data, dict(batch.present, a=present)))
    q_zero = guide.posterior(MultimodalBatch(zero_data, dict(batch.present, a=present)))
    assert torch.isfinite(q_nan.mean).all()
    assert_same_q(q_nan, q_zero)


@pytest.mark.parametrize("kind", KINDS)
def test_per_row_subsets_equal_row_by_row_evaluation(kind):
    guide, batch, subset = _scene(kind)
    q = guide.posterior(batch, subset)
    z = torch.randn(2, 8, D)
    lp = q.log_prob(z)
    for i in range(8):
        names = [n for n in NAMES if subset[n][i]]
        qi = guide.posterior(batch[i : i + 1], names)
        torch.testing.assert_close(qi.log_prob(z[:, i : i + 1]), lp[:, i : i + 1], atol=1e-5, rtol=1e-5)


def _expected_empty_q(guide):
    zeros = torch.zeros(D)
    if isinstance(guide, (PoEGuide, MoPoEGuide)):
        return dist.Normal(zeros, torch.full((D,), math.sqrt(1 + VAR_FLOOR))).to_event(1)
    if isinstance(guide, MoEGuide):
        return dist.Normal(zeros, torch.ones(D)).to_event(1)
    out = guide.aggregator.rho(torch.zeros(guide.aggregator.rho.in_dim))
    return distribution_from_output(out, D, guide.num_components, guide.min_scale)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_subset_gives_the_documented_q(kind):
    guide, batch, subset = _scene(kind)
    other = small_batch(8, seed=3)
    z = torch.randn(4, 1, D)
    expected = _expected_empty_q(guide).log_prob(z[:, 0])
    for b in (batch, other):
        q = guide.posterior(b, subset)
        torch.testing.assert_close(q.log_prob(z)[:, 0], expected, atol=1e-5, rtol=1e-5)
    q_none = guide.posterior(batch, [])
    torch.testing.assert_close(q_none.log_prob(z)[:, 3], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mean", ["correct", "paper"])
def test_poe_guide_matches_the_closed_form(mean):
    guide = PoEGuide(small_modalities(), D, hidden=(8,), poe_mean=mean)
    batch = small_batch(6)
    subset = row_masks(6)
    q = guide.posterior(batch, subset)
    mask = batch.stacked_mask(subset, NAMES)
    for i in range(6):
        precision, numerator = torch.full((D,), 1 / (1 + VAR_FLOOR)), torch.zeros(D)
        for s, name in enumerate(NAMES):
            if not mask[i, s]:
                continue
            out = guide.encoders.encoders[name](batch.data[name][i : i + 1])[0]
            mu, var = out[:D], VAR_FLOOR + torch.exp(2 * out[D:])
            precision = precision + 1 / var
            numerator = numerator + (mu / var if mean == "correct" else mu * var)
        torch.testing.assert_close(q.base_dist.loc[i], numerator / precision, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(q.base_dist.scale[i], (1 / precision).sqrt(), atol=1e-6, rtol=1e-5)


def test_moe_guide_log_prob_matches_hand_computation():
    guide = MoEGuide(small_modalities(), D, hidden=(8,))
    batch = small_batch(6)
    subset = row_masks(6)
    q = guide.posterior(batch, subset)
    z = torch.randn(6, D)
    mask = batch.stacked_mask(subset, NAMES)
    for i in range(6):
        comps = []
        for s, name in enumerate(NAMES):
            if mask[i, s]:
                out = guide.encoders.encoders[name](batch.data[name][i : i + 1])[0]
                loc, scale = out[:D], 1e-3 + out[D:].exp()
                comps.append(dist.Normal(loc, scale).log_prob(z[i]).sum())
        if not comps:
            comps = [dist.Normal(0.0, 1.0).log_prob(z[i]).sum()]
        expected = torch.logsumexp(torch.stack(comps), 0) - math.log(len(comps))
        torch.testing.assert_close(q.log_prob(z)[i], expected, atol=1e-5, rtol=1e-5)


def test_mixture_guide_log_prob_matches_hand_computation():
    guide = SumPoolingMixtureGuide(small_modalities(), D, num_components=3, pooled_dim=8, **SET)
    batch = small_batch(4)
    q = guide.posterior(batch)
    assert isinstance(q, DiagNormalMixture)
    h = guide.encoders(batch, batch.stacked_mask(None, NAMES))
    out = guide.aggregator.rho(guide.aggregator.chi(h).sum(-2))  # every modality present
    z = torch.randn(4, D)
    for i in range(4):
        blocks, logits = out[i, : 2 * D * 3].reshape(3, 2 * D), out[i, 2 * D * 3 :]
        lps = [
            dist.Normal(blocks[k, :D], 1e-3 + blocks[k, D:].exp()).log_prob(z[i]).sum()
            + torch.log_softmax(logits, 0)[k]
            for k in range(3)
        ]
        torch.testing.assert_close(q.log_prob(z)[i], torch.logsumexp(torch.stack(lps), 0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["moe", "mopoe", "sumpooling-mixture", "selfattention-mixture"])
def test_mixture_samples_carry_pathwise_gradients(kind):
    guide = _build(kind)
    q = guide.posterior(small_batch(6), row_masks(6))
    q.rsample((4,)).pow(2).sum().backward()
    assert_finite_nonzero_grads(guide.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_elbo_gradients_are_finite_when_rows_keep_one_modality(kind):
    guide = _build(kind)
    model = MultimodalVAE(small_modalities(), D, hidden=(8,))
    b = 9
    present = {n: torch.arange(b) % 3 == i for i, n in enumerate(NAMES)}  # one modality per row
    batch = small_batch(b, present=present)
    subset = {n: present[n] | (torch.arange(b) < 3) for n in NAMES}
    subset = {n: m & (torch.arange(b) % 2 == 0) for n, m in subset.items()}  # odd rows: S = ∅
    for sub in (None, subset):
        guide.zero_grad()
        model.zero_grad()
        loss = BetaELBO(num_particles=2, stl=True).differentiable_loss(model, guide, batch, subset=sub)
        loss.backward()
        assert torch.isfinite(loss)
        assert_finite_nonzero_grads(guide.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_stop_gradient_copy_exists_for_every_posterior(kind):
    guide = _build(kind)
    q = guide.posterior(small_batch(4), row_masks(4))
    qbar = detach_distribution(q)
    z = q.sample((2,))
    torch.testing.assert_close(qbar.log_prob(z), q.log_prob(z))
    assert not qbar.log_prob(z).requires_grad


@pytest.mark.parametrize("kind", ["poe", "moe"])
def test_plus_variants_add_four_dense_256_relu_layers(kind):
    base, plus = _build(kind), _build(f"{kind}-plus")
    for name in NAMES:
        lin_base = [m for m in base.encoders.encoders[name].modules() if isinstance(m, nn.Linear)]
        lin_plus = [m for m in plus.encoders.encoders[name].modules() if isinstance(m, nn.Linear)]
        assert len(lin_plus) == len(lin_base) + 4
        assert [m.out_features for m in lin_plus[-5:-1]] == [256] * 4
        assert lin_plus[-1].out_features == lin_base[-1].out_features == 2 * D
        relus = [m for m in plus.encoders.encoders[name].modules() if isinstance(m, nn.ReLU)]
        assert len(relus) == len(lin_plus) - 1


def test_mopoe_caps_the_number_of_modalities():
    mods = [Modality(f"m{i}", (2,)) for i in range(MAX_MOPOE_MODALITIES + 1)]
    with pytest.raises(ValueError, match=rf"M <= {MAX_MOPOE_MODALITIES}.*SumPooling"):
        MoPoEGuide(mods, D, hidden=(4,))


def test_bad_batches_and_options_raise_named_errors():
    guide = _build("sumpooling")
    batch = small_batch(4)
    with pytest.raises(KeyError, match="'b'"):
        guide.posterior(batch.select(["a", "c"]))
    bad = MultimodalBatch(dict(batch.data, a=torch.randn(4, 6)))
    with pytest.raises(ValueError, match="'a'"):
        guide.posterior(bad)
    with pytest.raises(ValueError, match="poe_mean"):
        PoEGuide(small_modalities(), D, poe_mean="other")
    with pytest.raises(ValueError, match="init"):
        SumPoolingGuide(small_modalities(), D, init="xavier")
