"""Smoke tests of the subset-posterior benchmark: its library pieces and ``benchmarks/subset_posterior.py``."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_mmvae.experiments.blackjax_reference import blackjax_available
from pyro_mmvae.experiments.subset_posterior_benchmark import (
    benchmark_target,
    experts_description,
    flow_experts,
    format_efficiency,
    format_table,
)
from tests.benchmark_scripts import benchmark_script


@pytest.mark.parametrize("kind", ["flow", "gaussian"])
def test_target_is_reproducible_and_batched(kind):
    z = torch.randn(2, 5, 3)  # (C, N, D)
    lp = [benchmark_target(5, 3, 3, 0.3, "cpu", torch.float32, seed=1, kind=kind).log_prob(z) for _ in range(2)]
    assert lp[0].shape == (2, 5)
    assert torch.equal(lp[0], lp[1])
    assert len(flow_experts(5, 3, 2, 8, 0.3, "cpu", torch.float32, seed=1, kind=kind)) == 2
    assert experts_description(kind, 0.3).startswith("flow experts" if kind == "flow" else "Gaussian")


def test_scale_ranges():
    target = benchmark_target(50, 3, 3, 0.3, "cpu", torch.float32, seed=2, kind="gaussian")
    scales = torch.stack([e.base_dist.scale for e in target.experts.values()])
    assert scales.min() >= 0.1 and scales.max() <= 2.0 and scales[0].max() <= 0.35  # the Gaussian default
    wide = benchmark_target(50, 3, 3, 0.3, "cpu", torch.float32, seed=2, kind="gaussian", scale_range=(0.05, 5))
    assert torch.stack([e.base_dist.scale for e in wide.experts.values()]).max() > 2.0
    assert "scales 0.1-2" in experts_description("gaussian", 0.3)
    with pytest.raises(ValueError, match="scale_range"):
        flow_experts(5, 3, 2, 8, 0.3, "cpu", torch.float32, seed=1, scale_range=(0.5, 2.0))


def test_script_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "spb"
    argv = ["--n", "4", "--d", "2", "--warmup", "12", "--samples", "8", "--nuts-warmup", "4", "--nuts-samples", "4"]
    with benchmark_script("subset_posterior") as script:
        record = script.main([*argv, "--arviz-targets", "2", "--out", str(out)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("N=4 D=2 |S|=3 flow experts")
    assert printed[-1].startswith("min_ess_per_s_ratio_vs_pyro_nuts=")
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [r["sampler"] for r in saved["results"]] == ["BatchedHMC", "Pyro NUTS (one plate)"]
    assert saved["results"][0]["grad_evals"] == record["results"][0]["grad_evals"] > 0
    assert set(saved["machine"]) >= {"cpu", "cpu_count", "platform", "torch", "pyro"}
    for row in saved["results"]:  # the work accounting adds up
        assert 0 < row["warmup_share_of_grads"] < 1 and 0 < row["warmup_share_of_time"] < 1
        assert row["ess_per_grad"] == pytest.approx(row["ess_per_grad_fraction_of_ideal"] * 0.5)
        assert row["executed_steps"] >= row["mean_steps"] > 0
    hmc = saved["results"][0]
    single = hmc["grad_evals"] * hmc["chains"]  # one batched call = one gradient of every chain
    assert hmc["ess_per_grad"] == pytest.approx(hmc["min_target_ess_bulk"] / single)
    md = out.with_suffix(".md").read_text()
    assert format_table(record["results"]).splitlines()[0] in md
    assert format_efficiency(record["results"]).splitlines()[0] in md
    assert md.rstrip().endswith(printed[-1])


@pytest.mark.slow
@pytest.mark.skipif(blackjax_available() is not None, reason="jax/blackjax not installed (the [bench] extra)")
def test_script_compares_gaussian_experts_with_blackjax(tmp_path, capsys):
    argv = ["--n", "3", "--d", "2", "--warmup", "30", "--samples", "20", "--expert-kind", "gaussian", "--skip-nuts"]
    with benchmark_script("subset_posterior") as script:
        record = script.main([*argv, "--arviz-targets", "2"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("min_ess_per_s_ratio_vs_blackjax=")
    bj = record["results"][1]
    assert bj["key"] == "blackjax" and bj["compile_s"] > 0 and bj["executed_steps"] >= bj["mean_steps"]


@pytest.mark.slow
@pytest.mark.skipif(blackjax_available() is not None, reason="jax/blackjax not installed (the [bench] extra)")
def test_blackjax_reference_matches_the_closed_form():
    from pyro_mmvae.experiments.blackjax_reference import run_blackjax_nuts
    from tests.infer.mcmc.test_kernel import check_against_closed_form
    from tests.infer.test_subset_posterior import random_gaussian_target

    target = random_gaussian_target(3, n=4, d=3, seed=1)
    run = run_blackjax_nuts(target, target.initial_points(4), target.approximate_variance(), 800, 300, seed=0)
    assert run.samples.shape == (4, 800, 4, 3) and run.num_steps.shape == (4, 800, 4)
    assert run.extra["executed_grad_evals"] >= run.num_grad_evals > 0
    check_against_closed_form(run, target, rhat_max=1.02)
