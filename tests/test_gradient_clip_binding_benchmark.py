"""``benchmarks/gradient_clip_binding.py`` on one short configuration: the published clip's share is measured
at every step, and it binds at least as often as the library's larger default clip."""

import json

from tests.benchmark_scripts import benchmark_script


def test_gradient_clip_binding_benchmark_writes_its_results(tmp_path, capsys):
    with benchmark_script("gradient_clip_binding") as script:
        rows = script.main(["--configs", "1:PoE:masked:1", "--out", str(tmp_path / "clip")])
    (r,) = rows
    assert r["steps"] == 5000 // 500 and r["threshold"] == 100.0 / 500
    assert 0.0 <= r["elements_clipped"] <= 1.0 and r["median_max_abs_grad"] > 0
    # ±clip/B is the tighter bound: every step the default clip cuts, the published clip cuts too
    assert r["steps_clipped_by_default"] <= r["steps_clipped"]
    saved = json.loads((tmp_path / "clip.json").read_text())
    assert saved["rows"] == rows and saved["command"].startswith("python benchmarks/gradient_clip_binding.py")
    assert "| 1 | PoE | masked | 1 (10) |" in (tmp_path / "clip.md").read_text()
    assert "Table 1 PoE masked: 10 steps" in capsys.readouterr().out
