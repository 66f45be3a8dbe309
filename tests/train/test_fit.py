import csv
import json
import math
import re
import sys
import types

import pyro
import pytest
import torch

from pyro_mmvae.data import CirclesSquares, Modality, MultimodalDataset, iterate_batches
from pyro_mmvae.guides import JointGuide
from pyro_mmvae.infer.elbo import BetaELBO
from pyro_mmvae.models import MultimodalVAE
from pyro_mmvae.train import NonFiniteLossError, fit, load_stage
from pyro_mmvae.train.checkpoint import CheckpointMismatchError, load_checkpoint
from pyro_mmvae.train.loop import clip_gradients
from pyro_mmvae.train.schedules import CosineLR, LinearAnnealing
from tests.common import Interrupt, interrupt_after

LINEAR = (Modality("a", (3,), likelihood="normal", scale=0.1), Modality("b", (2,), likelihood="normal", scale=0.1))


def linear_data(n=128, seed=0):
    """x_a = z W_a + 0.1 ε, x_b = z W_b + 0.1 ε with z ~ N(0, I_2): a linear Gaussian two-modality problem."""
    w = torch.Generator().manual_seed(1000)
    wa, wb = torch.randn(2, 3, generator=w), torch.randn(2, 2, generator=w)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    data = {"a": z @ wa + 0.1 * torch.randn(n, 3, generator=g), "b": z @ wb + 0.1 * torch.randn(n, 2, generator=g)}
    return MultimodalDataset(data, modalities=LINEAR)


def linear_pair(seed=0, hidden=16):
    torch.manual_seed(seed)
    model = MultimodalVAE(LINEAR, 2, hidden=(hidden,))
    guide = JointGuide(LINEAR, 2, head_dim=8, hidden=(16,), merge_hidden=(16,))
    return model, guide


def states(*modules):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


def assert_states_equal(a, b):
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


COMMON = dict(batch_size=32, lr=1e-2, progress=False)


def fit_with_validation(**settings):
    """A fresh :func:`linear_pair` fitted on ``linear_data()`` with ``linear_data(64, seed=1)`` as validation data
    and the :data:`COMMON` settings; returns ``(model, guide, result)``."""
    model, guide = linear_pair()
    res = fit(model, guide, linear_data(), val_data=linear_data(64, seed=1), **COMMON, **settings)
    return model, guide, res


# ---------------------------------------------------------------------- learning


def test_loss_decreases_on_linear_gaussian_data():
    _, _, res = fit_with_validation(epochs=15)
    assert res.epochs_run == 15 and res.steps == 15 * 4 and res.finished
    # the first epoch's loss is dominated by the σ = 0.1 reconstruction error of an untrained decoder
    assert res.train_loss[-1] < 0.2 * res.train_loss[0]
    assert res.val_loss[-1] < 0.2 * res.val_loss[0]
    assert res.best_val_loss == min(res.val_loss)


def test_loss_decreases_on_circles_squares():
    torch.manual_seed(0)
    mods = CirclesSquares.modalities
    model = MultimodalVAE(mods, 2, hidden=(32,))
    guide = JointGuide(mods, 2, head_dim=16, hidden=(32,), merge_hidden=(32,))
    res = fit(model, guide, CirclesSquares(size=256), epochs=4, batch_size=64, lr=3e-3, progress=False)
    losses = res.train_loss
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_accepts_a_batch_and_a_list_of_batches():
    data = linear_data(64)
    model, guide = linear_pair()
    res = fit(model, guide, data.full, epochs=2, **COMMON)
    assert res.steps == 4
    model, guide = linear_pair()
    batches = list(iterate_batches(data, 16, shuffle=False))
    res = fit(model, guide, batches, val_data=batches[:1], epochs=2, **COMMON)
    assert res.steps == 8 and res.val_loss[0] is not None


def test_progress_bar(capsys):
    model, guide = linear_pair()
    fit(model, guide, linear_data(64), epochs=2, batch_size=32, progress=True)
    err = capsys.readouterr().err
    assert "fit[main]" in err and "2/2" in err and "loss=" in err


# ---------------------------------------------------------------------- files


