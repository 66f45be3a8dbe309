"""FlowExpertGuide: shapes, directions, the Gaussian variant, missing modalities, JNF-Shared projectors."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_mmvae.guides.flow import FlowExpertGuide
from pyro_mmvae.nn.networks import GaussianHead
from pyro_mmvae.nn.projectors import FrozenProjector, make_projector
from tests.common import small_batch, small_modalities

D = 3
FLOWS = [("maf", False), ("maf", True), ("coupling", False), ("coupling", True)]
FLOW_IDS = ["maf", "maf-cond", "coupling", "coupling-cond"]


def make_guide(flow="maf", conditional=False, num_blocks=2, **kw):
    torch.manual_seed(0)
    return FlowExpertGuide(
        small_modalities(),
        D,
        flow=flow,
        num_blocks=num_blocks,
        flow_hidden=(8,),
        conditional=conditional,
        hidden=(16,),
        identity_init=False,
        **kw,
    )


@pytest.mark.parametrize("flow,conditional", FLOWS, ids=FLOW_IDS)
@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_expert_shapes_and_arbitrary_z(flow, conditional, name):
    guide, batch = make_guide(flow, conditional), small_batch(6)
    q = guide.expert(batch, name)
    assert q.batch_shape == (6,) and q.event_shape == (D,)
    z = torch.randn(4, 6, D)  # (C, N, D): chains × data points
    lp = q.log_prob(z)
    assert lp.shape == (4, 6) and torch.isfinite(lp).all()
    zs = q.rsample((2,))
    assert zs.shape == (2, 6, D)
    zs.sum().backward()  # rsample is differentiable in both directions
    assert any(p.grad is not None for p in guide.flows[name].parameters())


def test_posterior_is_the_expert_and_needs_one_modality():
    guide, batch = make_guide(), small_batch(5)
    z = torch.randn(5, D)
    for subset in ("a", {"a"}, ["a"]):
        torch.testing.assert_close(guide.posterior(batch, subset).log_prob(z), guide.expert(batch, "a").log_prob(z))
    with pytest.raises(ValueError, match="ONE modality"):
        guide.posterior(batch)
    with pytest.raises(ValueError, match="ONE modality"):
        guide.posterior(batch, ["a", "b"])
    with pytest.raises(KeyError, match="unknown modality"):
        guide.expert(batch, "zzz")


def test_gaussian_variant_is_the_plain_gaussian_expert():
    guide, batch = make_guide(num_blocks=0), small_batch(5)
    q = guide.expert(batch, "a")
    assert isinstance(q, dist.Independent) and isinstance(q.base_dist, dist.Normal)
    loc, scale = GaussianHead()(guide.encoders["a"](batch.data["a"]))
    torch.testing.assert_close(q.base_dist.loc, loc)
    torch.testing.assert_close(q.base_dist.scale, scale)
    assert not list(guide.flows.parameters())


def test_identity_init_starts_at_the_gaussian_expert():
    torch.manual_seed(0)
    kw = dict(flow_hidden=(8,), hidden=(16,))
    flow = FlowExpertGuide(small_modalities(), D, **kw)
    gauss = FlowExpertGuide(small_modalities(), D, num_blocks=0, **kw)
    gauss.encoders.load_state_dict(flow.encoders.state_dict())
    batch, z = small_batch(5), torch.randn(2, 5, D)
    torch.testing.assert_close(flow.expert(batch, "b").log_prob(z), gauss.expert(batch, "b").log_prob(z))


def test_guide_program_samples_site_z():
    guide, batch = make_guide("coupling"), small_batch(5)
    tr = poutine.trace(guide).get_trace(batch, subset="a", beta=0.5)
    site = tr.nodes["z"]
    assert site["value"].shape == (5, D)
    assert site["scale"] == 0.5
    with pyro.plate("particles", 3, dim=-2):
        tr = poutine.trace(guide).get_trace(batch, subset="c")
    assert tr.nodes["z"]["value"].shape == (3, 5, D)


def test_missing_rows_still_give_a_distribution():
    present = {"a": torch.tensor([True, False, True, False])}
    guide, batch = make_guide(), small_batch(4, present=present)
    q = guide.expert(batch, "a")
    assert q.batch_shape == (4,) and torch.isfinite(q.log_prob(torch.randn(4, D))).all()
    # missing in every row: still a full-shape distribution (callers mask with batch.present) ...
    nowhere = small_batch(4, present={"a": torch.zeros(4, dtype=torch.bool)})
    assert guide.expert(nowhere, "a").batch_shape == (4,)
    # ... and expert_dists() leaves such a modality out by default
    assert sorted(guide.expert_dists(nowhere)) == ["b", "c"]
    with pytest.raises(KeyError, match="not in the batch"):
        guide.expert(batch.select(["b", "c"]), "a")


def test_experts_module_holds_encoders_and_flows():
    guide, _ = shared_guide()
    experts = guide.experts
    assert {id(p) for p in experts.parameters()} == {id(p) for p in guide.parameters()}
    guide.eval()
    experts.train()
    assert guide.encoders["c"].training and guide.flows["a"].training
    assert not guide.encoders["a"][0].training  # the frozen projector stays in eval mode


def test_float64_guide():
    guide = make_guide("maf", True).to(torch.float64)
    batch = small_batch(4).to(dtype=torch.float64)
    q = guide.expert(batch, "a")
    s = q.rsample((2,))
    assert s.dtype == torch.float64 and q.log_prob(s).dtype == torch.float64


def test_encoder_output_shape_is_checked():
    guide = make_guide(encoders={"a": nn.Linear(5, 7)})
    with pytest.raises(ValueError, match="encoder of 'a' returned shape"):
        guide.expert(small_batch(3), "a")
    with pytest.raises(KeyError, match="unknown modalities"):
        make_guide(encoders={"nope": nn.Linear(5, 6)})
    with pytest.raises(KeyError, match="unknown modalities"):
        make_guide(project={"nope": nn.Linear(5, 6)})


# ---------------------------------------------------------------- JNF-Shared


def shared_guide(k=4):
    mods = small_modalities()
    torch.manual_seed(1)
    projectors = {"a": make_projector(mods[0], k, hidden=(8,)), "b": make_projector(mods[1], k, hidden=(8,))}
    guide = FlowExpertGuide(mods, D, flow_hidden=(8,), hidden=(16,), project=projectors, identity_init=False)
    return guide, projectors


def test_projected_encoder_architecture():
    guide, projectors = shared_guide(k=4)
    enc = guide.encoders["a"]
    assert isinstance(enc[0], FrozenProjector) and enc[0].projector is projectors["a"]
    linears = [m for m in enc[1] if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 512), (512, 512), (512, 2 * D)]
    assert guide.projected == ["a", "b"]
    assert not any(isinstance(m, FrozenProjector) for m in guide.encoders["c"].modules())  # c is not projected


def test_projectors_stay_frozen_while_the_guide_trains():
    guide, projectors = shared_guide()
    guide.train()
    assert not projectors["a"].training and not projectors["b"].training
    assert all(not p.requires_grad for p in projectors["a"].parameters())
    trainable = {id(p) for p in guide.trainable_parameters()}
    assert not trainable & {id(p) for p in projectors["a"].parameters()}
    batch = small_batch(6)
    loss = -guide.expert(batch, "a").log_prob(torch.randn(6, D)).mean()
    loss.backward()
    assert all(p.grad is None for p in projectors["a"].parameters())
    assert guide.encoders["a"][1][0].weight.grad is not None
    # q_a reads x_a only through g_a(x_a)
    with torch.no_grad():
        expected = guide.encoders["a"][1](projectors["a"](batch.data["a"]))
        torch.testing.assert_close(guide.encode(batch, "a"), expected)


def test_frozen_projector_needs_an_output_size():
    with pytest.raises(ValueError, match="out_dim"):
        FrozenProjector(nn.Identity())
    g = FrozenProjector(nn.Linear(3, 2), out_dim=2)
    assert g(torch.randn(5, 3)).shape == (5, 2)
