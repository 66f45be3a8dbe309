"""Guides for private latents. A permutation of the modalities acts by building the guide with the
modalities in the permuted order (same weights, loaded by name): the shared posterior must not
change, and the private posterior of each modality must move with it (equivariance)."""

import functools
import itertools

import pyro
import pytest
import torch
from pyro import poutine

from pyro_mmvae.distributions.detach import detach_distribution
from pyro_mmvae.guides.equivariant import (
    EquivariantPoEGuide,
    EquivariantSelfAttentionGuide,
    EquivariantSumPoolingGuide,
)
from pyro_mmvae.infer.elbo import BetaELBO
from pyro_mmvae.models.private import PrivateLatentVAE
from tests.common import assert_finite_nonzero_grads, small_batch, small_modalities
from tests.guides.common import NAMES, SET, assert_same_q, build_guide, guide_batch_and_subset, permuted_batch

D, DP = 3, 2
BUILDERS = {
    "poe": lambda mods: EquivariantPoEGuide(mods, D, DP, hidden=(8,)),
    "sumpooling": lambda mods: EquivariantSumPoolingGuide(mods, D, DP, pooled_dim=8, **SET),
    "selfattention": lambda mods: EquivariantSelfAttentionGuide(mods, D, DP, dim=8, num_layers=2, **SET),
}
KINDS = list(BUILDERS)


_build = functools.partial(build_guide, BUILDERS)
_scene = functools.partial(guide_batch_and_subset, BUILDERS)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_samples_shared_and_private_sites(kind):
    guide = _build(kind)
    batch = small_batch(5)
    tr = poutine.trace(guide).get_trace(batch, subset=["a"], beta=0.5)
    assert tr.nodes["z"]["value"].shape == (5, D)
    for n in NAMES:
        site = tr.nodes[f"w_{n}"]
        assert site["value"].shape == (5, DP) and site["scale"] == 0.5
    with pyro.plate("particles", 2, dim=-2):
        tr = poutine.trace(guide).get_trace(batch)
    assert tr.nodes["z"]["value"].shape == (2, 5, D)
    assert all(tr.nodes[f"w_{n}"]["value"].shape == (2, 5, DP) for n in NAMES)


