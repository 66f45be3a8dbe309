"""fit(compile=True): the traced and compiled step computes the eager step's loss and gradients from the
same random draws, trains and resumes as fit does, and refuses what it cannot trace faithfully."""

import shutil
import warnings

import pyro
import pytest
import torch
from torch import nn

from pyro_mmvae.errors import InputError, InputTypeError
from pyro_mmvae.data import iterate_batches
from pyro_mmvae.experiments.pi_tables.builders import build_elbo, build_guide, build_model, make_data
from pyro_mmvae.experiments.pi_tables.settings import Row
from pyro_mmvae.guides import SumPoolingGuide
from pyro_mmvae.infer import MaskedELBO
from pyro_mmvae.models import multimodal_model
from pyro_mmvae.nn.shared_encodings import without_module_registration
from pyro_mmvae.train import FitConfig, Member, fit, fit_ensemble
from pyro_mmvae.train.compiled_step import CompiledGradients, StepCompileError
from tests.models.test_function_model import data as function_data
from tests.models.test_function_model import MODS, make_program
from tests.train.test_fit import LINEAR, linear_data, linear_pair

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="Inductor needs a C++ compiler on CPU"
)


def table3(aggregator, prior="normal", n=200):
    data = make_data(3, "main", 0, n, 50, 500)
    torch.manual_seed(0)
    row = Row(aggregator, aggregator, prior=prior)
    model, guide = build_model(3, row, data.modalities), build_guide(3, row, data.modalities)
    return model, guide, data


def rows(dataset, n):
    return next(iter(iterate_batches(dataset, n, shuffle=False)))


def eager_step(objective, model, guide, batch, params, kwargs):
    for p in params:
        p.grad = None
    with pyro.validation_enabled(False), without_module_registration():
        loss = objective.differentiable_loss(model, guide, batch, **kwargs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


def assert_same_step(objective, model, guide, batch, kwargs=None, seed=3):
    """One compiled and one eager evaluation from the same RNG state: same loss, gradients and draws."""
    kwargs = kwargs or {"beta": 1.0}
    params = [p for m in (model, guide) for p in m.parameters()]
    compiled = CompiledGradients(objective, model, guide, params)
    torch.manual_seed(seed)
    loss = compiled(batch, kwargs)
    grads = [p.grad.clone() for p in params]
    after_compiled = torch.get_rng_state()
    torch.manual_seed(seed)
    eager_loss, eager_grads = eager_step(objective, model, guide, batch, params, kwargs)
    assert torch.equal(after_compiled, torch.get_rng_state())  # the graph drew exactly the eager draws
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * float(e.abs().max()) + 1e-7)
    return compiled


@pytest.mark.parametrize(
    "aggregator, prior, objective",
    [
        ("SumPooling", "normal", "masked"),
        ("PoE", "normal", "mixture"),
        ("SumPoolingMixture", "gmm", "masked"),  # mixture posterior with implicit reparameterisation gradients
    ],
)
def test_the_compiled_step_equals_the_eager_step(aggregator, prior, objective):
    model, guide, data = table3(aggregator, prior)
    batch = rows(data.train, 100)
    assert_same_step(build_elbo(objective, "uniform"), model, guide, batch)


def test_each_batch_shape_gets_its_own_graph_and_later_ones_run_eagerly():
    model, guide, data = table3("SumPooling")
    elbo = MaskedELBO()
    compiled = assert_same_step(elbo, model, guide, rows(data.train, 100))
    params = [p for m in (model, guide) for p in m.parameters()]
    torch.manual_seed(5)
    loss = compiled(rows(data.train, 37), {"beta": 1.0})  # a last, smaller batch: a second graph
    torch.manual_seed(5)
    eager_loss, _ = eager_step(elbo, model, guide, rows(data.train, 37), params, {"beta": 1.0})
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert len(compiled.graphs) == 2
    compiled.max_graphs = 2
    with pytest.warns(UserWarning, match="run eagerly"):
        assert compiled(rows(data.train, 100), {"beta": 0.5}) is None  # beta is part of the signature
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert compiled(rows(data.train, 100), {"beta": 0.25}) is None


def test_fit_compiled_trains_as_fit_does_and_resumes(tmp_path):
    settings = dict(epochs=3, batch_size=48, lr=1e-2, progress=False, grad_clip=1.0)  # 128 rows: a short last batch
    eager_model, eager_guide = linear_pair(0)
    eager = fit(eager_model, eager_guide, linear_data(), **settings)
    model, guide = linear_pair(0)
    compiled = fit(model, guide, linear_data(), compile=True, **settings)
    assert [h["train_loss"] for h in compiled.history] == pytest.approx(
        [h["train_loss"] for h in eager.history], rel=1e-5
    )
    for a, b in zip([*model.parameters(), *guide.parameters()], [*eager_model.parameters(), *eager_guide.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # killed after epoch 1, resumed: the run continues where the uninterrupted one went
    model, guide = linear_pair(0)
    fit(model, guide, linear_data(), compile=True, run_dir=tmp_path, **{**settings, "epochs": 1})
    model, guide = linear_pair(0)
    resumed = fit(model, guide, linear_data(), compile=True, run_dir=tmp_path, resume=True, **settings)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in compiled.history], rel=1e-5
    )


def test_a_guide_reading_tensor_values_in_python_is_refused():
    class Branching(SumPoolingGuide):
        def posterior(self, batch, subset=None):
            if batch.data["a"].sum() > 0:  # a Python decision on data: a graph would freeze one branch
                return super().posterior(batch, subset)
            return super().posterior(batch, subset)

    torch.manual_seed(0)
    model, _ = linear_pair(0)
    guide = Branching(LINEAR, 2, hidden=(8,))
    with pytest.raises(StepCompileError, match="could not trace.*compile=False"):
        fit(model, guide, linear_data(), objective=MaskedELBO(), epochs=1, batch_size=64, progress=False, compile=True)


def test_a_function_model_is_refused_rather_than_frozen():
    program, _ = make_program()
    model = multimodal_model(MODS, latent_dim=2)(program)
    guide = SumPoolingGuide(MODS, 2, hidden=(8,), width=16, pooled_dim=16)
    with pytest.raises(StepCompileError, match="freeze"):
        fit(model, guide, function_data(), objective=MaskedELBO(), epochs=1, batch_size=48, progress=False,
            compile=True)  # fmt: skip


def test_a_buffer_updated_by_the_loss_is_refused():
    torch.manual_seed(0)
    model, _ = linear_pair(0)
    encoders = {"a": nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 8)), "b": nn.Linear(2, 8)}
    guide = SumPoolingGuide(LINEAR, 2, feature_dim=8, width=16, pooled_dim=16, encoders=encoders)
    with pytest.raises(StepCompileError, match="buffer in place"):
        fit(model, guide, linear_data(), objective=MaskedELBO(), epochs=1, batch_size=64, progress=False, compile=True)


def test_compile_settings_are_checked():
    with pytest.raises(InputTypeError, match="compile must be True or False"):
        FitConfig(epochs=1, batch_size=8, compile="yes")
    with pytest.raises(InputError, match="fit_ensemble does not compile"):
        fit_ensemble([Member(*linear_pair(0), seed=0)], linear_data(), epochs=1, batch_size=32, progress=False,
                     compile=True)  # fmt: skip
