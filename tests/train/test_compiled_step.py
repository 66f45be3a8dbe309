"""fit(compile=True): the traced and compiled step computes the eager step's loss and gradients from the
same random draws, trains and resumes as fit does, and refuses what it cannot trace faithfully."""

import shutil
import warnings

import pyro
import pytest
import torch
from torch import nn

from pyro_mmvae.data import MultimodalBatch, iterate_batches
from pyro_mmvae.errors import InputError, InputTypeError
from pyro_mmvae.experiments import recipes
from pyro_mmvae.experiments.datasets import load_splits
from pyro_mmvae.experiments.pi_tables.builders import build_elbo, build_guide, build_model, make_data
from pyro_mmvae.experiments.pi_tables.settings import Row
from pyro_mmvae.experiments.runs import RunConfig, run_modalities
from pyro_mmvae.guides import SumPoolingGuide
from pyro_mmvae.infer import BetaELBO, MaskedELBO
from pyro_mmvae.models import multimodal_model
from pyro_mmvae.nn.shared_encodings import without_module_registration
from pyro_mmvae.train import FitConfig, Member, fit, fit_ensemble
from pyro_mmvae.train.compiled_step import CompiledGradients, StepCompileError
from tests.models.test_function_model import MODS, make_program
from tests.models.test_function_model import data as function_data
from tests.train.test_fit import LINEAR, linear_data, linear_pair

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="Inductor needs a C++ compiler on CPU"
)


@pytest.fixture
def compiled_calls(monkeypatch):
    """The values every CompiledGradients call returned (None: that step ran eagerly)."""
    calls = []
    call = CompiledGradients.__call__
    monkeypatch.setattr(CompiledGradients, "__call__", lambda *a: calls.append(call(*a)) or calls[-1])
    return calls


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


def assert_same_step(objective, model, guide, batch, kwargs=None, seed=3, tol=1e-4):
    """One compiled and one eager evaluation from the same RNG state: same loss, gradients and draws
    (``tol``: relative to each gradient's largest element; float32 sums in another order differ by ~1e-5)."""
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
    torch.testing.assert_close(loss, eager_loss, rtol=tol / 10, atol=tol / 10)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=tol, atol=tol * float(e.abs().max()) + 1e-7)
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


@pytest.mark.parametrize("name", ["mmvae", "jmvae"])
def test_the_baselines_compile_on_batches_with_missing_rows(name):
    """Objectives that skip a modality observed in no row (a decision on values) trace under the guarantee
    that every modality is observed somewhere; a batch breaking it runs eagerly."""
    splits = load_splits("toy", None, train_size=64, val_size=0, seed=0, missing_rate=0.3)
    settings = RunConfig(dataset="toy", model=name, batch_size=16, train_size=64, val_size=0).settings()
    torch.manual_seed(0)
    model, guide, objective = recipes.build_main_stage(name, "toy", run_modalities("toy", settings), settings)
    batch = rows(splits.train, 16)
    assert not all(bool(p.all()) for p in batch.present.values())  # some rows miss a modality
    # float64: ten importance particles per modality make float32 sum orders differ by ~1e-4
    model.double(), guide.double()
    batch = MultimodalBatch({k: v.double() for k, v in batch.data.items()}, batch.present, batch.labels)
    compiled = assert_same_step(objective, model, guide, batch, tol=1e-9)
    unobserved = MultimodalBatch(batch.data, {**batch.present, "circle": torch.zeros(16, dtype=torch.bool)})
    unobserved.present["square"] = torch.ones(16, dtype=torch.bool)
    assert compiled(unobserved, {"beta": 1.0}) is None


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


def test_fit_compiled_trains_as_fit_does_and_resumes(tmp_path, compiled_calls):
    settings = dict(epochs=3, batch_size=48, lr=1e-2, progress=False, grad_clip=1.0)  # 128 rows: a short last batch
    eager_model, eager_guide = linear_pair(0)
    eager = fit(eager_model, eager_guide, linear_data(), **settings)
    model, guide = linear_pair(0)
    compiled_steps = compiled_calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to eager
        compiled = fit(model, guide, linear_data(), compile=True, **settings)
    assert len(compiled_steps) == 3 * 3 - 1 and all(v is not None for v in compiled_steps)  # all but the first step
    assert [h["train_loss"] for h in compiled.history] == pytest.approx(
        [h["train_loss"] for h in eager.history], rel=1e-5
    )
    for a, b in zip([*model.parameters(), *guide.parameters()], [*eager_model.parameters(), *eager_guide.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # killed after epoch 1, resumed: the run continues where the uninterrupted one went
    model, guide = linear_pair(0)
    fit(model, guide, linear_data(), compile=True, run_dir=tmp_path, **{**settings, "epochs": 1})
    model, guide = linear_pair(0)
    compiled_steps.clear()
    resumed = fit(model, guide, linear_data(), compile=True, run_dir=tmp_path, resume=True, **settings)
    assert len(compiled_steps) == 2 * 3 - 1 and all(v is not None for v in compiled_steps)  # resumed run compiles
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in compiled.history], rel=1e-5
    )


