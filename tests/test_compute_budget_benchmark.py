"""``benchmarks/compute_budget.py`` on Table 3: FLOPs per step counted, stored runs read back (by their
configuration key) and used for the estimate of the others, totals and the written report consistent."""

import json
import math
from dataclasses import replace

import pytest

from pyro_mmvae.experiments.pi_tables import FULL, RunOptions, find_row, find_section
from pyro_mmvae.experiments.pi_tables.runner import configuration_key
from tests.benchmark_scripts import benchmark_script


def _stored(runs, table, section, row, objective, seed, seconds, status="finished", settings=None):
    sec = find_section(table, section)
    run_dir, key = configuration_key(
        table, sec, find_row(sec, row), objective, seed, settings or FULL[table], RunOptions(), runs
    )
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({"key": key, "status": status, "train_seconds": seconds}))
    return run_dir


def test_compute_budget_counts_flops_and_estimates_from_finished_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    _stored(runs, 3, "main", "PoE", "masked", 0, 100.0)
    _stored(runs, 3, "main", "PoE", "masked", 1, 300.0)
    _stored(runs, 3, "main", "PoE", "masked", 2, None, status="diverged")  # done, but no timing
    _stored(runs, 3, "main", "SumPooling", "masked", 0, 50.0, settings=replace(FULL[3], epochs=10))  # not full
    with benchmark_script("compute_budget") as script:
        args = ["--tables", "3", "--steps", "1", "--runs-dir", str(runs), "--out", str(tmp_path / "b")]
        assert script.main(args) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        # Table 4's partially observed runs live in tagged folders (keep probability): found by their key
        folder = _stored(runs, 4, "eta=0.5", "SumPooling", "masked", 3, 10.0)
        assert folder.name != "seed3"
        eta = find_section(4, "eta=0.5")
        found = script.stored_runs(runs, 4, eta, find_row(eta, "SumPooling"), "masked")
        assert [r["train_seconds"] for r in found] == [10.0]
        # without timed steps, kinds with no finished run have no estimate: the total says so (nan)
        assert script.main(["--tables", "3", "--steps", "0", "--runs-dir", str(runs)]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == "remaining_core_hours=nan"
    saved = json.loads((tmp_path / "b.json").read_text())
    kinds = {(k["row"], k["objective"]): k for k in saved["kinds"]}
    assert len(kinds) == 18 and saved["matmul_peak_gflops"] > 0

    poe = kinds["PoE", "masked"]
    assert poe["steps_per_run"] == 4000 * (4000 // 250) and poe["seeds"] == [0, 1, 2, 3]
    assert poe["finished"] == 2 and poe["done"] == 3 and poe["measured_seconds_per_run"] == pytest.approx(200.0)
    assert poe["measured_gflops"] == pytest.approx(poe["gflop_per_run"] / 200.0)
    # both PoE means run the same networks; the set networks cost more, attention the most
    assert poe["flops_per_step"] == kinds["PoE (paper mean)", "masked"]["flops_per_step"] > 0
    assert poe["flops_per_step"] < kinds["SumPooling", "masked"]["flops_per_step"]
    assert kinds["SumPooling", "masked"]["flops_per_step"] < kinds["SelfAttention", "masked"]["flops_per_step"]
    assert kinds["SumPooling", "masked"]["done"] == 0  # its result has 10 epochs, not 4000

    # kinds without a finished run: their eager step timed here, for every step of a run
    sp = kinds["SumPooling", "mixture"]
    assert sp["estimate_from"] == "eager step" and sp["eager_ms"] > 0
    assert sp["estimate_seconds_per_run"] == pytest.approx(sp["eager_ms"] / 1e3 * sp["steps_per_run"])
    (total,) = saved["totals"]
    assert total["configurations"] == 72 and total["finished"] == 2 and total["done"] == 3
    others = [k for key, k in kinds.items() if key != ("PoE", "masked")]
    expected = 1 * 200.0 + sum(4 * k["estimate_seconds_per_run"] for k in others)  # one PoE seed left
    assert total["estimate_core_hours_remaining"] == pytest.approx(expected / 3600)
    assert math.isfinite(total["estimate_core_hours_remaining"])
    assert total["measured_core_hours_finished"] == pytest.approx(400.0 / 3600)
    assert last == f"remaining_core_hours={total['estimate_core_hours_remaining']:.1f}"
    assert "| 3 | 72 | 3 (2) |" in (tmp_path / "b.md").read_text()
