"""The pyro-mmvae command at small size: train (joint, JNF-Shared), resume, sample, errors."""

import json

import pytest

from pyro_mmvae.cli import main

SMALL = ["--train-size", "256", "--val-size", "128", "--test-size", "128", "--batch-size", "64", "--no-progress"]


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for opt in (
        "--dataset",
        "--model",
        "--epochs",
        "--batch-size",
        "--latent-dim",
        "--beta",
        "--out",
        "--device",
        "--seed",
        "--resume",
    ):
        assert opt in text


def test_train_joint_writes_a_complete_run_folder(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *SMALL]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_elbo"] < 0 and 0 <= metrics["joint_coherence"] <= 1
    assert set(metrics["reconstruction"]) == {"square", "circle"}
    for f in ("config.json", "latent_space.png", "reconstructions.png", "prior_samples.png", "joint/checkpoint.pt"):
        assert (out / f).exists(), f
    before = (out / "joint" / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit, match="already holds a run"):
        main(["train", "--epochs", "1", "--out", str(out), *SMALL])
    assert (out / "joint" / "checkpoint.pt").read_bytes() == before  # nothing was overwritten
    assert main(["train", "--epochs", "2", "--out", str(out), "--resume", *SMALL]) == 0
    assert json.loads((out / "metrics.json").read_text())["train"]["epochs_run"] == 2


def test_jnf_shared_then_sample(tmp_path):
    out = tmp_path / "jnf"
    args = ["train", "--model", "jnf-shared", "--epochs", "1", "--projector-epochs", "1", "--out", str(out), *SMALL]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["cross_coherence"]) == {"gaussian", "flow", "shared"}
    assert (out / "expert_posteriors.png").exists()
    assert main(["sample", "--run", str(out), "--given", "square", "--count", "4"]) == 0
    assert (out / "samples" / "samples_square.png").exists()
    with pytest.raises(SystemExit, match="unknown modality"):
        main(["sample", "--run", str(out), "--given", "triangle"])


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="beta must be > 0"):
        main(["train", "--beta", "0", "--out", str(tmp_path / "x"), *SMALL])
    with pytest.raises(SystemExit, match="not a run folder"):
        main(["sample", "--run", str(tmp_path), "--given", "square"])
