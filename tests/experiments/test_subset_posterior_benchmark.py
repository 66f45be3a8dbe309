"""Smoke tests of the subset-posterior benchmark: its library pieces and ``benchmarks/subset_posterior.py``."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_mmvae.experiments.subset_posterior_benchmark import (
    CountingTarget,
    benchmark_target,
    experts_description,
    flow_experts,
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


def test_counting_target_counts_log_prob_calls():
    counted = CountingTarget(benchmark_target(4, 2, 2, 0.3, "cpu", torch.float32, seed=0))
    counted.log_prob(torch.zeros(4, 2))
    counted.log_prob(torch.zeros(4, 2))
    assert counted.calls == 2
    assert counted.initial_points(3).shape == (3, 4, 2)  # everything else passes through


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
    md = out.with_suffix(".md").read_text()
    assert format_table(record["results"]).splitlines()[0] in md
    assert md.rstrip().endswith(printed[-1])
