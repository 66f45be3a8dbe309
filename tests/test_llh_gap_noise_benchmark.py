"""``benchmarks/llh_gap_noise.py``: continues a finished Table 1 configuration from its stored weights (not from
a retrained model) and records the relative LLH gap along the way."""

import pytest

from pyro_mmvae.experiments.pi_tables import RunOptions, run_configuration, table_settings
from tests.benchmark_scripts import benchmark_script


def test_continuations_start_from_the_stored_weights(tmp_path, capsys):
    settings = table_settings(1, quick=True, epochs=2, num_train=200)
    stored = run_configuration(1, "main", "SumPooling", "masked", 0, settings, RunOptions(), tmp_path)
    with benchmark_script("llh_gap_noise") as script:
        kwargs = dict(runs_dir=tmp_path, epochs=4, every=2, settings=settings)
        still = script.continued_gaps("SumPooling", "masked", 0, lr=1e-12, **kwargs)
        moving = script.continued_gaps("SumPooling", "masked", 0, lr=1e-2, **kwargs)
        assert script.continued_gaps("SumPooling", "masked", 1, lr=1e-2, **kwargs) is None  # never trained
        assert script.main(["--seeds", "7,", "--runs-dir", str(tmp_path)]) == 0
    assert still["start"] == moving["start"] == pytest.approx(stored["metrics"]["llh_gap"], rel=1e-9)
    assert [e for e, _ in still["gaps"]] == [2, 4]
    assert all(g == pytest.approx(still["start"], rel=1e-9) for _, g in still["gaps"])
    assert all(g != pytest.approx(moving["start"], rel=1e-6) for _, g in moving["gaps"])
    assert "SumPooling masked seed 7: no finished run" in capsys.readouterr().out
