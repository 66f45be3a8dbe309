"""Missing rows may hold anything: they change neither a loss value nor a gradient; validation runs once.

Each test compares a batch whose missing rows hold NaN / inf / 1e30 / an impossible class with the
same batch holding zeros there: bit-equal losses and gradients (BetaELBO, MaskedELBO) and bit-equal
trained parameters (``fit``). The user's tensors are left as they were.
"""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_mmvae.data import MultimodalBatch, MultimodalDataset, validation
from pyro_mmvae.errors import InputError
from pyro_mmvae.guides import JointGuide, MoPoEGuide
from pyro_mmvae.infer.elbo import BetaELBO
from pyro_mmvae.infer.masked import MaskedELBO
from pyro_mmvae.models import MultimodalVAE
from pyro_mmvae.train import fit
from tests.common import small_batch, small_modalities

B = 6
PRESENT = {
    "a": torch.tensor([True, False, True, True, False, True]),
    "b": torch.tensor([False, True, True, False, True, True]),
    "c": torch.tensor([True, True, False, True, True, False]),
}


def pair(guide_kind: str = "joint", seed: int = 0):
    torch.manual_seed(seed)
    mods = small_modalities()
    model = MultimodalVAE(mods, latent_dim=2, hidden=(8,))
    if guide_kind == "joint":
        guide = JointGuide(mods, latent_dim=2, head_dim=4, merge_hidden=(8,), hidden=(8,))
    else:
        guide = MoPoEGuide(mods, latent_dim=2, hidden=(8,))
    return model, guide


def clean_and_dirty(fill: str) -> tuple[MultimodalBatch, MultimodalBatch]:
    """The same batch with zeros / with garbage (``"nan"``, ``"huge"``) in every missing row."""
    base = small_batch(B, present=PRESENT)
    clean, dirty = {}, {}
    bad_float = {"nan": float("nan"), "huge": 1e30}[fill]
    for name, x in base.data.items():
        keep = PRESENT[name].reshape(-1, *([1] * (x.dim() - 1)))
        clean[name] = torch.where(keep, x, torch.zeros_like(x))
        bad = torch.full_like(x, 999) if name == "c" else torch.full_like(x, bad_float)
        if name == "b" and fill == "huge":
            bad = torch.full_like(x, float("inf"))
        dirty[name] = torch.where(keep, x, bad)
    return MultimodalBatch(clean, dict(PRESENT)), MultimodalBatch(dirty, dict(PRESENT))


def loss_and_grads(objective, batch, guide_kind="joint"):
    model, guide = pair(guide_kind)
    pyro.set_rng_seed(1)
    loss = objective.differentiable_loss(model, guide, batch)
    loss.backward()
    params = [*model.parameters(), *guide.parameters()]
    return loss.detach(), [None if p.grad is None else p.grad.clone() for p in params]


def assert_bit_equal(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert torch.isfinite(loss_a) and torch.equal(loss_a, loss_b)
    assert len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b):
        assert (ga is None) == (gb is None)
        if ga is not None:
            assert torch.isfinite(ga).all() and torch.equal(ga, gb)


@pytest.mark.parametrize("fill", ["nan", "huge"])
@pytest.mark.parametrize(
    "objective, guide_kind",
    [(BetaELBO, "joint"), (lambda: BetaELBO(num_particles=3), "mopoe"), (MaskedELBO, "joint"), (MaskedELBO, "mopoe")],
    ids=["beta-joint", "beta3-mopoe", "masked-joint", "masked-mopoe"],
)
def test_missing_rows_change_neither_loss_nor_gradients(objective, guide_kind, fill):
    clean, dirty = clean_and_dirty(fill)
    kept = {k: v.clone() for k, v in dirty.data.items()}
    assert_bit_equal(loss_and_grads(objective(), clean, guide_kind), loss_and_grads(objective(), dirty, guide_kind))
    for k, v in dirty.data.items():  # the user's tensors are untouched
        assert torch.equal(v.nan_to_num(), kept[k].nan_to_num()) and torch.equal(v.isnan(), kept[k].isnan())


def test_missing_rows_do_not_affect_a_plain_module_loop():
    """Tutorial-style loop: ``BetaELBO()(model, guide)`` and a torch optimizer, NaN in missing rows."""
    clean, dirty = clean_and_dirty("nan")
    results = []
    for batch in (clean, dirty):
        model, guide = pair()
        pyro.set_rng_seed(0)
        loss_fn = BetaELBO()(model, guide)
        opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            loss = loss_fn(batch)
            loss.backward()
            opt.step()
        results.append([p.detach().clone() for p in [*model.parameters(), *guide.parameters()]])
    assert all(torch.isfinite(p).all() and torch.equal(p, q) for p, q in zip(*results))


@pytest.mark.parametrize("objective", [BetaELBO, MaskedELBO])
def test_fit_with_garbage_in_missing_rows_trains_bit_identically(objective):
    clean, dirty = clean_and_dirty("nan")
    states = []
    for data in ([clean, clean[:3]], [dirty, dirty[:3]]):  # lists of batches: nothing zeroes them before fit
        model, guide = pair()
        fit(model, guide, data, objective(), epochs=2, batch_size=B, seed=3)
        states.append({**model.state_dict(), **{f"g.{k}": v for k, v in guide.state_dict().items()}})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def count_checks(monkeypatch) -> list:
    calls = []
    original = validation._check_structure

    def counting(batch, key, what):
        calls.append(what)
        return original(batch, key, what)

    monkeypatch.setattr(validation, "_check_structure", counting)
    return calls


@pytest.mark.parametrize("objective", [BetaELBO, MaskedELBO])
def test_validation_runs_once_per_batch_in_fit(monkeypatch, objective):
    calls = count_checks(monkeypatch)
    model, guide = pair()
    ds, val = (MultimodalDataset(small_batch(8, seed=s).data) for s in (0, 1))
    fit(model, guide, ds, objective(), epochs=2, batch_size=4, val_data=val)
    # once for each dataset up front, then once per batch: 2 epochs x (2 train + 2 val) batches
    assert calls.count("train_data") == 1 + 4 and calls.count("val_data") == 1 + 4
    assert len(calls) == 10  # no objective, trace helper or guide.posterior validated again


def test_validation_is_cached_on_the_batch_and_redone_after_a_change(monkeypatch):
    calls = count_checks(monkeypatch)
    model, guide = pair()
    _, dirty = clean_and_dirty("nan")
    for _ in range(3):
        BetaELBO().differentiable_loss(model, guide, dirty)
        guide.posterior(dirty, ["a"])
    assert len(calls) == 1
    safe = validation.validate_for(dirty, model, guide)
    assert safe is not dirty and safe is validation.validate_for(safe, model, guide) and len(calls) == 1
    dirty.data["a"][0, 0] = float("nan")  # row 0 of "a" is present: an in-place change is seen
    with pytest.raises(InputError, match=r"'a' has NaN/inf values in present rows \[0\]"):
        BetaELBO().differentiable_loss(model, guide, dirty)
