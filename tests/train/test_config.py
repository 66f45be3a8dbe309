import dataclasses

import pytest
import torch

from pyro_mmvae.train import FitConfig, LinearAnnealing
from pyro_mmvae.train.optim import build_optimizer, describe_optimizer


def test_defaults_and_overrides():
    config = FitConfig(epochs=3, batch_size=16)
    assert (config.lr, config.optimizer, config.stage, config.seed, config.progress) == (1e-3, "adam", "main", 0, True)
    again = FitConfig.from_settings(config, {"epochs": 5, "lr": 1e-2})
    assert (again.epochs, again.batch_size, again.lr) == (5, 16, 1e-2)
    assert config.epochs == 3  # the original is untouched
    fresh = FitConfig.from_settings(None, {"epochs": 2, "batch_size": 4, "beta": LinearAnnealing(0.1, 1.0, 2)})
    assert fresh.beta_schedule(0) == pytest.approx(0.1) and fresh.beta_schedule.final == 1.0


@pytest.mark.parametrize(
    "settings, error, match",
    [
        (dict(epochs=0), ValueError, "epochs must be an integer >= 1"),
        (dict(epochs=2.5), ValueError, "epochs must be an integer >= 1"),
        (dict(batch_size=True), ValueError, "batch_size must be an integer >= 1"),
        (dict(checkpoint_every=0), ValueError, "checkpoint_every must be"),
        (dict(lr=float("nan")), ValueError, "lr must be"),
        (dict(lr=None), ValueError, "lr must be a finite number > 0, got None"),
        (dict(grad_clip_value=0.0), ValueError, "grad_clip_value must be"),
        (dict(early_stopping_patience=0), ValueError, "early_stopping_patience must be"),
        (dict(early_stopping_min_delta=-1.0), ValueError, "early_stopping_min_delta must be"),
        (dict(beta=float("inf")), ValueError, "beta must be a finite number > 0"),
        (dict(lr_schedule="exponential"), ValueError, "exponential"),
        (dict(optimizer="adamax"), ValueError, "unknown optimizer 'adamax'"),
        (dict(optimizer="adam", optimizer_kwargs={"momentum": 0.9}), ValueError, "does not take \\['momentum'\\]"),
        (dict(optimizer=lambda p, lr: None, optimizer_kwargs={"eps": 1.0}), ValueError, "callable optimizer"),
        (dict(optimizer=3), TypeError, "optimizer must be a name or a callable"),
        (dict(seed="0"), TypeError, "seed must be an integer"),
        (dict(stage=""), ValueError, "stage must be"),
        (dict(resume=True, overwrite=True, run_dir="x"), ValueError, "contradict"),
        (dict(tensorboard=True), ValueError, "tensorboard=True needs a run_dir"),
        (dict(loss_kwargs={"beta": 1.0}), ValueError, "pass beta through"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_settings_name_the_field(settings, error, match):
    with pytest.raises(error, match=match):
        FitConfig(**(dict(epochs=1, batch_size=8) | settings))


def test_replace_validates_again():
    config = FitConfig(epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="batch_size must be"):
        dataclasses.replace(config, batch_size=-1)


def test_from_settings_lists_unknown_and_missing_names():
    with pytest.raises(TypeError, match=r"unknown fit setting\(s\) \['epoch'\]"):
        FitConfig.from_settings(None, {"epoch": 1, "batch_size": 2})
    with pytest.raises(TypeError, match="fit needs batch_size"):
        FitConfig.from_settings(None, {"epochs": 1})
    with pytest.raises(TypeError, match="config must be a FitConfig"):
        FitConfig.from_settings({"epochs": 1}, {})


def test_named_and_factory_optimizers():
    params = [torch.nn.Parameter(torch.ones(3))]
    adamw = build_optimizer("AdamW", params, 0.1, {"weight_decay": 0.5})
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.5
    assert adamw.defaults["lr"] == 0.1
    assert describe_optimizer("AdamW", {"weight_decay": 0.5}) == {"name": "adamw", "kwargs": {"weight_decay": 0.5}}
    sgd = build_optimizer(lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9), params, 0.2, {})
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["lr"] == 0.2
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        build_optimizer(lambda p, lr: object(), params, 0.1, {})
