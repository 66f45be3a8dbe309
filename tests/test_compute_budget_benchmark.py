"""``benchmarks/compute_budget.py`` on Table 3: FLOPs per step counted, finished runs read back and used for
the estimate of the unfinished ones, totals and the written report consistent with each other."""

import json

import pytest

from tests.benchmark_scripts import benchmark_script


def _finished(runs, folder, seconds, epochs=4000):
    folder = runs / "table3" / "main" / folder
    folder.mkdir(parents=True)
    key = {"settings": {"epochs": epochs}}
    (folder / "result.json").write_text(
        json.dumps({"key": key, "status": "finished", "train_seconds": seconds, "eval_seconds": 1.0})
    )


def test_compute_budget_counts_flops_and_estimates_from_finished_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    _finished(runs, "PoE/masked/seed0", 100.0)
    _finished(runs, "PoE/masked/seed1", 300.0)
    _finished(runs, "SumPooling/masked/seed0", 50.0, epochs=10)  # a shorter run: not a full-setting result
    with benchmark_script("compute_budget") as script:
        args = ["--tables", "3", "--steps", "1", "--runs-dir", str(runs), "--out", str(tmp_path / "b")]
        assert script.main(args) == 0
    saved = json.loads((tmp_path / "b.json").read_text())
    kinds = {(k["row"], k["objective"]): k for k in saved["kinds"]}
    assert len(kinds) == 18 and saved["matmul_peak_gflops"] > 0

    poe = kinds["PoE", "masked"]
    assert poe["steps_per_run"] == 4000 * (4000 // 250) and poe["seeds"] == [0, 1, 2, 3]
    assert poe["finished"] == 2 and poe["measured_seconds_per_run"] == pytest.approx(200.0)
    assert poe["measured_gflops"] == pytest.approx(poe["gflop_per_run"] / 200.0)
    # both PoE means run the same networks; the set networks cost more, attention the most
    assert poe["flops_per_step"] == kinds["PoE (paper mean)", "masked"]["flops_per_step"] > 0
    assert poe["flops_per_step"] < kinds["SumPooling", "masked"]["flops_per_step"]
    assert kinds["SumPooling", "masked"]["flops_per_step"] < kinds["SelfAttention", "masked"]["flops_per_step"]
    assert kinds["SumPooling", "masked"]["finished"] == 0  # its result has 10 epochs, not 4000

    # unfinished kinds: their eager step scaled by the finished kind's measured / eager ratio
    ratio = poe["measured_vs_eager"]
    sp = kinds["SumPooling", "mixture"]
    assert sp["estimate_seconds_per_run"] == pytest.approx(sp["eager_ms"] / 1e3 * sp["steps_per_run"] * ratio)
    (total,) = saved["totals"]
    assert total["configurations"] == 72 and total["finished"] == 2
    others = [k for key, k in kinds.items() if key != ("PoE", "masked")]
    expected = 2 * 200.0 + sum(4 * k["estimate_seconds_per_run"] for k in others)
    assert total["estimate_core_hours_remaining"] == pytest.approx(expected / 3600)
    assert total["measured_core_hours_finished"] == pytest.approx(400.0 / 3600)
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"remaining_core_hours={total['estimate_core_hours_remaining']:.1f}"
    assert "| 3 | 72 | 2 |" in (tmp_path / "b.md").read_text()