def fit_both(model_and_guide, data, reason, **settings):
    """fit with compile=True warns ``reason`` and trains exactly as compile=False does; returns both results."""
    settings = dict(objective=MaskedELBO(), epochs=2, progress=False, **settings)
    model, guide = model_and_guide()
    with pytest.warns(UserWarning, match=f"{reason}.*fit trains this run eagerly"):
        compiled = fit(model, guide, data, compile=True, **settings)
    states = [m.state_dict() for m in (model, guide)]
    model, guide = model_and_guide()
    eager = fit(model, guide, data, **settings)
    assert [h["train_loss"] for h in compiled.history] == [h["train_loss"] for h in eager.history]
    for a, b in zip(states, [m.state_dict() for m in (model, guide)]):
        assert all(torch.equal(a[k], b[k]) for k in a)  # nothing frozen, no buffer left behind
    return compiled, eager


def test_a_guide_reading_tensor_values_in_python_trains_eagerly_with_a_warning():
    class Branching(SumPoolingGuide):
        def posterior(self, batch, subset=None):
            if batch.data["a"].sum() > 0:  # a Python decision on data: a graph would freeze one branch
                return super().posterior(batch, subset)
            return super().posterior(batch, subset)

    def build():
        torch.manual_seed(0)
        return linear_pair(0)[0], Branching(LINEAR, 2, hidden=(8,), width=16, pooled_dim=16)

    fit_both(build, linear_data(), "could not trace.*test_compiled_step.py", batch_size=64)
    model, guide = build()
    compiled = CompiledGradients(MaskedELBO(), model, guide, list(guide.parameters()))
    with pytest.raises(StepCompileError, match="may not read tensor values"):
        compiled(rows(linear_data(), 64), {"beta": 1.0})


def test_only_the_traced_batch_is_known_to_observe_every_modality():
    # a batch derived inside the step may observe a modality in no row: its observed_names must read values
    class Derived(SumPoolingGuide):
        def posterior(self, batch, subset=None):
            # ["b"] in every eager step; a graph that took ["a", "b"] would encode another subset
            names = batch.with_missing(["a"]).observed_names(self.names)
            return super().posterior(batch, names if subset is None else subset)

    def build():
        torch.manual_seed(0)
        return linear_pair(0)[0], Derived(LINEAR, 2, hidden=(8,), width=16, pooled_dim=16)

    fit_both(build, linear_data(), "could not trace", batch_size=64)


def test_a_function_model_trains_eagerly_rather_than_frozen():
    def build():
        pyro.clear_param_store()
        program, _ = make_program()
        return multimodal_model(MODS, latent_dim=2)(program), SumPoolingGuide(MODS, 2, hidden=(8,), width=16,
                                                                               pooled_dim=16)  # fmt: skip

    fit_both(build, function_data(), "freeze", batch_size=48)


def test_a_buffer_updated_by_the_loss_trains_eagerly():
    def build():
        torch.manual_seed(0)
        encoders = {"a": nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 8)), "b": nn.Linear(2, 8)}
        guide = SumPoolingGuide(LINEAR, 2, feature_dim=8, width=16, pooled_dim=16, encoders=encoders)
        return linear_pair(0)[0], guide

    fit_both(build, linear_data(), "buffer in place", batch_size=64)


def test_compile_settings_are_checked():
    with pytest.raises(InputTypeError, match="compile must be True or False"):
        FitConfig(epochs=1, batch_size=8, compile="yes")
    with pytest.raises(InputError, match="contradict"):
        FitConfig(epochs=1, batch_size=8, compile=True, validate_distributions="always")
    with pytest.raises(InputError, match="fit_ensemble does not compile"):
        fit_ensemble([Member(*linear_pair(0), seed=0)], linear_data(), epochs=1, batch_size=32, progress=False,
                     compile=True)  # fmt: skip


def test_fit_compiled_with_frozen_parameters_and_a_beta_schedule(compiled_calls):
    from pyro_mmvae.train.schedules import LinearAnnealing

    settings = dict(epochs=4, batch_size=64, lr=1e-2, progress=False, beta=LinearAnnealing(0.1, 1.0, 2))
    results = []
    for compile_step in (False, True):
        model, guide = linear_pair(0)
        frozen = [p.detach().clone() for p in model.parameters()]
        results.append(fit(model, guide, linear_data(), params=guide, compile=compile_step, **settings))
        assert all(torch.equal(a, p) for a, p in zip(frozen, model.parameters()))  # the model stayed frozen
    assert len(compiled_calls) == 2 * 2 and all(v is not None for v in compiled_calls)  # epochs 3-4 compiled
    eager, compiled = ([h["train_loss"] for h in r.history] for r in results)
    assert compiled[:2] == eager[:2]  # the annealing epochs run eagerly: the same numbers exactly
    assert compiled == pytest.approx(eager, rel=1e-5)


