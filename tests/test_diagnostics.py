"""Vectorised R-hat / ESS against ArviZ, the InferenceData adapter, plots and worst-target tables."""

import os
import subprocess
import sys

import numpy as np
import pytest

from pyro_mmvae.diagnostics import (
    diagnose,
    ess,
    import_arviz,
    plot_targets,
    rhat,
    summarize_targets,
    to_inference_data,
    worst_targets,
)


def ar1_draws(chains, draws, width, phi, seed=0):
    """AR(1) chains ``(C, S, width)``; column 1 rounded (ties), column 2 shifted per chain (R-hat > 1)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((chains, draws, width))
    eps = rng.standard_normal((chains, draws, width))
    for s in range(draws):
        x[:, s] = (phi * x[:, s - 1] if s else 0.0) + eps[:, s]
    x[..., 1] = np.round(x[..., 1])
    x[..., 2] += 0.3 * np.arange(chains)[:, None]
    return x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "chains,draws,phi",
    [(4, 200, 0.5), (4, 101, 0.95), (2, 50, -0.6), (3, 7, 0.2), (1, 120, 0.7)],
    ids=["C4S200", "C4S101_slow", "C2S50_antithetic", "C3S7_short", "C1"],
)
def test_rhat_and_ess_agree_with_arviz(chains, draws, phi, dtype):
    az = import_arviz()
    x = ar1_draws(chains, draws, 4, phi, seed=draws).astype(dtype)
    mine = {"rhat": rhat(x), **{m: ess(x, m) for m in ("bulk", "tail", "mean", "sd")}}
    combined = diagnose(x)
    for j in range(x.shape[-1]):
        ref = {"rhat": az.rhat(x[..., j], method="rank")}
        ref.update({m: az.ess(x[..., j], method=m) for m in ("bulk", "tail", "mean", "sd")})
        for name, value in ref.items():
            value = float(value)
            if np.isnan(value):
                assert np.isnan(mine[name][j]), (name, j)
            else:
                assert mine[name][j] == pytest.approx(value, rel=1e-6), (name, j)
        for name, key in (("rhat", "rhat"), ("bulk", "ess_bulk"), ("tail", "ess_tail")):
            np.testing.assert_allclose(combined[key][j], mine[name][j], rtol=1e-12, equal_nan=True)


def test_shapes_nan_and_constant_series():
    x = np.random.default_rng(0).standard_normal((4, 50, 3, 2))
    x[:, :, 0, 0] = 1.5  # constant: ESS = number of draws
    x[0, 3, 1, 1] = np.nan
    r, e = rhat(x), ess(x)
    assert r.shape == e.shape == (3, 2)
    assert e[0, 0] == 200
    assert np.isnan(r[1, 1]) and np.isnan(e[1, 1])
    assert np.isfinite(r[2]).all()
    with pytest.raises(ValueError, match="unknown ESS method"):
        ess(x, "median")


def test_torch_input():
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 40, 3, dtype=torch.float32)
    np.testing.assert_allclose(rhat(x), rhat(x.numpy()))


def test_summary_finds_the_bad_targets():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 300, 6, 3))
    x[0, :, 2, 1] += 3.0  # one chain elsewhere: R-hat
    x[:, :, 4, 0] = np.repeat(rng.standard_normal((4, 30)), 10, axis=1)  # sticky chains: low ESS
    diverging = np.zeros((4, 300, 6), dtype=bool)
    diverging[1, 5:8, 5] = True
    summary = summarize_targets(x, {"diverging": diverging, "accept_prob": np.full((4, 300, 6), 0.8)})
    assert summary["max_rhat"].argmax() == 2
    assert set(np.argsort(summary["min_ess_bulk"])[:2]) == {2, 4}  # the shifted chain lowers ESS too
    assert summary["divergences"].tolist() == [0, 0, 0, 0, 0, 3]
    assert summary["mean_accept"] == pytest.approx(np.full(6, 0.8))
    table = worst_targets(summary, k=2, by="max_rhat", target_ids=[10, 11, 12, 13, 14, 15])
    assert list(table.index) == [12, table.index[1]] and table.index.name == "target"
    assert set(worst_targets(summary, k=2).index) == {2, 4}
    assert worst_targets(summary, k=1, by="divergences").index[0] == 5
    with pytest.raises(KeyError, match="cannot rank by"):
        worst_targets(summary, by="nope")


def test_inference_data_and_plots(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 40, 5, 3))
    stats = {"acceptance_rate": rng.uniform(size=(2, 40, 5)), "diverging": np.zeros((2, 40, 5), dtype=bool)}
    idata = to_inference_data(x, stats, target_ids=[100, 101, 102, 103, 104])
    post = idata.posterior["z"]
    assert post.dims == ("chain", "draw", "target", "zdim") and post.shape == (2, 40, 5, 3)
    assert list(idata.posterior["target"].values) == [100, 101, 102, 103, 104]
    assert idata.sample_stats["diverging"].dims == ("chain", "draw", "target")
    az = import_arviz()
    sel = az.rhat(idata, var_names=["z"]).sel(target=102)["z"].values
    np.testing.assert_allclose(sel, rhat(x)[2], rtol=1e-6)
    paths = plot_targets(idata, [101, 103], tmp_path, zdims=[0, 1])
    assert len(paths) == 6 and all(p.suffix == ".png" and p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError, match="sample stat 'bad'"):
        to_inference_data(x, {"bad": np.zeros((2, 40))})
    with pytest.raises(ValueError, match="unknown plot kind"):
        plot_targets(idata, [101], tmp_path, kinds=["forest"])


def test_arviz_import_warning_is_filtered(tmp_path):
    # a fresh cache dir makes arviz emit its once-a-day FutureWarning; -W error turns it into a failure
    code = "from pyro_mmvae.diagnostics import import_arviz; import_arviz()"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "arviz" / "daily_warning").exists()  # the warning path was taken
