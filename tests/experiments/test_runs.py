"""Dataset runs: train any model on a registered dataset, read it back, evaluate it (toy data, tiny sizes)."""

import json

import pytest
import torch

from pyro_mmvae.cli import main
from pyro_mmvae.errors import InputError, RunFolderError
from pyro_mmvae.experiments.datasets import RowRange, load_splits
from pyro_mmvae.experiments.evaluate import evaluate_run
from pyro_mmvae.experiments.presets import preset
from pyro_mmvae.experiments.runs import RunConfig, load_run, read_run_config, train_run

TINY = dict(dataset="toy", train_size=128, val_size=64, test_size=64, epochs=1, batch_size=64, no_progress=True)


def test_settings_take_the_preset_and_the_overrides():
    config = RunConfig(dataset="polymnist", model="jnf", latent_dim=12, data_root="x")
    s = config.settings()
    assert s.latent_dim == 12 and s.beta == preset("polymnist", "jnf").beta == 2.5
    assert preset("translated-polymnist", "jnf").flow_blocks == 3
    assert preset("translated-polymnist", "jnf-shared").flow_blocks == 2


@pytest.mark.parametrize(
    "bad",
    [dict(model="nope"), dict(dataset="cifar"), dict(epochs=0), dict(beta=0.0), dict(missing_rate=1.0)],
    ids=["model", "dataset", "epochs", "beta", "missing"],
)
def test_bad_options_are_refused(bad):
    with pytest.raises(InputError):
        RunConfig(**{**TINY, **bad})


def test_row_range_is_a_view():
    splits = load_splits("toy", train_size=10, val_size=4, test_size=4)
    rows = RowRange(splits.train, 3, 7)
    assert len(rows) == 4
    a = rows.__getitems__([0, 3])
    b = splits.train.__getitems__([3, 6])
    assert torch.equal(a.data["square"], b.data["square"])
    with pytest.raises(IndexError):
        rows.__getitems__([4])


@pytest.mark.parametrize("model", ["sumpooling", "jnf"])
def test_train_load_and_evaluate_a_toy_run(model, tmp_path):
    out = tmp_path / model
    train_run(RunConfig(model=model, out=str(out), latent_dim=2, **TINY))
    config = read_run_config(out)
    assert config["model"] == model and config["settings"]["latent_dim"] == 2
    train = json.loads((out / "train.json").read_text())
    assert train["stages"]
    _, modules = load_run(out, device="cpu")
    assert (modules.experts is not None) == (model == "jnf")
    result = evaluate_run(out, num_points=32, batch_size=32, mcmc_warmup=20, num_prior=64, device="cpu", progress=False)
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["coherence"]["per_size"] == result["coherence"]["per_size"]
    assert 0.0 <= result["joint_coherence"] <= 1.0
    assert (out / "conditional_square.png").exists() and (out / "prior_samples.png").exists()
    with pytest.raises(InputError):
        train_run(RunConfig(model=model, out=str(out), latent_dim=2, **TINY))  # an existing run is never overwritten


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(RunConfig(model="poe", out=str(a), **{**TINY, "epochs": 2}))
    train_run(RunConfig(model="poe", out=str(b), **TINY))
    train_run(RunConfig(model="poe", out=str(b), resume=True, **{**TINY, "epochs": 2}))
    _, ma = load_run(a, "cpu")
    _, mb = load_run(b, "cpu")
    for (k, va), (_, vb) in zip(ma.guide.state_dict().items(), mb.guide.state_dict().items()):
        assert torch.equal(va, vb), k


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunFolderError):
        evaluate_run(tmp_path, progress=False)


def test_cli_trains_and_evaluates_an_aggregation_model(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "moe", "--train-size", "128", "--val-size", "32", "--test-size", "32"]
    assert main([*argv, "--epochs", "1", "--latent-dim", "2", "--out", str(out), "--no-progress"]) == 0
    assert main(["evaluate", "--run", str(out), "--num-points", "32", "--num-prior", "32", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "per_size" in printed and (out / "evaluation.json").exists()


@pytest.mark.parametrize("model", ["jmvae", "mvae", "mmvae", "mopoe", "mvtcae", "mmvaeplus", "mmjsd"])
def test_every_baseline_trains_and_evaluates_through_the_run_interface(model, tmp_path):
    out = tmp_path / model
    tiny = {**TINY, "train_size": 64, "val_size": 32, "test_size": 32, "batch_size": 32}
    train_run(RunConfig(model=model, out=str(out), latent_dim=2, **tiny))
    result = evaluate_run(out, num_points=16, batch_size=16, num_prior=32, device="cpu", progress=False)
    assert set(result["coherence"]["per_size"]) == {"1"} and 0.0 <= result["joint_coherence"] <= 1.0
    _, modules = load_run(out, "cpu")
    assert modules.experts is None


def test_mopoe_trains_with_the_masked_bound_on_request(tmp_path):
    out = tmp_path / "mopoe-masked"
    train_run(RunConfig(model="mopoe", objective="masked", out=str(out), latent_dim=2, **TINY))
    assert read_run_config(out)["objective"] == "masked"
    _, modules = load_run(out, "cpu")
    assert type(modules.guide).__name__ == "MoPoEGuide"


def test_evaluate_computes_mfd_with_feature_networks(tmp_path):
    out = tmp_path / "poe"
    train_run(RunConfig(model="poe", out=str(out), latent_dim=2, **TINY))
    nets = {name: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 3)) for name in ("square", "circle")}
    result = evaluate_run(out, num_points=64, num_prior=64, mfd_feature_nets=nets, device="cpu", progress=False)
    for kind in ("prior", "conditional"):
        per = result["mfd"][kind]["per_modality"]
        assert set(per) == {"square", "circle"} and all(v >= 0.0 for v in per.values())


@pytest.mark.parametrize(
    "bad",
    [dict(nets="mopoe"), dict(base_channels=8), dict(dataset="polymnist", nets="vgg", data_root="x")],
    ids=["nets-on-toy", "width-on-toy", "unknown-nets"],
)
def test_network_options_belong_to_polymnist(bad):
    with pytest.raises(InputError):
        RunConfig(**{**TINY, **bad})
