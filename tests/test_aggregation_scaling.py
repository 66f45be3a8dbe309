"""Smoke tests of the aggregation-scaling benchmark's machinery (tiny sizes, one step; nothing is timed)."""

from __future__ import annotations

import json

import pyro
import pytest
import torch

from tests.benchmark_scripts import benchmark_script


@pytest.fixture(scope="module")
def script():
    with benchmark_script("aggregation_scaling") as module:
        yield module


def test_end_to_end_reports_every_pair_and_the_mopoe_cap(script, tmp_path, capsys):
    cap = script.MAX_MOPOE_MODALITIES
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["--ms", "2", str(cap + 1), "--steps", "1", "--warmup", "0", "--batch-size", "6", "--width", "8"]
    report = script.main([*argv, "--json", str(out_json), "--markdown", str(out_md)])

    saved = json.loads(out_json.read_text())
    assert saved["ms"] == [2, cap + 1] and saved["elbo"].startswith("MaskedELBO")
    by_key = {(r["num_modalities"], r["guide"]): r for r in saved["results"]}
    assert set(by_key) == {(m, g) for m in (2, cap + 1) for g in script.GUIDES}
    for (m, guide), r in by_key.items():
        if guide == "MoPoE" and m > cap:
            assert r["median_ms"] is None and f"M <= {cap}" in r["error"]
        else:
            assert r["error"] is None, r["error"]
            assert r["median_ms"] > 0 and r["memory_mib"] > 0 and r["parameters"] > 0
    assert report["step_ratio_m50_vs_m5"]["SumPooling M=50/M=5"] is None  # M = 50 was not run

    md = out_md.read_text()
    assert "capped" in md and saved["command"] in md
    assert "`sumpooling_step_ratio_m50_vs_m5=nan`" in md
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(f"MoPoE, M = {cap + 1}:" in ln for ln in lines)
    assert lines[-1] == "sumpooling_step_ratio_m50_vs_m5=nan"


def test_saved_tensor_memory_grows_with_the_number_of_modalities(script):
    s = script.Settings(batch_size=16, width=8)
    pyro.set_rng_seed(0)
    small = script.Pair(2, "PoE", s, torch.device("cpu"), seed=0).memory_bytes()
    large = script.Pair(8, "PoE", s, torch.device("cpu"), seed=0).memory_bytes()
    assert 0 < small < large
