"""``benchmarks/train_step.py`` at a tiny size: every setting runs, the files and the last line are written;
the jitted JAX reference step computes the library's objective."""

import json
import shutil
import statistics

import pytest
import torch

from tests.benchmark_scripts import benchmark_script


def test_train_step_benchmark_writes_its_results(tmp_path, capsys):
    with benchmark_script("train_step") as script:
        args = ["--steps", "2", "--rounds", "1", "--skip-jax", "--skip-compile", "--out", str(tmp_path / "steps")]
        assert script.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("masked_step_ms_table3_sumpooling=")
    result = json.loads((tmp_path / "steps.json").read_text())
    assert [r["setting"] for r in result["rows"]] == [s[0] for s in script.SETTINGS]  # no --polymnist-root
    assert all(r["library_ms"] > 0 and r["validated_ms"] > 0 and r["unshared_ms"] > 0 for r in result["rows"])
    assert all(r["jax_ms"] is None for r in result["rows"])
    assert lines[-1] in (tmp_path / "steps.md").read_text()
    assert lines[-2].startswith("masked_step_ms_table3_sumpooling_eager=")
    assert lines[-1].split("=")[1] == lines[-2].split("=")[1]  # nothing compiled: the eager step is the fastest


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="Inductor needs a C++ compiler")
def test_the_compiled_step_of_the_benchmark_trains():
    with benchmark_script("train_step") as script:
        setup = script.build(3, "main", "PoE")
        compiled, seconds = script.compiled_step(setup)
        assert compiled is not None and seconds > 0
        before = [p.detach().clone() for p in setup[4]]
        assert script.time_steps(setup, 3, compiled=compiled) > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, setup[4]))  # the timed steps moved the weights


@pytest.mark.parametrize(
    "table, section, aggregator",
    [(3, "main", "SumPooling"), (3, "main", "PoE"), pytest.param(4, "eta=0.5", "SumPooling", marks=pytest.mark.slow)],
)
def test_the_jax_reference_step_computes_the_library_objective(table, section, aggregator):
    pytest.importorskip("jax")
    from pyro_mmvae.experiments.jax_train_step import JaxTrainStep

    with benchmark_script("train_step") as script:
        model, guide, elbo, _, _, batches, settings = script.build(table, section, aggregator)
    torch.manual_seed(0)
    library = [float(elbo.loss(model, guide, batches[0])) for _ in range(300)]
    frozen = JaxTrainStep(model, guide, lr=0.0, clip=settings.clip)  # lr 0: the same weights every call
    jax = [frozen.step(batches[0]) for _ in range(300)]
    # the same estimator of the same bound at the same weights: the means agree within Monte Carlo error
    se = (statistics.variance(library) / len(library) + statistics.variance(jax) / len(jax)) ** 0.5
    assert abs(statistics.mean(library) - statistics.mean(jax)) < 4 * se
    trained = JaxTrainStep(model, guide, lr=settings.lr, clip=settings.clip)
    losses = [trained.step(b) for b in (batches * 3)[:48]]
    assert statistics.mean(losses[-8:]) < statistics.mean(losses[:8])  # Adam steps decrease the loss
