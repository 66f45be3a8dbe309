"""The pyro-mmvae command at small size: train (joint, JNF-Shared), resume, sample, errors."""

import json
import warnings

import pytest
import torch

from pyro_mmvae.cli import main
from pyro_mmvae.infer.properness import ImproperPosteriorWarning
from pyro_mmvae.infer.shared_info import SharedInfoLoss

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


def test_jnf_shared_then_resume_then_sample(tmp_path, monkeypatch):
    out = tmp_path / "jnf"
    args = ["train", "--model", "jnf-shared", "--epochs", "1", "--projector-epochs", "1", "--out", str(out), *SMALL]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["cross_coherence"]) == {"gaussian", "flow", "shared"}
    assert (out / "expert_posteriors.png").exists()
    for stage in ("joint", "projectors", "experts_gaussian", "experts_flow", "experts_shared"):
        assert (out / stage / "checkpoint.pt").exists(), stage
    # --resume of the finished run: every stage is loaded, the projectors are not retrained.
    checkpoint = out / "projectors" / "checkpoint.pt"
    data, stamp = checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns
    steps = []
    original = SharedInfoLoss.differentiable_loss
    monkeypatch.setattr(
        SharedInfoLoss, "differentiable_loss", lambda self, *a, **k: steps.append(1) or original(self, *a, **k)
    )
    assert main([*args, "--resume"]) == 0
    assert not steps
    assert checkpoint.read_bytes() == data and checkpoint.stat().st_mtime_ns == stamp
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["cross_coherence"] == metrics["cross_coherence"]  # same projectors and experts, same seed
    for key in ("test_elbo", "joint_coherence"):  # evaluation draws are reseeded, resumed or not
        assert resumed[key] == metrics[key], key
    assert main(["sample", "--run", str(out), "--given", "square", "--count", "4"]) == 0
    assert (out / "samples" / "samples_square.png").exists()
    # the subset posterior by MCMC; after one epoch some targets may be improper: warn, do not stop
    mcmc = ["sample", "--run", str(out), "--given", "square,circle", "--method", "mcmc", "--count", "3"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImproperPosteriorWarning)
        assert main([*mcmc, "--num-samples", "4", "--warmup", "30", "--improper", "warn"]) == 0
    saved = torch.load(out / "samples" / "samples_square+circle-mcmc.pt", weights_only=True)
    assert saved["method"] == "mcmc" and saved["z"].shape == (4, 3, 2)
    with pytest.raises(SystemExit, match="unknown modality"):
        main(["sample", "--run", str(out), "--given", "triangle"])


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="beta must be > 0"):
        main(["train", "--beta", "0", "--out", str(tmp_path / "x"), *SMALL])
    with pytest.raises(SystemExit, match="not a run folder"):
        main(["sample", "--run", str(tmp_path), "--given", "square"])
    with pytest.raises(SystemExit, match="--missing-rate 0.3: the toy JNF pipeline"):
        main(["train", "--missing-rate", "0.3", "--out", str(tmp_path / "m"), *SMALL])
    assert not (tmp_path / "m").exists()


def test_the_toy_data_takes_a_missing_rate():
    from pyro_mmvae.data.toy import CirclesSquares
    from pyro_mmvae.experiments.datasets import load_splits

    splits = load_splits("toy", None, train_size=2000, val_size=500, test_size=100, missing_rate=0.3, seed=4)
    for part in (splits.train, splits.validation):
        present = part.__getitems__(range(len(part))).present
        for mask in present.values():
            missing = 1 - mask.float().mean()  # each modality missing w.p. 0.3, never both
            assert abs(float(missing) - 0.3) < 4 * (0.3 * 0.7 / len(part)) ** 0.5
        assert bool((present["square"] | present["circle"]).all())
    assert bool(splits.test.__getitems__(range(100)).present["square"].all())  # the test split stays complete
    assert bool(CirclesSquares("train", 50).__getitems__(range(50)).present["circle"].all())
