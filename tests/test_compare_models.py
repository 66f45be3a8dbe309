"""The model-comparison benchmark at tiny size on the toy data: its table, its resume, its "not supported"."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from pyro_mmvae.errors import InputError
from tests.benchmark_scripts import benchmark_script

MODELS = ["mvae", "mmvaeplus"]  # one PoE baseline, one with private latents (a different total capacity)
TINY = [
    "--dataset", "toy", "--train-size", "64", "--val-size", "32", "--test-size", "32", "--epochs", "1",
    "--batch-size", "32", "--latent-dim", "2", "--num-points", "16", "--num-prior", "32", "--llh-particles", "4",
    "--eval-batch-size", "16", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def script():
    with benchmark_script("compare_models") as module:
        yield module


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("compare")


def run(script, folder: Path, *extra: str) -> tuple[dict, list[str]]:
    argv = [*TINY, "--models", *MODELS, "--runs", str(folder / "runs"), "--out", str(folder / "table"), *extra]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        record = script.main(argv)
    return record, printed.getvalue().strip().splitlines()


@pytest.fixture(scope="module")
def first(script, folder):
    return run(script, folder)


def _mtimes(rows) -> dict:
    files = {}
    for r in rows:
        run_dir = Path(r["run"])
        for path in [run_dir / "vae" / "checkpoint.pt", *run_dir.glob("compare_eval-*.json")]:
            files[str(path)] = path.stat().st_mtime_ns
    return files


def test_one_row_per_model_with_every_metric(first, folder):
    record, lines = first
    rows = record["rows"]
    assert [r["model"] for r in rows] == MODELS
    for r in rows:
        assert r["error"] is None and r["train_status"] == "trained" and r["eval_status"] == "evaluated"
        assert set(r["coherence_per_size"]) == {"1"} and 0.0 <= r["coherence_mean"] <= 1.0
        assert 0.0 <= r["joint_coherence"] <= 1.0
        assert isinstance(r["log_likelihood"], float) and math.isfinite(r["log_likelihood"])
        assert r["log_likelihood"] < 0  # ~4000 binary pixels: log p(X) is far below 0
        assert r["parameters"] > 0 and r["train_epoch_s"] > 0 and r["eval_s"] > 0
        assert r["epochs_run"] == {"vae": 1}
    by_model = {r["model"]: r["latent"] for r in rows}
    assert by_model["mvae"] == {"shared": 2, "private_per_modality": 0, "total": 2}
    assert by_model["mmvaeplus"] == {"shared": 2, "private_per_modality": 2, "total": 6}
    assert any("capacity differs" in n for n in record["notes"])

    saved = json.loads((folder / "table.json").read_text())
    assert [r["model"] for r in saved["rows"]] == MODELS and saved["command"].startswith("python benchmarks/")
    assert saved["machine"]["threads"] == 1 and "date" in saved
    table = [ln for ln in (folder / "table.md").read_text().splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| model | latent |") and len(table) == 1 + len(MODELS)
    assert table[2].startswith("| mmvaeplus | 2 + 2/mod = 6 |")
    assert lines[-1] == "models_compared=2"


def test_a_second_call_reuses_runs_and_evaluations(script, first, folder):
    before = _mtimes(first[0]["rows"])
    record, lines = run(script, folder)
    assert {(r["train_status"], r["eval_status"]) for r in record["rows"]} == {("reused", "reused")}
    assert _mtimes(record["rows"]) == before  # no checkpoint and no evaluation was written again
    for old, new in zip(first[0]["rows"], record["rows"]):
        assert new["coherence_per_subset"] == old["coherence_per_subset"]
        assert new["log_likelihood"] == old["log_likelihood"]
    assert lines[-1] == "models_compared=2"


def test_an_interrupted_run_is_resumed_not_restarted(script, first, folder):
    mvae = Path(first[0]["rows"][0]["run"])
    checkpoint = (mvae / "vae" / "checkpoint.pt").stat().st_mtime_ns
    (mvae / "train.json").unlink()  # as if killed after its last epoch, before the run's summary
    (mvae / script.TRAIN_MARKER).unlink()
    record, _ = run(script, folder)
    assert [r["train_status"] for r in record["rows"]] == ["resumed", "reused"]
    assert (mvae / "train.json").exists() and (mvae / "vae" / "checkpoint.pt").stat().st_mtime_ns == checkpoint


def test_a_likelihood_failure_is_recorded_not_raised(script, first, folder, monkeypatch):
    real = script.evaluate_run

    def no_likelihood(run_dir, *, llh_particles, **options):
        if llh_particles:
            raise NotImplementedError("this guide proposes no importance samples")
        return real(run_dir, llh_particles=0, **options)

    monkeypatch.setattr(script, "evaluate_run", no_likelihood)
    record, lines = run(script, folder, "--llh-particles", "3", "--models", "mvae")  # a new evaluation key
    (row,) = record["rows"]
    assert row["error"] is None and row["eval_status"] == "evaluated"
    assert row["log_likelihood"].startswith("not supported: NotImplementedError")
    assert "| not supported |" in (folder / "table.md").read_text()
    assert lines[-1] == "models_compared=1"


def test_bad_options_are_refused(script):
    with pytest.raises(InputError, match="unknown model"):
        script.parse_args(["--models", "vae9000"])
    with pytest.raises(InputError, match="data-root"):
        script.parse_args(["--dataset", "polymnist"])


def test_networks_and_beta_reach_every_models_run(script, tmp_path):
    args = script.parse_args(
        ["--dataset", "polymnist", "--data-root", str(tmp_path), "--nets", "mopoe", "--beta", "1.0",
         "--runs", str(tmp_path / "runs")]
    )  # fmt: skip
    for model in ("sumpooling", "mmvae"):
        config = script.run_config(args, model)
        assert config.nets == "mopoe" and config.beta == 1.0
    other = script.run_config(script.parse_args([*TINY[:2], "--runs", str(tmp_path / "runs")]), "mvae")
    assert other.nets is None and other.beta is None
    with pytest.raises(InputError, match="--nets"):
        script.run_config(script.parse_args([*TINY[:2], "--nets", "mopoe", "--runs", str(tmp_path)]), "mvae")
    with pytest.raises(InputError, match="--beta"):
        script.run_config(script.parse_args([*TINY[:2], "--beta", "-1", "--runs", str(tmp_path)]), "mvae")
