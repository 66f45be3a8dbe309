"""One encoding per modality per loss evaluation: the subset objectives give the same values and gradients.

``draw_subset_terms`` runs the guide for S, for M and again for S inside ``shared_encodings()``: each
modality is encoded once (inputs zeroed only where missing) and reused. The aggregators ignore the
entries outside S, so the loss and every gradient must equal the unshared computation, in which each
guide run encodes inputs zeroed outside its own subset.
"""

import contextlib

import pyro
import pytest
import torch

from pyro_mmvae.guides.aggregation import MoEGuide, MoPoEGuide, PoEGuide, SelfAttentionGuide, SumPoolingGuide
from pyro_mmvae.guides.equivariant import EquivariantSelfAttentionGuide
from pyro_mmvae.infer.masked import TCELBO, MaskedELBO
from pyro_mmvae.models import MultimodalVAE
from pyro_mmvae.models.private import PrivateLatentVAE
from pyro_mmvae.nn import shared_encodings as se

from .test_masked_with_aggregation import ATTN, MODS, POOL, batch_with_missing


def pairs():
    torch.manual_seed(0)
    yield "poe", MultimodalVAE(MODS, 2, hidden=(8,)), PoEGuide(MODS, 2, hidden=(8,))
    yield "moe", MultimodalVAE(MODS, 2, hidden=(8,)), MoEGuide(MODS, 2, hidden=(8,))
    yield "mopoe", MultimodalVAE(MODS, 2, hidden=(8,)), MoPoEGuide(MODS, 2, hidden=(8,))
    yield "sum_pooling", MultimodalVAE(MODS, 2, hidden=(8,)), SumPoolingGuide(MODS, 2, feature_dim=6, **POOL)
    yield "self_attention", MultimodalVAE(MODS, 2, hidden=(8,)), SelfAttentionGuide(MODS, 2, feature_dim=8, **ATTN)
    model = PrivateLatentVAE(MODS, 2, 2, hidden=(8,))
    yield "eq_self_attention", model, EquivariantSelfAttentionGuide(MODS, 2, 2, feature_dim=8, **ATTN)


def loss_and_grads(elbo, model, guide, batch, mask, shared: bool):
    pyro.set_rng_seed(3)
    model.zero_grad(set_to_none=True)
    guide.zero_grad(set_to_none=True)
    with contextlib.nullcontext() if shared else se.no_shared_encodings():  # off: every guide run encodes afresh
        loss = elbo.differentiable_loss(model, guide, batch, mask=mask)
    loss.backward()
    params = [*model.named_parameters(), *guide.named_parameters()]
    return loss.detach(), {n: p.grad.clone() for n, p in params if p.grad is not None}


@pytest.mark.parametrize("elbo", [MaskedELBO(num_particles=2), TCELBO()], ids=["masked", "tc"])
@pytest.mark.parametrize("name,model,guide", list(pairs()), ids=[p[0] for p in pairs()])
def test_shared_encodings_change_no_value_or_gradient(elbo, name, model, guide):
    batch = batch_with_missing()
    batch.data["b"][~batch.present["b"]] = float("nan")  # missing rows hold anything
    mask = {"a": torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool), "b": batch.present["b"]}
    mask["c"] = torch.zeros(6, dtype=torch.bool)
    shared_loss, shared_grads = loss_and_grads(elbo, model, guide, batch, mask, True)
    loss, grads = loss_and_grads(elbo, model, guide, batch, mask, False)
    assert torch.isfinite(shared_loss)
    torch.testing.assert_close(shared_loss, loss, rtol=1e-5, atol=1e-6)
    assert shared_grads.keys() == grads.keys()
    for key in grads:
        torch.testing.assert_close(shared_grads[key], grads[key], rtol=1e-4, atol=1e-6, msg=key)


