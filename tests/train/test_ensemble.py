"""fit_ensemble: every member of a vectorised ensemble ends exactly where its own ``fit`` ends."""

import pytest
import torch

from pyro_mmvae.errors import InputError, InputTypeError
from pyro_mmvae.train import Member, fit, fit_ensemble, members_from
from pyro_mmvae.train.member_randomness import MemberRandomness
from tests.train.test_fit import linear_data, linear_pair

SETTINGS = dict(batch_size=32, lr=1e-2, progress=False, grad_clip=1.0)


def params(*modules):
    return [t for m in modules for t in m.state_dict().values()]


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("extra", [dict(epochs=3), dict(epochs=6, early_stopping_patience=1, restore_best=True)])
def test_members_equal_their_lone_fits(float64, extra):
    seeds = [0, 1, 2]
    members = [Member(*linear_pair(s), seed=s) for s in seeds]
    res = fit_ensemble(members, linear_data(), val_data=linear_data(64, seed=1), **SETTINGS, **extra)
    assert res.failed == [] and res.seeds == seeds
    for s, m, mr in zip(seeds, members, res.members):
        model, guide = linear_pair(s)
        r = fit(model, guide, linear_data(), val_data=linear_data(64, seed=1), seed=s, **SETTINGS, **extra)
        for a, b in zip(params(model, guide), params(m.model, m.guide)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        assert r.best_epoch == mr.best_epoch and r.epochs_run == mr.epochs_run
        assert [h["train_loss"] for h in r.history] == pytest.approx([h["train_loss"] for h in mr.history], abs=1e-10)
    # different seeds really train different members
    assert any(not torch.equal(a, b) for a, b in zip(params(members[0].model), params(members[1].model)))


def test_members_from_seeds_the_builds():
    a, b = members_from(lambda s: linear_pair(s), [4, 4])
    assert all(torch.equal(x, y) for x, y in zip(params(a.model), params(b.model)))


def test_bad_members_are_named():
    model, guide = linear_pair(0)
    with pytest.raises(InputError, match="at least one member"):
        fit_ensemble([], linear_data(), epochs=1, batch_size=32, progress=False)
    with pytest.raises(InputError, match="member 1"):
        fit_ensemble(
            [Member(*linear_pair(0), seed=0), Member(*linear_pair(1, hidden=8), seed=1)],
            linear_data(),
            epochs=1,
            batch_size=32,
            progress=False,
        )
    with pytest.raises(InputError, match="same tensor"):
        fit_ensemble(
            [Member(model, guide, seed=0), Member(model, guide, seed=1)],
            linear_data(),
            epochs=1,
            batch_size=32,
            progress=False,
        )
    with pytest.raises(InputTypeError, match="member 0"):
        fit_ensemble(["not a member"], linear_data(), epochs=1, batch_size=32, progress=False)
    with pytest.raises(InputError, match="seed"):
        fit_ensemble([Member(*linear_pair(0), seed=-1)], linear_data(), epochs=1, batch_size=32, progress=False)


def test_member_randomness_draws_from_each_members_generator():
    mode = MemberRandomness([torch.Generator().manual_seed(s) for s in (3, 7)])

    def draw(x, generator=None):
        # entered inside vmap, as the ensemble does: the mode acts at the members' vmap level only
        with mode.at_level(torch._C._functorch.maybe_current_level()):
            kwargs = {} if generator is None else {"generator": generator}
            return x + torch.randn(4, **kwargs) + 0.0 * torch.rand_like(x)

    out = torch.func.vmap(draw)(torch.zeros(2, 4))
    expect = []
    for s in (3, 7):
        g = torch.Generator().manual_seed(s)
        expect.append(torch.randn(4, generator=g))
    torch.testing.assert_close(out, torch.stack(expect))
    # a second call continues each member's stream
    again = torch.func.vmap(draw)(torch.zeros(2, 4))
    assert not torch.equal(again, out)
    with pytest.raises(ValueError, match="generator"):
        torch.func.vmap(lambda x: draw(x, torch.Generator()))(torch.zeros(2, 4))


@pytest.mark.parametrize("aggregator", ["SumPooling", "PoE"])
def test_masked_objective_members_equal_lone_fits(aggregator):
    # float32 (the data are built in float32): batched and lone matrix products round differently
    from pyro_mmvae.experiments.pi_tables.builders import build_elbo, build_guide, build_model, make_data
    from pyro_mmvae.experiments.pi_tables.settings import Row

    data = make_data(3, "main", 0, 100, 20, 20).train
    row, mods = Row(aggregator, aggregator), data.modalities

    def build(seed):
        return build_model(3, row, mods), build_guide(3, row, mods)

    settings = dict(epochs=2, batch_size=32, lr=1e-3, progress=False)
    members = members_from(build, [0, 1])
    res = fit_ensemble(members, data, build_elbo("masked", "paper"), **settings)
    assert res.failed == []
    for seed, m in zip([0, 1], members):
        (lone,) = members_from(build, [seed])
        fit(lone.model, lone.guide, data, build_elbo("masked", "paper"), seed=seed, **settings)
        for a, b in zip(params(lone.model, lone.guide), params(m.model, m.guide)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


RUN = """
import sys, torch
from pyro_mmvae.train import Member, fit_ensemble
from tests.train.test_fit import linear_data, linear_pair
torch.set_default_dtype(torch.float64)
members = [Member(*linear_pair(s), seed=s) for s in (0, 1)]
fit_ensemble(members, linear_data(), epochs=4, batch_size=32, lr=1e-2, progress=False, run_dir=sys.argv[1],
             resume=len(sys.argv) > 2)
torch.save([m.model.state_dict() for m in members], sys.argv[1] + "/final.pt")
"""


def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path):
    import os
    import subprocess
    import sys

    root = str(__import__("pathlib").Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": root}

    def run(folder, *extra, kill=None):
        e = dict(env, PYRO_MMVAE_KILL_AT=kill) if kill else env
        return subprocess.run([sys.executable, "-c", RUN, str(folder), *extra], env=e, cwd=root, capture_output=True)

    assert run(tmp_path / "a").returncode == 0
    killed = run(tmp_path / "b", kill="ensemble_step:6")  # mid epoch 2 (4 steps per epoch)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    saved = list((tmp_path / "b").glob("*/ensemble.pt"))
    assert len(saved) == 1 and torch.load(saved[0], weights_only=False)["epoch"] == 1  # epoch 1 done, 2 lost
    done = run(tmp_path / "b", "resume")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    a, b = torch.load(tmp_path / "a" / "final.pt"), torch.load(tmp_path / "b" / "final.pt")
    for sa, sb in zip(a, b):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