@pytest.mark.parametrize("kind", KINDS)
def test_shared_invariance_and_private_equivariance(kind):
    guide, batch, subset = _scene(kind)
    q = guide.posterior(batch, subset)
    z = q.sample((2,))
    private = guide.private_posterior(batch, subset, z)
    w = torch.randn(2, 8, DP)
    enc = guide.encode(batch, subset)
    loc, _ = guide.private_params_from(enc, z)
    for perm in itertools.permutations(NAMES):
        pg = _build(kind, list(perm), like=guide)
        pbatch = permuted_batch(batch, perm)
        assert_same_q(pg.posterior(pbatch, subset), q, z)
        permuted_private = pg.private_posterior(pbatch, subset, z)
        for n in NAMES:  # modality n's private posterior moves with n
            assert_same_q(permuted_private[n], private[n], w)
        # On the stacked axis: position j of the permuted guide holds modality perm[j].
        ploc, _ = pg.private_params_from(pg.encode(pbatch, subset), z)
        index = [NAMES.index(n) for n in perm]
        keep = enc.mask[:, index].unsqueeze(-1).expand_as(ploc[0])
        for p in range(2):
            torch.testing.assert_close(ploc[p][keep], loc[p][:, index][keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_private_latents_outside_the_subset_come_from_the_prior(kind):
    guide, batch, subset = _scene(kind)
    other = small_batch(8, seed=4)
    z = torch.randn(2, 8, D)
    w = 2 * torch.randn(2, 8, DP)
    prior_lp = torch.distributions.Normal(0.0, 1.0).log_prob(w).sum(-1)
    for b in (batch, other):
        private = guide.private_posterior(b, subset, z)
        for n in NAMES:
            outside = ~subset[n]
            torch.testing.assert_close(private[n].log_prob(w)[:, outside], prior_lp[:, outside])
            inside = subset[n]
            assert not torch.allclose(private[n].log_prob(w)[:, inside], prior_lp[:, inside])


@pytest.mark.parametrize("kind", KINDS)
def test_private_posteriors_depend_on_z_only_for_set_guides(kind):
    guide = _build(kind)
    batch = small_batch(6)
    w = torch.randn(6, DP)
    lp1 = guide.private_posterior(batch, None, torch.randn(6, D))["a"].log_prob(w)
    lp2 = guide.private_posterior(batch, None, torch.randn(6, D))["a"].log_prob(w)
    assert torch.allclose(lp1, lp2) == (kind == "poe")


@pytest.mark.parametrize("kind", KINDS)
def test_masking_a_modality_equals_leaving_it_out(kind):
    guide = _build(kind)
    batch = small_batch(6)
    small = _build(kind, ["a", "c"], like=guide)
    q_missing = guide.posterior(batch.with_missing(["b"]))
    q_small = small.posterior(batch.select(["a", "c"]))
    z = q_missing.sample((2,))
    assert_same_q(q_missing, q_small, z)
    assert_same_q(q_missing, guide.posterior(batch, ["a", "c"]), z)
    w = torch.randn(2, 6, DP)
    p_missing = guide.private_posterior(batch.with_missing(["b"]), None, z)
    p_small = small.private_posterior(batch.select(["a", "c"]), None, z)
    for n in ("a", "c"):
        assert_same_q(p_missing[n], p_small[n], w)


@pytest.mark.parametrize("kind", KINDS)
def test_per_row_subsets_equal_row_by_row_evaluation(kind):
    guide, batch, subset = _scene(kind)
    z, w = torch.randn(2, 8, D), torch.randn(2, 8, DP)
    lp = guide.posterior(batch, subset).log_prob(z)
    private = guide.private_posterior(batch, subset, z)
    for i in range(8):
        names = [n for n in NAMES if subset[n][i]]
        row = batch[i : i + 1]
        torch.testing.assert_close(
            guide.posterior(row, names).log_prob(z[:, i : i + 1]), lp[:, i : i + 1], atol=1e-5, rtol=1e-5
        )
        row_private = guide.private_posterior(row, names, z[:, i : i + 1])
        for n in NAMES:
            torch.testing.assert_close(
                row_private[n].log_prob(w[:, i : i + 1]), private[n].log_prob(w)[:, i : i + 1], atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("kind", KINDS)
def test_elbo_with_private_model_has_finite_loss_and_gradients(kind):
    guide = _build(kind)
    model = PrivateLatentVAE(small_modalities(), D, DP, hidden=(8,))
    b = 9
    present = {n: (torch.arange(b) % 3 == i) | (torch.arange(b) < 3) for i, n in enumerate(NAMES)}
    batch = small_batch(b, present=present)
    subset = {n: m & (torch.arange(b) % 2 == 0) for n, m in present.items()}  # odd rows: S = ∅
    for sub in (None, ["a"], subset):
        guide.zero_grad()
        model.zero_grad()
        loss = BetaELBO(num_particles=2, stl=True).differentiable_loss(model, guide, batch, beta=0.7, subset=sub)
        loss.backward()
        assert torch.isfinite(loss)
        for module in (guide, model):
            assert_finite_nonzero_grads(module.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_stop_gradient_copies_exist(kind):
    guide = _build(kind)
    batch = small_batch(4)
    q = guide.posterior(batch)
    z = q.rsample()
    for d in (q, *guide.private_posterior(batch, ["a"], z).values()):
        v = d.sample()
        torch.testing.assert_close(detach_distribution(d).log_prob(v), d.log_prob(v))


def test_bad_z_shape_is_reported():
    guide = _build("sumpooling")
    with pytest.raises(ValueError, match="z must have shape"):
        guide.private_posterior(small_batch(4), None, torch.randn(4, D + 1))
