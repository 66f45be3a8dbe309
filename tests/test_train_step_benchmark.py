"""``benchmarks/train_step.py`` at a tiny size: every setting runs, the files and the last line are written."""

import json

from tests.benchmark_scripts import benchmark_script


def test_train_step_benchmark_writes_its_results(tmp_path, capsys):
    with benchmark_script("train_step") as script:
        assert script.main(["--steps", "2", "--rounds", "1", "--out", str(tmp_path / "steps")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("masked_step_ms_table3_sumpooling=")
    result = json.loads((tmp_path / "steps.json").read_text())
    assert [r["setting"] for r in result["rows"]] == [s[0] for s in script.SETTINGS]  # no --polymnist-root
    assert all(r["shared_ms"] > 0 and r["unshared_ms"] > 0 for r in result["rows"])
    assert lines[-1] in (tmp_path / "steps.md").read_text()