def test_run_folder_layout_log_and_config(tmp_path):
    model, guide, res = fit_with_validation(
        epochs=4,
        beta=LinearAnnealing(0.25, 1.0, 2),
        lr_schedule=CosineLR(final_lr=1e-3),
        run_dir=tmp_path,
        stage="joint",
    )
    stage = tmp_path / "joint"
    assert sorted(p.name for p in stage.iterdir()) == ["best.pt", "checkpoint.pt", "config.json", "log.csv"]
    assert (res.stage_dir, res.checkpoint_path, res.log_path) == (stage, stage / "checkpoint.pt", stage / "log.csv")
    with open(stage / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "train_loss", "val_loss", "beta", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows] == [4, 8, 12, 16]
    assert [float(r["beta"]) for r in rows] == [0.25, 0.625, 1.0, 1.0]
    lrs = [1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(lrs, rel=1e-9)
    assert [float(r["train_loss"]) for r in rows] == res.train_loss
    config = json.loads((stage / "config.json").read_text())
    assert config["stage"] == "joint"
    assert config["settings"]["beta"] == {"kind": "linear", "start": 0.25, "end": 1.0, "warmup_epochs": 2}
    assert config["model"]["state"] == {k: list(v.shape) for k, v in model.state_dict().items()}
    assert config["guide"]["state"] == {k: list(v.shape) for k, v in guide.state_dict().items()}


def test_checkpoints_load_weights_only(tmp_path):
    model, guide, _ = fit_with_validation(epochs=2, run_dir=tmp_path)
    ck = torch.load(tmp_path / "main" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["finished"] and ck["step"] == 8
    assert set(ck) >= {"model", "guide", "optimizer", "lr_scheduler", "early_stopping", "history", "rng", "config"}
    assert isinstance(ck["rng"]["numpy"]["keys"], torch.Tensor)
    assert isinstance(ck["rng"]["python"]["state"], list)
    best = torch.load(tmp_path / "main" / "best.pt", weights_only=True)
    assert best["epoch"] == ck["early_stopping"]["best_epoch"]
    assert_states_equal([best["model"], best["guide"]], [model.state_dict(), guide.state_dict()])


def test_checkpoint_every(tmp_path):
    model, guide = linear_pair()
    with pytest.raises(Interrupt):
        fit(
            model,
            guide,
            linear_data(),
            epochs=5,
            run_dir=tmp_path,
            checkpoint_every=2,
            callbacks=[interrupt_after(3)],
            **COMMON,
        )
    assert load_checkpoint(tmp_path / "main" / "checkpoint.pt")["epoch"] == 2
    model, guide = linear_pair()
    res = fit(model, guide, linear_data(), epochs=5, run_dir=tmp_path, checkpoint_every=2, resume=True, **COMMON)
    assert res.resumed_from == 2
    assert load_checkpoint(tmp_path / "main" / "checkpoint.pt")["epoch"] == 5  # always written at the end


def test_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def save_then_fail_on_second(obj, f, *args, **kwargs):
        calls.append(obj["epoch"])
        real_save(obj, f, *args, **kwargs)
        if len(calls) == 2:
            f.truncate(10)
            raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_then_fail_on_second)
    model, guide = linear_pair()
    with pytest.raises(OSError, match="disk full"):
        fit(model, guide, linear_data(), epochs=3, run_dir=tmp_path, **COMMON)
    monkeypatch.undo()
    ck = load_checkpoint(tmp_path / "main" / "checkpoint.pt")
    assert ck["epoch"] == 1 and not ck["finished"]
    assert not [p for p in (tmp_path / "main").iterdir() if p.name.endswith(".tmp")]


def test_existing_checkpoint_needs_resume_or_overwrite(tmp_path):
    model, guide = linear_pair()
    fit(model, guide, linear_data(64), epochs=1, run_dir=tmp_path, **COMMON)
    with pytest.raises(FileExistsError, match="resume=True"):
        fit(model, guide, linear_data(64), epochs=1, run_dir=tmp_path, **COMMON)
    res = fit(model, guide, linear_data(64), epochs=2, run_dir=tmp_path, overwrite=True, **COMMON)
    assert res.epochs_run == 2 and res.resumed_from is None


def test_tensorboard(tmp_path, monkeypatch):
    logged = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            logged.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    model, guide = linear_pair()
    fit(model, guide, linear_data(64), epochs=2, run_dir=tmp_path, tensorboard=True, **COMMON)
    assert {t for t, _, _ in logged} == {"main/train_loss", "main/beta", "main/lr"}
    assert [s for t, _, s in logged if t == "main/train_loss"] == [1, 2]


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    model, guide = linear_pair()
    with pytest.raises(ImportError, match="pip install tensorboard"):
        fit(model, guide, linear_data(64), epochs=1, run_dir=tmp_path, tensorboard=True, **COMMON)


# ---------------------------------------------------------------------- early stopping and best weights


def test_early_stopping_keeps_the_best_weights(tmp_path):
    # min_delta so large that no epoch after the first counts as an improvement
    model, guide, res = fit_with_validation(
        epochs=10, early_stopping_patience=2, early_stopping_min_delta=1e9, run_dir=tmp_path
    )
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1
    assert res.best_val_loss == res.val_loss[0]
    best = torch.load(tmp_path / "main" / "best.pt", weights_only=True)
    assert best["epoch"] == 1
    assert_states_equal([best["model"], best["guide"]], [model.state_dict(), guide.state_dict()])
    ck = load_checkpoint(tmp_path / "main" / "checkpoint.pt")
    assert ck["finished"] and ck["stopped_early"] and ck["early_stopping"]["bad_epochs"] == 2
    assert not torch.equal(ck["model"]["decoders.a.mlp.0.weight"], best["model"]["decoders.a.mlp.0.weight"])


def test_early_stopping_on_a_real_plateau():
    model, guide = linear_pair()
    res = fit(
        model,
        guide,
        linear_data(32),
        val_data=linear_data(32, seed=1),
        epochs=200,
        batch_size=32,
        lr=3e-2,
        early_stopping_patience=3,
        progress=False,
    )
    assert res.stopped_early and res.epochs_run < 200
    assert res.epochs_run - res.best_epoch == 3
    assert all(v >= res.best_val_loss for v in res.val_loss)


def test_restore_best_false_keeps_last_weights(tmp_path):
    model, guide, _ = fit_with_validation(epochs=3, early_stopping_min_delta=1e9, restore_best=False, run_dir=tmp_path)
    ck = load_checkpoint(tmp_path / "main" / "checkpoint.pt")
    assert_states_equal([ck["model"], ck["guide"]], [model.state_dict(), guide.state_dict()])


# ---------------------------------------------------------------------- resume


RESUME_SETTINGS = dict(
    epochs=4,
    batch_size=32,
    lr=1e-2,
    beta=LinearAnnealing(0.5, 1.0, 2),
    lr_schedule="cosine",
    grad_clip=5.0,
    early_stopping_patience=10,
    progress=False,
    seed=7,
)


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    train, val = linear_data(), linear_data(64, seed=1)
    model, guide = linear_pair()
    straight = fit(model, guide, train, val_data=val, run_dir=tmp_path / "a", **RESUME_SETTINGS)
    expected = states(model, guide)

    model, guide = linear_pair()
    with pytest.raises(Interrupt):
        fit(
            model, guide, train, val_data=val, run_dir=tmp_path / "b", callbacks=[interrupt_after(2)], **RESUME_SETTINGS
        )
    torch.manual_seed(999)  # the resumed run must not depend on the state it starts in
    model, guide = linear_pair(seed=1)  # ... nor on the initial weights: the checkpoint replaces them
    resumed = fit(model, guide, train, val_data=val, run_dir=tmp_path / "b", resume=True, **RESUME_SETTINGS)
    assert resumed.resumed_from == 2
    assert_states_equal(states(model, guide), expected)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in straight.history]
    ck_a = load_checkpoint(tmp_path / "a" / "main" / "checkpoint.pt")
    ck_b = load_checkpoint(tmp_path / "b" / "main" / "checkpoint.pt")
    assert_states_equal([ck_a["model"], ck_a["guide"]], [ck_b["model"], ck_b["guide"]])
    with open(tmp_path / "b" / "main" / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


def test_resume_extends_a_finished_run_without_epoch_dependent_schedule(tmp_path):
    train = linear_data()
    model, guide = linear_pair()
    fit(model, guide, train, epochs=4, run_dir=tmp_path / "a", **COMMON)
    expected = states(model, guide)
    model, guide = linear_pair()
    fit(model, guide, train, epochs=2, run_dir=tmp_path / "b", **COMMON)
    res = fit(model, guide, train, epochs=4, run_dir=tmp_path / "b", resume=True, **COMMON)
    assert res.resumed_from == 2 and res.epochs_run == 4
    assert_states_equal(states(model, guide), expected)
    with pytest.raises(CheckpointMismatchError, match="already run 4 epochs"):
        fit(model, guide, train, epochs=3, run_dir=tmp_path / "b", resume=True, **COMMON)
    with pytest.raises(CheckpointMismatchError, match="settings differ"):
        fit(model, guide, train, epochs=6, run_dir=tmp_path / "b", resume=True, lr_schedule="cosine", **COMMON)


def test_resume_of_a_finished_stage_returns_at_once(tmp_path):
    model, guide = linear_pair()
    val = linear_data(64, seed=1)
    first = fit(model, guide, linear_data(), val_data=val, epochs=3, run_dir=tmp_path, **COMMON)
    expected = states(model, guide)
    ck = tmp_path / "main" / "checkpoint.pt"
    stamp = ck.stat().st_mtime_ns
    model, guide = linear_pair(seed=3)
    again = fit(model, guide, linear_data(), val_data=val, epochs=3, run_dir=tmp_path, resume=True, **COMMON)
    assert ck.stat().st_mtime_ns == stamp
    assert again.history == first.history and again.best_epoch == first.best_epoch and again.finished
    assert_states_equal(states(model, guide), expected)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    model, guide = linear_pair()
    res = fit(model, guide, linear_data(64), epochs=1, run_dir=tmp_path, resume=True, **COMMON)
    assert res.resumed_from is None and res.epochs_run == 1


def test_resume_rejects_other_settings_and_other_models(tmp_path):
    train = linear_data(64)
    model, guide = linear_pair()
    with pytest.raises(Interrupt):
        fit(model, guide, train, epochs=3, run_dir=tmp_path, callbacks=[interrupt_after(1)], **COMMON)
    with pytest.raises(CheckpointMismatchError, match=r"settings differ \(lr: checkpoint 0.01 vs now 0.02\)"):
        fit(model, guide, train, epochs=3, run_dir=tmp_path, resume=True, batch_size=32, lr=2e-2, progress=False)
    other_model, guide = linear_pair(hidden=8)
    with pytest.raises(CheckpointMismatchError, match=r"does not match this model .*shape mismatches"):
        fit(other_model, guide, train, epochs=3, run_dir=tmp_path, resume=True, **COMMON)


# ---------------------------------------------------------------------- multistage, partial training, modes


class RecordingELBO(BetaELBO):
    """BetaELBO that records the train/eval mode of model and guide at every call."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def differentiable_loss(self, model, guide, batch, beta=1.0, subset=None):
        self.modes.append((model.training, guide.training, torch.is_grad_enabled()))
        return super().differentiable_loss(model, guide, batch, beta, subset)


def test_multistage_partial_training_and_load_stage(tmp_path):
    train = linear_data()
    model, guide = linear_pair()
    fit(model, guide, train, epochs=2, run_dir=tmp_path, stage="joint", **COMMON)
    joint = states(model, guide)

    # stage 2: only the guide's merge network trains; the model and the guide's heads are frozen in eval mode
    merge = guide.merge
    elbo = RecordingELBO()
    fit(
        model,
        guide,
        train,
        val_data=linear_data(32, seed=1),
        elbo=elbo,
        epochs=2,
        run_dir=tmp_path,
        stage="merge",
        params=[merge],
        train_mode_modules=[merge],
        **COMMON,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joint", "merge"]
    after = states(model, guide)
    assert_states_equal([after[0]], [joint[0]])  # model untouched
    for k in joint[1]:
        assert torch.equal(after[1][k], joint[1][k]) == (not k.startswith("merge.")), k
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert model.training and guide.training  # modes restored
    train_calls = [m for m in elbo.modes if m[2]]
    val_calls = [m for m in elbo.modes if not m[2]]
    assert train_calls and all(m == (False, False, True) for m in train_calls)
    assert val_calls and all(m == (False, False, False) for m in val_calls)
    assert merge.training
    config = json.loads((tmp_path / "merge" / "config.json").read_text())
    assert all(n.startswith("guide.merge.") for n in config["settings"]["trained_parameters"])

    # a new process would rebuild the modules and restore stage 1
    model2, guide2 = linear_pair(seed=5)
    res = load_stage(tmp_path, "joint", model2, guide2)
    assert res.finished and res.epochs_run == 2
    assert_states_equal(states(model2, guide2), joint)


def test_load_stage_of_an_unfinished_stage(tmp_path):
    model, guide = linear_pair()
    with pytest.raises(Interrupt):
        fit(model, guide, linear_data(64), epochs=3, run_dir=tmp_path, callbacks=[interrupt_after(1)], **COMMON)
    with pytest.raises(RuntimeError, match="stopped after epoch 1 of 3"):
        load_stage(tmp_path, "main", model, guide)
    res = load_stage(tmp_path, "main", model, guide, require_finished=False)
    assert res.epochs_run == 1 and not res.finished
    with pytest.raises(FileNotFoundError):
        load_stage(tmp_path, "other", model, guide)


# ---------------------------------------------------------------------- errors


class NaNAtStep(BetaELBO):
    def __init__(self, step):
        super().__init__()
        self.step, self.calls = step, 0

    def differentiable_loss(self, model, guide, batch, beta=1.0, subset=None):
        loss = super().differentiable_loss(model, guide, batch, beta, subset)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.step:
                return loss * float("nan")
        return loss


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path):
    model, guide = linear_pair()
    ck_path = tmp_path / "main" / "checkpoint.pt"
    expected = (
        r"training loss is nan at epoch 2, step 2 of that epoch \(global step 6\); stage 'main', "
        rf"training stopped, the last checkpoint {re.escape(str(ck_path))} is left as it was"
    )
    with pytest.raises(NonFiniteLossError, match=expected):
        fit(model, guide, linear_data(), elbo=NaNAtStep(6), epochs=3, run_dir=tmp_path, **COMMON)
    ck = load_checkpoint(tmp_path / "main" / "checkpoint.pt")
    assert ck["epoch"] == 1 and not ck["finished"]
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


class NaNParameterAtStep(BetaELBO):
    """Sets a guide parameter to NaN before the given call: the guide's Normal then rejects its loc."""

    def __init__(self, step):
        super().__init__()
        self.step, self.calls = step, 0

    def differentiable_loss(self, model, guide, batch, beta=1.0, subset=None):
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.step:
                with torch.no_grad():
                    next(guide.parameters()).fill_(float("nan"))
        return super().differentiable_loss(model, guide, batch, beta, subset)


def test_nan_parameter_caught_by_validation_is_a_non_finite_loss(tmp_path):
    model, guide = linear_pair()
    with pytest.raises(NonFiniteLossError, match=r"rejected NaN/inf arguments .* at epoch 2, step 2 of that epoch"):
        fit(model, guide, linear_data(), elbo=NaNParameterAtStep(6), epochs=3, run_dir=tmp_path,
            validate_distributions="always", **COMMON)  # fmt: skip
    assert load_checkpoint(tmp_path / "main" / "checkpoint.pt")["epoch"] == 1


def test_nan_parameter_after_the_validated_first_step_is_a_non_finite_loss(tmp_path):
    # by default Pyro's validation checks the first step only; the loss check reports the NaN at the same step
    model, guide = linear_pair()
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 2, step 2 of that epoch"):
        fit(model, guide, linear_data(), elbo=NaNParameterAtStep(6), epochs=3, run_dir=tmp_path, **COMMON)
    assert load_checkpoint(tmp_path / "main" / "checkpoint.pt")["epoch"] == 1


class RecordsValidation(BetaELBO):
    def __init__(self):
        super().__init__()
        self.seen = []

    def differentiable_loss(self, model, guide, batch, beta=1.0, subset=None):
        if torch.is_grad_enabled():
            self.seen.append(pyro.poutine.util.is_validation_enabled())
        return super().differentiable_loss(model, guide, batch, beta, subset)


@pytest.mark.parametrize("setting, expected", [("first_step", [True, False, False]), ("always", [True] * 3)])
def test_pyro_validation_checks_the_first_step_of_each_run(tmp_path, setting, expected):
    model, guide = linear_pair()
    elbo = RecordsValidation()
    fit(model, guide, linear_data(), elbo=elbo, epochs=1, run_dir=tmp_path, validate_distributions=setting, **COMMON)
    assert elbo.seen[:3] == expected
    elbo.seen.clear()  # a resumed run validates its own first step
    fit(model, guide, linear_data(), elbo=elbo, epochs=2, run_dir=tmp_path, resume=True,
        validate_distributions=setting, **COMMON)  # fmt: skip
    assert elbo.seen[:3] == expected
    assert pyro.poutine.util.is_validation_enabled()  # the global setting is left as it was


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(epochs=0), ValueError, "epochs must be an integer >= 1"),
        (dict(batch_size=0), ValueError, "batch_size must be an integer >= 1"),
        (dict(beta=0.0), ValueError, "beta must be a finite number > 0"),
        (dict(beta=-1.0), ValueError, "beta must be a finite number > 0"),
        (dict(lr=0.0), ValueError, "lr must be"),
        (dict(grad_clip=-1.0), ValueError, "grad_clip must be"),
        (dict(early_stopping_patience=2), ValueError, "early_stopping_patience needs val_data"),
        (dict(resume=True), ValueError, "resume=True needs a run_dir"),
        (dict(stage="../x"), ValueError, "stage must be"),
        (dict(loss_kwargs={"beta": 2.0}), ValueError, "pass beta through"),
        (dict(device="gpu0"), ValueError, "unknown device"),
        (dict(elbo=object()), TypeError, "differentiable_loss"),
        (dict(params=[torch.nn.Parameter(torch.zeros(2))]), ValueError, "neither the model nor the guide"),
        (dict(params=[]), ValueError, "no parameters to train"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_arguments(kwargs, error, match):
    model, guide = linear_pair()
    args = dict(epochs=1, batch_size=8, progress=False) | kwargs
    with pytest.raises(error, match=match):
        fit(model, guide, linear_data(16), **args)


def test_empty_and_one_shot_data():
    model, guide = linear_pair()
    empty = MultimodalDataset({"a": torch.zeros(0, 3), "b": torch.zeros(0, 2)})
    with pytest.raises(ValueError, match="train_data is empty"):
        fit(model, guide, empty, epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="val_data is empty"):
        fit(model, guide, linear_data(16), val_data=[], epochs=1, batch_size=8, progress=False)
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit(model, guide, iter(iterate_batches(linear_data(16), 8)), epochs=1, batch_size=8, progress=False)


def test_clip():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([float("nan"), 300.0, -500.0, 1.0])
    clip_gradients([p], zero_nan=True, value=100.0, norm=None)
    assert p.grad.tolist() == [0.0, 100.0, -100.0, 1.0]
    clip_gradients([p], zero_nan=False, value=None, norm=1.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)


def test_grad_clip_value_runs_in_fit():
    model, guide = linear_pair()
    res = fit(model, guide, linear_data(64), epochs=2, grad_clip_value=1.0, zero_nan_grads=True, **COMMON)
    assert all(math.isfinite(v) for v in res.train_loss)


def test_any_pyro_elbo_with_differentiable_loss():
    # Pyro's own Trace_ELBO sums over data points (no mean), but fit only needs differentiable_loss
    model, guide = linear_pair()
    res = fit(model, guide, linear_data(64), elbo=pyro.infer.Trace_ELBO(), epochs=3, **COMMON)
    assert res.train_loss[-1] < res.train_loss[0]


# ---------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_and_exact_resume(tmp_path):
    train, val = linear_data(), linear_data(64, seed=1)
    model, guide = linear_pair()
    fit(model, guide, train, val_data=val, run_dir=tmp_path / "a", device="cuda", **RESUME_SETTINGS)
    assert next(model.parameters()).is_cuda
    expected = states(model, guide)
    model, guide = linear_pair()
    with pytest.raises(Interrupt):
        fit(
            model,
            guide,
            train,
            val_data=val,
            run_dir=tmp_path / "b",
            device="cuda",
            callbacks=[interrupt_after(2)],
            **RESUME_SETTINGS,
        )
    model, guide = linear_pair()
    fit(model, guide, train, val_data=val, run_dir=tmp_path / "b", device="cuda", resume=True, **RESUME_SETTINGS)
    assert_states_equal(states(model, guide), expected)
    cpu_model, cpu_guide = linear_pair()
    load_stage(tmp_path / "b", "main", cpu_model, cpu_guide)  # checkpoints load on CPU
    assert_states_equal(states(cpu_model, cpu_guide), [{k: v.cpu() for k, v in s.items()} for s in expected])
