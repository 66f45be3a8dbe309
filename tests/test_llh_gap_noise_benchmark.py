"""``benchmarks/llh_gap_noise.py``: continues a finished Table 1 run itself (from its final checkpoint, in a
copy of its folder) and records the relative LLH gap along the way; the original run folder is not touched."""

import hashlib
import json

import pytest

from pyro_mmvae.experiments.pi_tables import RunOptions, run_configuration, run_folder, table_settings
from tests.benchmark_scripts import benchmark_script


def _digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_continuations_resume_the_stored_run_and_leave_it_untouched(tmp_path, capsys):
    settings = table_settings(1, quick=True, epochs=2, num_train=200)
    stored = run_configuration(1, "main", "SumPooling", "masked", 0, settings, RunOptions(), tmp_path)
    folder = run_folder(tmp_path, 1, "main", "SumPooling", "masked", 0)
    before = _digest(folder)
    with benchmark_script("llh_gap_noise") as script:
        kwargs = dict(runs_dir=tmp_path, epochs=4, every=2, settings=settings)
        still = script.continued_gaps("SumPooling", "masked", 0, lr=1e-12, **kwargs)
        moving = script.continued_gaps("SumPooling", "masked", 0, lr=1e-2, **kwargs)
        with pytest.raises(FileNotFoundError, match="no result of this configuration"):
            script.continued_gaps("SumPooling", "masked", 1, lr=1e-2, **kwargs)  # never trained
        out = tmp_path / "noise"
        # the script's own settings are the full ones: this quick run is skipped with the reason
        assert script.main(["--seeds", "0,7", "--runs-dir", str(tmp_path), "--out", str(out), "--lrs", "1e-3"]) == 0
        with pytest.raises(SystemExit):
            script.main(["--epochs", "5", "--every", "10"])
    assert _digest(folder) == before  # continued in a copy
    assert still["epochs_before"] == 2
    assert still["start"] == moving["start"] == pytest.approx(stored["metrics"]["llh_gap"], rel=1e-9)
    assert [e for e, _ in still["gaps"]] == [4, 6]  # epochs 3-6 of the same run
    assert all(g == pytest.approx(still["start"], rel=1e-9) for _, g in still["gaps"])
    assert all(g != pytest.approx(moving["start"], rel=1e-6) for _, g in moving["gaps"])
    text = capsys.readouterr().out
    assert "SumPooling masked seed 0: skipped (" in text and "SumPooling masked seed 7: skipped (" in text
    assert json.loads(out.with_suffix(".json").read_text())["rows"] == []
