"""The documented PolyMNIST path end to end at tiny size: data build → train (JNF, an aggregation model) →
evaluate with the shipped classifiers; train-classifier for a dataset without published classifiers."""

import json

import pytest
import torch

from pyro_mmvae.cli import main
from pyro_mmvae.experiments.datasets import default_classifiers, load_splits
from pyro_mmvae.metrics.classifiers import load_classifier
from tests.common import SHARED_DATA

MNIST = SHARED_DATA / "mnist"
BACKGROUNDS = SHARED_DATA / "polymnist_backgrounds"
CLASSIFIERS = SHARED_DATA / "pretrained_classifiers" / "polymnist"
pytestmark = pytest.mark.skipif(not MNIST.exists(), reason="../shared/data is not beside the checkout")

TINY = ["--train-size", "96", "--val-size", "32", "--test-size", "32", "--epochs", "1", "--batch-size", "32"]
NETS = ["--base-channels", "4", "--latent-dim", "4", "--no-progress"]


@pytest.fixture(scope="module")
def polymnist_root(tmp_path_factory):
    from pyro_mmvae.data import build_polymnist

    root = tmp_path_factory.mktemp("polymnist")
    build_polymnist(root, MNIST, BACKGROUNDS, max_per_split=200, progress=False)
    return root


def test_data_build_command_refuses_missing_sources(tmp_path):
    with pytest.raises(SystemExit, match="--mnist"):
        main(["data", "build", "polymnist", "--root", str(tmp_path)])
    with pytest.raises(SystemExit, match="no published archive"):
        main(["data", "build", "translated-polymnist", "--root", str(tmp_path), "--download"])


def test_data_build_command_writes_a_loadable_dataset(tmp_path):
    argv = ["data", "build", "translated-polymnist", "--root", str(tmp_path), "--mnist", str(MNIST)]
    assert main([*argv, "--backgrounds", str(BACKGROUNDS), "--no-progress"]) == 0
    splits = load_splits("translated-polymnist", tmp_path, train_size=8, test_size=4)
    batch = splits.test.__getitems__([0, 1, 2, 3])
    assert batch.data["m0"].shape == (4, 3, 28, 28) and batch.data["m0"].dtype == torch.float32


# JNF's 25 subset posteriors of 5 modalities (BatchedHMC each) make its case a slow one.
@pytest.mark.parametrize("model", [pytest.param("jnf", marks=pytest.mark.slow), "poe"])
def test_train_and_evaluate_on_polymnist(polymnist_root, model, tmp_path):
    out = tmp_path / model
    argv = ["train", "--dataset", "polymnist", "--data-root", str(polymnist_root), "--model", model]
    assert main([*argv, *TINY, *NETS, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["base_channels"] == 4 and config["modalities"][0]["likelihood"] == "laplace"
    evaluate = ["evaluate", "--run", str(out), "--classifiers", str(CLASSIFIERS), "--num-points", "16"]
    assert main([*evaluate, "--warmup", "10", "--num-prior", "16", "--no-progress"]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    sizes = result["coherence"]["per_size"]
    assert sorted(int(k) for k in sizes) == [1, 2, 3, 4]
    assert all(0.0 <= v <= 1.0 for v in sizes.values())
    assert len(result["coherence"]["per_subset"]) == 30  # every non-empty proper subset of 5 modalities
    assert (out / "conditional_m0.png").exists() and (out / "prior_samples.png").exists()


def test_shipped_classifiers_load_through_the_registry():
    classifiers = default_classifiers("polymnist", CLASSIFIERS)
    assert sorted(classifiers) == [f"m{k}" for k in range(5)]


def test_train_classifier_command(polymnist_root, tmp_path):
    argv = ["train-classifier", "--dataset", "polymnist", "--data-root", str(polymnist_root), "--out", str(tmp_path)]
    assert main([*argv, "--modalities", "m2", "--epochs", "1", "--train-size", "64", "--no-progress"]) == 0
    clf = load_classifier(tmp_path / "m2.pt")
    assert clf(torch.rand(3, 3, 28, 28)).shape == (3,)
    with pytest.raises(SystemExit, match="unknown modalities"):
        main([*argv, "--modalities", "m9"])