def test_each_modality_is_encoded_once_per_loss_evaluation():
    model, guide = MultimodalVAE(MODS, 2, hidden=(8,)), SumPoolingGuide(MODS, 2, feature_dim=6, **POOL)
    calls = []
    for name, enc in guide.encoders.encoders.items():
        enc.register_forward_hook(lambda *args, name=name: calls.append(name))
    MaskedELBO().differentiable_loss(model, guide, batch_with_missing())
    assert sorted(calls) == ["a", "b", "c"]
    calls.clear()
    guide.posterior(batch_with_missing(), ["a"])  # outside an objective: no cache
    guide.posterior(batch_with_missing(), ["a"])
    assert len(calls) == 6


def test_the_cache_lives_for_its_block_only():
    with se.shared_encodings():
        assert se.in_shared_block()
        first = se.cached(("k",), lambda: torch.ones(1))
        assert se.cached(("k",), lambda: torch.zeros(1)) is first
        with se.shared_encodings():  # nested: the same cache
            assert se.cached(("k",), lambda: torch.zeros(1)) is first
    assert not se.in_shared_block()
    assert se.cached(("k",), lambda: torch.zeros(1)).item() == 0.0
    with se.no_shared_encodings(), se.shared_encodings():  # switched off wins
        assert not se.in_shared_block()


@pytest.mark.parametrize("name,model,guide", list(pairs()), ids=[p[0] for p in pairs()])
def test_svi_still_trains_every_parameter_when_networks_register_once_per_loss(name, model, guide):
    # inside the objective's block each network is registered with pyro.module once: SVI's parameter
    # capture must still see, and its optimizer step, every parameter of model and guide
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    before = {id(p): p.detach().clone() for p in [*model.parameters(), *guide.parameters()]}
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=MaskedELBO())
    svi.step(batch_with_missing())
    stored = {id(p) for p in pyro.get_param_store().values()}
    assert stored == set(before)
    changed = [not torch.equal(before[id(p)], p.detach()) for p in [*model.parameters(), *guide.parameters()]]
    assert sum(changed) >= 0.9 * len(changed)  # a few biases may get exactly zero gradient on 6 rows


def test_a_network_read_twice_in_a_block_is_registered_once():
    guide = SumPoolingGuide(MODS, 2, feature_dim=6, **POOL)

    class CountParams(pyro.poutine.messenger.Messenger):
        count = 0

        def _pyro_param(self, msg):
            CountParams.count += 1

    def param_messages(shared: bool) -> int:
        CountParams.count = 0
        with CountParams(), se.shared_encodings() if shared else contextlib.nullcontext():
            guide(batch_with_missing())
            guide(batch_with_missing(), ["a"])
        return CountParams.count

    assert param_messages(True) == len(list(guide.parameters()))
    assert param_messages(False) > 2 * len(list(guide.parameters()))  # outside a block: every read registers


@pytest.mark.parametrize("name,model,guide", list(pairs()), ids=[p[0] for p in pairs()])
def test_without_module_registration_no_param_site_and_the_same_loss_and_gradients(name, model, guide):
    # fit's mode: its optimizer holds the parameters, so the networks skip pyro.module
    params = []

    class RecordParams(pyro.poutine.messenger.Messenger):
        def _pyro_param(self, msg):
            params.append(msg["name"])

    batch, elbo = batch_with_missing(), MaskedELBO(num_particles=2)
    mask = {"a": torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool), "b": batch.present["b"]}
    mask["c"] = torch.zeros(6, dtype=torch.bool)
    pyro.clear_param_store()
    with RecordParams(), se.without_module_registration():
        unregistered, grads = loss_and_grads(elbo, model, guide, batch, mask, True)
    module_params = {id(p) for m in [model, guide] for mod in m.modules() if not isinstance(mod, pyro.nn.PyroModule)
                     for p in mod.parameters(recurse=False)}  # fmt: skip
    stored = {id(p) for p in pyro.get_param_store().values()}
    assert not stored & module_params  # the store never saw a plain network's parameter
    assert len(params) < len(module_params)
    with RecordParams():
        params.clear()
        registered, registered_grads = loss_and_grads(elbo, model, guide, batch, mask, True)
    assert len(params) >= len(module_params)
    assert torch.equal(unregistered, registered)
    assert grads.keys() == registered_grads.keys()
    for key in grads:
        assert torch.equal(grads[key], registered_grads[key]), key