def test_a_parameter_the_loss_ignores_keeps_no_gradient(compiled_calls):
    """Eager autograd leaves an unused parameter's gradient None (AdamW then neither steps nor decays it)."""
    settings = dict(epochs=2, batch_size=64, lr=1e-2, progress=False, optimizer="adamw", zero_nan_grads=True,
                    grad_clip_value=10.0, optimizer_kwargs={"weight_decay": 0.1})  # fmt: skip
    results = []
    for compile_step in (False, True):
        model, guide = linear_pair(0)
        guide.unused = nn.Parameter(torch.ones(3))
        results.append(fit(model, guide, linear_data(), compile=compile_step, **settings))
        assert torch.equal(guide.unused, torch.ones(3)) and guide.unused.grad is None
    assert compiled_calls and all(v is not None for v in compiled_calls)
    eager, compiled = ([h["train_loss"] for h in r.history] for r in results)
    assert compiled == pytest.approx(eager, rel=1e-5)


def test_the_graph_treats_gradients_as_clip_gradients_does():
    from pyro_mmvae.train.loop import clip_gradients

    model, guide, data = table3("PoE")
    batch, params = rows(data.train, 100), [p for m in (model, guide) for p in m.parameters()]
    compiled = CompiledGradients(MaskedELBO(), model, guide, params, zero_nan_grads=True, grad_clip_value=0.05)
    torch.manual_seed(1)
    compiled(batch, {"beta": 1.0})
    grads = [p.grad.clone() for p in params]
    torch.manual_seed(1)
    eager_step(MaskedELBO(), model, guide, batch, params, {"beta": 1.0})
    assert any(float(p.grad.abs().max()) > 0.05 for p in params)  # the clamp acts
    clip_gradients(params, True, 0.05, None)
    for g, p in zip(grads, params):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_jnf_stage_two_compiles_with_missing_rows():
    """JNFLoss evaluates each expert on its modality's present rows; traced, on every row masked by presence."""
    from pyro_mmvae.experiments import toy
    from pyro_mmvae.infer import JNFLoss

    splits = load_splits("toy", None, train_size=64, val_size=0, seed=0, missing_rate=0.3)
    settings = RunConfig(dataset="toy", model="jnf", batch_size=16, train_size=64, val_size=0).settings()
    torch.manual_seed(0)
    model, joint, _ = recipes.build_main_stage("jnf", "toy", run_modalities("toy", settings), settings)
    experts = toy.build_experts(settings.latent_dim, "flow", None, seed=0)
    batch = rows(splits.train, 16)
    assert not all(bool(p.all()) for p in batch.present.values())
    trained = list(experts.experts.parameters())
    compiled = CompiledGradients(JNFLoss(joint), model, experts, trained)
    torch.manual_seed(3)
    loss = compiled(batch, {"beta": 1.0})
    grads = [p.grad.clone() for p in trained]
    torch.manual_seed(3)
    eager_loss, eager_grads = eager_step(JNFLoss(joint), model, experts, batch, trained, {"beta": 1.0})
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * float(e.abs().max()) + 1e-7)


def test_tensors_in_the_loss_keywords_are_not_frozen_into_a_graph():
    model, guide, data = table3("SumPooling")
    compiled = CompiledGradients(MaskedELBO(), model, guide, list(guide.parameters()))
    subset = {"x": torch.ones(100, dtype=torch.bool), "u": torch.zeros(100, dtype=torch.bool)}
    with pytest.raises(StepCompileError, match=r"\['mask'\] hold tensors"):
        compiled(rows(data.train, 100), {"beta": 1.0, "mask": subset})


class _SharedGradients:
    """BetaELBO plus terms whose gradients a graph may share between parameters or broadcast."""

    def differentiable_loss(self, model, guide, batch, beta=1.0):
        extra = ((guide.a + guide.b) * 2.0).sum() + guide.c.sum() + torch.round(guide.d).sum()
        return BetaELBO().differentiable_loss(model, guide, batch, beta=beta) + extra


def test_gradients_are_separate_dense_tensors_as_in_eager_autograd():
    from pyro_mmvae.train.loop import clip_gradients

    model, guide = linear_pair(0)
    guide.a, guide.b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    guide.c, guide.d = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.full((2,), 0.3))
    params = [*model.parameters(), *guide.parameters()]
    compiled = CompiledGradients(_SharedGradients(), model, guide, params)
    batch = rows(linear_data(), 64)
    torch.manual_seed(0)
    compiled(batch, {"beta": 1.0})
    assert guide.a.grad is not guide.b.grad and guide.c.grad.is_contiguous()
    assert torch.equal(guide.d.grad, torch.zeros(2))  # a zero that flows through the loss is a gradient, not None
    clip_gradients(params, False, None, 0.5)  # in-place norm clipping must scale each gradient once
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert float(total) == pytest.approx(0.5, rel=1e-4)


def test_a_run_that_compiles_no_step_says_so():
    from pyro_mmvae.train.schedules import LinearAnnealing

    model, guide = linear_pair(0)
    with pytest.warns(UserWarning, match="compiled no training step"):  # β is still annealing at the end
        fit(model, guide, linear_data(), epochs=2, batch_size=64, progress=False, compile=True,
            beta=LinearAnnealing(0.1, 1.0, 4))  # fmt: skip
