"""The trainer's callbacks: order, hooks, replacing and adding built-ins, state across a resume."""

import csv

import pytest
import torch

from pyro_mmvae.train import Callback, CSVLogger, EarlyStopping, FitConfig, ProgressBar, fit
from pyro_mmvae.train.checkpoint import load_checkpoint
from tests.train.test_fit import (
    COMMON,
    Interrupt,
    assert_states_equal,
    interrupt_after,
    linear_data,
    linear_pair,
    states,
)


class Recorder(Callback):
    def __init__(self, log):
        self.log = log

    def on_fit_start(self, state):
        self.log.append(("start", state.epoch))

    def on_step_end(self, state):
        self.log.append(("step", state.step))

    def on_epoch_end(self, state, row):
        self.log.append(("epoch", row["epoch"], state.epoch, len(state.history)))

    def on_fit_end(self, state):
        self.log.append(("end", state.epoch))


def test_hooks_run_in_order_with_the_state():
    log = []
    model, guide = linear_pair()
    fit(model, guide, linear_data(64), epochs=2, callbacks=[Recorder(log)], **COMMON)  # 2 batches of 32 per epoch
    assert log == [
        ("start", 0),
        ("step", 1),
        ("step", 2),
        ("epoch", 1, 1, 1),
        ("step", 3),
        ("step", 4),
        ("epoch", 2, 2, 2),
        ("end", 2),
    ]


def test_on_fit_end_runs_when_training_fails():
    log = []

    def fail(row):
        raise Interrupt

    model, guide = linear_pair()
    with pytest.raises(Interrupt):
        fit(model, guide, linear_data(64), epochs=3, callbacks=[Recorder(log), fail], **COMMON)
    assert log[-1] == ("end", 1)


class StopAt(Callback):
    order = 0  # decide before the checkpoint is written, so that it records the stop

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, state, row):
        if row["epoch"] == self.epoch:
            state.stop_requested = True


def test_a_callback_can_stop_and_the_checkpoint_records_it(tmp_path):
    model, guide = linear_pair()
    res = fit(model, guide, linear_data(64), epochs=5, run_dir=tmp_path, callbacks=[StopAt(2)], **COMMON)
    assert res.epochs_run == 2 and res.stopped_early and res.finished
    ck = load_checkpoint(tmp_path / "main" / "checkpoint.pt")
    assert ck["epoch"] == 2 and ck["finished"] and ck["stopped_early"]


def test_a_given_callback_replaces_the_built_in_of_its_class(tmp_path):
    own_log = tmp_path / "my_log.csv"
    model, guide = linear_pair()
    bar = ProgressBar(refresh_s=0.0)
    fit(
        model,
        guide,
        linear_data(64),
        epochs=2,
        run_dir=tmp_path / "run",
        callbacks=[CSVLogger(own_log), bar],
        batch_size=32,
        lr=1e-2,
        progress=True,
    )
    with own_log.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert not (tmp_path / "run" / "main" / "log.csv").exists()  # the built-in CSVLogger was replaced
    assert (tmp_path / "run" / "main" / "checkpoint.pt").exists()  # the other built-ins still run
    assert bar.bar is None  # closed at the end


def test_early_stopping_as_a_callback_equals_the_setting():
    val = linear_data(64, seed=1)
    runs = []
    for how in ("setting", "callback"):
        model, guide = linear_pair()
        extra = dict(early_stopping_patience=2) if how == "setting" else dict(callbacks=[EarlyStopping(2)])
        res = fit(model, guide, linear_data(), val_data=val, epochs=10, early_stopping_min_delta=1e9, **COMMON, **extra)
        runs.append((res.epochs_run, res.stopped_early, res.best_epoch, states(model, guide)))
    assert runs[0][:3] == runs[1][:3] == (3, True, 1)
    assert_states_equal(runs[0][3], runs[1][3])
    with pytest.raises(ValueError, match="early_stopping_patience needs val_data"):
        fit(*linear_pair(), linear_data(), epochs=1, callbacks=[EarlyStopping(2)], **COMMON)


class CountingCallback(Callback):
    """A stateful callback: its count must survive a kill and a resume."""

    def __init__(self, stop_at=None):
        self.seen, self.stop_at = 0, stop_at

    def on_epoch_end(self, state, row):
        self.seen += 1
        if row["epoch"] == self.stop_at:
            raise Interrupt

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def test_stateful_callbacks_resume_and_the_parameters_are_bit_equal(tmp_path):
    train = linear_data()
    model, guide = linear_pair()
    straight = CountingCallback()
    fit(model, guide, train, epochs=4, run_dir=tmp_path / "a", callbacks=[straight], **COMMON)
    expected = states(model, guide)
    model, guide = linear_pair()
    with pytest.raises(Interrupt):
        fit(model, guide, train, epochs=4, run_dir=tmp_path / "b", callbacks=[CountingCallback(stop_at=2)], **COMMON)
    model, guide = linear_pair()
    resumed = CountingCallback()
    fit(model, guide, train, epochs=4, run_dir=tmp_path / "b", resume=True, callbacks=[resumed], **COMMON)
    assert straight.seen == resumed.seen == 4
    assert_states_equal(states(model, guide), expected)
    model, guide = linear_pair()
    with pytest.raises(Interrupt):  # checkpointed at epoch 2 of 4 without any stateful callback
        fit(model, guide, train, epochs=4, run_dir=tmp_path / "c", callbacks=[interrupt_after(2)], **COMMON)
    with pytest.raises(ValueError, match="holds no state for callback CountingCallback"):
        fit(model, guide, train, epochs=4, run_dir=tmp_path / "c", resume=True, callbacks=[resumed], **COMMON)


def test_optimizer_settings_train_and_resume_exactly(tmp_path):
    train = linear_data()
    config = FitConfig(epochs=4, optimizer="adamw", optimizer_kwargs={"weight_decay": 0.1}, **COMMON)
    model, guide = linear_pair()
    fit(model, guide, train, None, config, run_dir=tmp_path / "a")
    expected = states(model, guide)
    model, guide = linear_pair()
    with pytest.raises(Interrupt):
        fit(model, guide, train, None, config, run_dir=tmp_path / "b", callbacks=[CountingCallback(stop_at=2)])
    model, guide = linear_pair()
    fit(model, guide, train, None, config, run_dir=tmp_path / "b", resume=True, callbacks=[CountingCallback()])
    assert_states_equal(states(model, guide), expected)
    model, guide = linear_pair()
    adam = fit(model, guide, train, None, config, optimizer="adam", optimizer_kwargs={})
    assert adam.train_loss != fit(*linear_pair(), train, None, config).train_loss  # the decay matters
    with pytest.raises(ValueError, match="settings differ .*optimizer"):
        fit(
            *linear_pair(),
            train,
            None,
            config,
            run_dir=tmp_path / "b",
            resume=True,
            optimizer="sgd",
            optimizer_kwargs={},
            epochs=5,
        )


def test_objective_is_given_once():
    with pytest.raises(TypeError, match="give the objective once"):
        fit(*linear_pair(), linear_data(), torch.nn.Module(), elbo=torch.nn.Module(), epochs=1, **COMMON)
