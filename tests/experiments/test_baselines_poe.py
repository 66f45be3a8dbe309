"""The product-of-experts baselines' builders on the toy dataset's networks, and their "z given S" samplers."""

import math

import pytest
import torch

from pyro_mmvae.data import CirclesSquares
from pyro_mmvae.experiments import baselines_poe as bp
from pyro_mmvae.train import fit

NAMES = list(bp.BASELINES)


@pytest.fixture(scope="module")
def toy_batch():
    return CirclesSquares("train", size=32, seed=0).__getitems__(list(range(32)))


@pytest.mark.parametrize("name", NAMES)
def test_builder_on_toy_trains_one_epoch_and_answers_every_subset(name, toy_batch):
    torch.manual_seed(0)
    model, guide, objective = bp.build_baseline(name, "toy", None, 2)
    assert model.names == ["square", "circle"] and guide.names == ["square", "circle"]
    result = fit(
        model, guide, CirclesSquares("train", size=64, seed=0), objective, epochs=1, batch_size=32, progress=False
    )
    assert math.isfinite(result.history[0]["train_loss"])
    sampler = bp.latent_sampler(name, model, guide)
    assert callable(sampler)
    for given in (["square"], ["circle"], ["square", "circle"]):
        z = sampler(toy_batch, given, 3)
        assert z.shape == (3, 32, 2) and bool(torch.isfinite(z).all()), given


def test_builders_accept_modality_names_and_reject_unknown_ones():
    model, guide, _ = bp.build_mvae("toy", ["circle"], 3)
    assert model.names == ["circle"] and guide.latent_dim == 3
    with pytest.raises(ValueError, match="no modality 'triangle'"):
        bp.build_mvae("toy", ["triangle"], 3)
    with pytest.raises(ValueError, match="unknown baseline"):
        bp.build_baseline("mmvae++", "toy", None, 2)
    with pytest.raises(ValueError, match="unknown modalities"):
        bp.build_mmjsd("toy", None, 2, encoders={"triangle": torch.nn.Identity()})


def test_settings_from_the_papers():
    _, jmvae_guide, jmvae = bp.build_jmvae("toy", None, 2, beta=2.5)
    assert (jmvae.alpha, jmvae.beta_ref) == (0.1, 2.5) and jmvae_guide.joint.merge is not None
    _, mopoe_guide, mopoe = bp.build_mopoe("toy", None, 2)
    assert mopoe_guide.include_empty is False and (mopoe.sampling, mopoe.kl) == ("stratified", "average")
    _, mvtcae_guide, mvtcae = bp.build_mvtcae("toy", None, 2)
    assert mvtcae.alpha == pytest.approx(5 / 6) and mvtcae_guide.use_prior_expert is False
    _, _, mvae = bp.build_mvae("toy", None, 2)
    assert mvae.num_subsets == 1
    schedule = bp.warmup_schedule(2.5, bp.JMVAE_WARMUP_EPOCHS)
    assert schedule(0) == pytest.approx(2.5 / 100) and schedule(99) == pytest.approx(2.5) and schedule.final == 2.5


def test_jmvae_mcmc_sampler_is_jnfs():
    from pyro_mmvae.infer import JNFLatents

    model, guide, _ = bp.build_jmvae("toy", None, 2)
    sampler = bp.latent_sampler_jmvae(model, guide, method="mcmc", mcmc_warmup=10)
    assert isinstance(sampler, JNFLatents) and sampler.experts is guide.experts
    with pytest.raises(ValueError, match="method"):
        bp.latent_sampler_jmvae(model, guide, method="nuts")


@pytest.mark.parametrize("name", NAMES)
def test_objective_trains_every_parameter_under_pyro_svi(name):
    """The objectives call guide methods directly; under SVI the guide's parameters must still be registered."""
    import pyro
    from pyro.infer import SVI
    from pyro.optim import Adam

    from tests.infer.baselines_common import LINEAR, linear_data, small_networks

    torch.manual_seed(0)
    encoders, decoders = small_networks()
    options = dict(heads=small_networks(out_dim=16)[0], head_dim=16) if name == "jmvae" else {}
    model, guide, objective = bp.build_baseline(name, "toy", LINEAR, 2, encoders=encoders, decoders=decoders, **options)
    svi = SVI(model, guide, Adam({"lr": 3e-3}), objective)
    batch = linear_data(64).full
    before = {k: v.detach().clone() for k, v in guide.state_dict().items()}
    losses = [svi.step(batch, beta=1.0) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    registered = {id(p) for p in pyro.get_param_store().values()}
    assert all(id(p) in registered for p in (*model.parameters(), *guide.parameters()))
    assert any(not torch.equal(before[k], v) for k, v in guide.state_dict().items())
