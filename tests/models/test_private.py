import pyro
import pytest
import torch
from pyro import poutine

from pyro_mmvae.guides.equivariant import EquivariantSumPoolingGuide
from pyro_mmvae.infer.elbo import BetaELBO
from pyro_mmvae.models.multimodal_vae import MultimodalVAE
from pyro_mmvae.models.private import PrivateLatentVAE, private_site
from tests.common import small_batch, small_modalities

D, DP = 3, 2
NAMES = ["a", "b", "c"]


def _model(**kwargs):
    return PrivateLatentVAE(small_modalities(), D, DP, hidden=(8,), **kwargs)


def test_sites_follow_the_convention():
    model = _model()
    assert isinstance(model, MultimodalVAE)
    present = {"b": torch.tensor([True, False, True, False])}
    batch = small_batch(4, present=present)
    tr = poutine.trace(model).get_trace(batch, beta=0.5)
    assert tr.nodes["z"]["value"].shape == (4, D) and tr.nodes["z"]["scale"] == 0.5
    for n in NAMES:  # a private latent for every modality, present or not
        site = tr.nodes[private_site(n)]
        assert site["value"].shape == (4, DP) and site["scale"] == 0.5 and not site["is_observed"]
        assert tr.nodes[f"x_{n}"]["is_observed"]
    assert torch.equal(tr.nodes["x_b"]["mask"], present["b"])
    with pyro.plate("particles", 2, dim=-2):
        tr = poutine.trace(model).get_trace(batch)
    assert tr.nodes["w_a"]["value"].shape == (2, 4, DP)


def test_log_joint_matches_hand_computation():
    model = _model()
    batch = small_batch(4, present={"c": torch.tensor([True, True, False, True])})
    tr = poutine.trace(model).get_trace(batch)
    tr.compute_log_prob()
    z = tr.nodes["z"]["value"]
    w = {n: tr.nodes[private_site(n)]["value"] for n in NAMES}
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = normal.log_prob(z).sum(-1) + sum(normal.log_prob(w[n]).sum(-1) for n in NAMES)
    for n in NAMES:
        decoded = model.decoders[n](torch.cat([z, w[n]], -1))
        lp = model.likelihoods[n](decoded).log_prob(batch.data[n])
        expected = expected + torch.where(batch.present[n], lp, torch.zeros_like(lp))
    total = sum(tr.nodes[s]["log_prob"] for s in ["z", *(private_site(n) for n in NAMES), *(f"x_{n}" for n in NAMES)])
    torch.testing.assert_close(total, expected)


def test_each_decoder_reads_only_its_own_private_latent():
    model = _model()
    z, w = torch.randn(5, D), {n: torch.randn(5, DP) for n in NAMES}
    before = model.reconstruct(z, w)
    w2 = dict(w, a=w["a"] + 1.0)
    after = model.reconstruct(z, w2)
    assert not torch.allclose(before["a"], after["a"])
    assert torch.equal(before["b"], after["b"]) and torch.equal(before["c"], after["c"])
    # Leading (particle) dimensions broadcast between z and w.
    assert model.likelihood_dist("a", torch.randn(2, 5, D), torch.randn(5, DP)).batch_shape == (2, 5)


def test_missing_private_latent_or_bad_shapes_raise():
    model = _model()
    with pytest.raises(ValueError, match="private latent"):
        model.likelihood_dist("a", torch.randn(4, D))
    with pytest.raises(ValueError, match="expected z"):
        model.likelihood_dist("a", torch.randn(4, D), torch.randn(4, DP + 1))
    with pytest.raises(KeyError, match="'zz'"):
        model.likelihood_dist("zz", torch.randn(4, D), torch.randn(4, DP))
    with pytest.raises(ValueError, match="private_dim"):
        PrivateLatentVAE(small_modalities(), D, 0)


def test_gmm_prior_on_the_shared_latent():
    model = _model(prior="gmm", num_components=3)
    tr = poutine.trace(model).get_trace(small_batch(4))
    assert tr.nodes["z"]["value"].shape == (4, D)


def test_trains_with_beta_elbo():
    model = _model()
    guide = EquivariantSumPoolingGuide(small_modalities(), D, DP, feature_dim=8, hidden=(8,), width=8, pooled_dim=8)
    batch = small_batch(6)
    elbo = BetaELBO(num_particles=3, stl=True)
    loss_module = elbo(model, guide)
    params = list(loss_module.parameters())
    assert params
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_module(batch)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
