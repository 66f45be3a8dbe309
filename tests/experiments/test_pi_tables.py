"""Smoke tests of the Tables 1-4 reproduction (pyro_mmvae.experiments.pi_tables and its command), tiny data,
one epoch; and of the published-numbers loader."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest
import torch

from pyro_mmvae.data.synthetic import multimodal_linear
from pyro_mmvae.experiments.pi_tables import (
    LAYOUT,
    METRICS,
    OBJECTIVES,
    PAPER_MEAN_POE,
    PUBLISHED,
    Row,
    build_model,
    check_claims,
    llh_gap,
    metric_value,
)
from pyro_mmvae.experiments.pi_tables.published import load_published
from pyro_mmvae.metrics.linear_gaussian import linear_decoder_model
from tests.benchmark_scripts import benchmark_script


@pytest.fixture(scope="module")
def script():
    with benchmark_script("reproduce_pi_tables") as module:
        yield module


def test_one_table_one_aggregator_end_to_end(script, tmp_path):
    out = tmp_path / "pi"
    argv = [
        "--tables", "1", "--rows", "SumPooling", "--epochs", "1", "--seeds", "1", "--num-train", "100",
        "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--no-progress",
    ]  # fmt: skip
    report = script.main(argv)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["name"] == "medium"  # any override of the full settings is not called "full"
    cells = saved["tables"]["1"]["sections"]["main"]["SumPooling"]
    assert set(cells) == {"masked", "mixture"}
    for obj in ("masked", "mixture"):
        for metric in ("llh_gap", "full_reconstruction", "full_rate", "cross_prediction", "cross_rate"):
            summary = cells[obj][metric]
            assert summary["n"] == 1 and math.isfinite(summary["mean"]) and summary["std"] == 0.0
    claims = saved["tables"]["1"]["claims"]["main"]
    assert isinstance(claims["masked_ge_mixture_llh"]["SumPooling"], bool)
    assert claims["masked_ge_mixture_llh"]["SumPooling"] == (
        cells["masked"]["llh_gap"]["mean"] <= cells["mixture"]["llh_gap"]["mean"]
    )
    md = out.with_suffix(".md").read_text()
    assert "⟨3.60e-05⟩" in md and "Claims" in md and "command:" in md
    # every configuration leaves a result.json; a second call reuses them instead of retraining
    again = script.main(argv)
    assert again["num_cached"] == 2 == report["num_configurations"]
    assert again["tables"]["1"]["sections"] == report["tables"]["1"]["sections"]
    # adding a seed trains only the new seed's configurations
    more = script.main([a if a != "1" or argv[i - 1] != "--seeds" else "2" for i, a in enumerate(argv)])
    assert more["num_cached"] == 2 and more["num_configurations"] == 4
    two = more["tables"]["1"]["sections"]["main"]["SumPooling"]["masked"]
    assert two["llh_gap"]["n"] == 2
    # |gap to the true model| is derived from each stored true_gap when the report is built
    assert two["abs_true_gap"]["values"] == [abs(v) for v in two["true_gap"]["values"]]
    assert two["abs_true_gap"]["mean"] == pytest.approx(sum(abs(v) for v in two["true_gap"]["values"]) / 2)
    assert metric_value({"true_gap": -2e-5}, "abs_true_gap") == 2e-5 and metric_value({}, "abs_true_gap") is None
    assert metric_value({"llh_gap": -1.0}, "llh_gap") == -1.0
    # --report-only trains nothing: the report holds the stored configurations of the plan, and no others
    three = [a if a != "1" or argv[i - 1] != "--seeds" else "3" for i, a in enumerate(argv)]
    stored = script.main([*three, "--report-only"])
    assert stored["num_configurations"] == 6 and stored["num_cached"] == 4
    assert stored["tables"]["1"]["sections"] == more["tables"]["1"]["sections"]
    assert not list((tmp_path / "runs").rglob("seed2"))  # the third seed was not started


def test_claims_on_published_numbers():
    t3 = check_claims(3, PUBLISHED[3])["main"]
    assert t3["masked_ge_mixture_llh"]["all"] is True
    assert t3["learned_ge_fixed_llh"] == {"masked": True, "mixture": True}
    assert t3["gmm_mixture_best_llh"]["masked_best_row"] == "SumPoolingMixture (GMM prior)"
    # in the paper's own Table 2 (sparse part) the PoE has the best MCC, so that claim fails there
    t2 = check_claims(2, PUBLISHED[2])["sparse"]
    assert t2["learned_ge_fixed_mcc"]["masked"] is False
    # Table 4, η = 0.5, mixture bound: the best row is SumPooling with the GMM prior, not a mixture encoder
    t4 = check_claims(4, PUBLISHED[4])["eta=0.5"]
    assert t4["gmm_mixture_best_llh"]["mixture"] is False


def test_diverged_values_count_as_worst():
    sections = {
        "main": {
            "PoE": {"masked": {"llh": {"mean": None}}, "mixture": {"llh": {"mean": -10.0}}},
            "MoE": {"masked": {"llh": {"mean": -5.0}}, "mixture": {"llh": {"mean": None}}},
        }
    }
    claims = check_claims(3, sections)["main"]["masked_ge_mixture_llh"]
    assert claims["PoE"] is False and claims["MoE"] is True and claims["all"] is False
    assert claims["SumPooling"] is None  # not run yet: undecided, not failed


def test_learned_vs_fixed_is_also_checked_against_the_published_codes_poe():
    def cell(masked, mixture):
        return {"masked": {"llh": {"mean": masked}}, "mixture": {"llh": {"mean": mixture}}}

    rows = {"PoE": cell(-15.0, -40.0), "MoE": cell(-18.0, -44.0), "SumPooling": cell(-16.0, -20.0),
            "SelfAttention": cell(-16.5, -20.5)}  # fmt: skip
    claims = check_claims(3, {"main": {**rows, PAPER_MEAN_POE: cell(-26.0, -50.0)}})["main"]
    assert claims["learned_ge_fixed_llh"] == {"masked": False, "mixture": True}  # the correct-mean PoE wins masked
    assert claims["learned_ge_fixed_llh_paper_poe"] == {"masked": True, "mixture": True}
    # undecided, as every claim, while the paper-mean row has not run
    pending = check_claims(3, {"main": rows})["main"]["learned_ge_fixed_llh_paper_poe"]
    assert pending == {"masked": None, "mixture": None}


def test_pending_rows_leave_claims_undecided():
    cell = {"masked": {"llh": {"mean": -15.0}}, "mixture": {"llh": {"mean": -18.0}}}
    claims = check_claims(3, {"main": {"SumPooling": cell, "SelfAttention": cell}})["main"]
    assert claims["masked_ge_mixture_llh"]["SumPooling"] is True
    assert claims["masked_ge_mixture_llh"]["all"] is None
    assert claims["learned_ge_fixed_llh"] == {"masked": None, "mixture": None}
    assert claims["gmm_mixture_best_llh"]["masked"] is None


def test_private_latent_rows_use_the_library_linear_model():
    data = multimodal_linear(num_samples=20, sparse=True, seed=0)
    row = Row("SumPooling", "SumPooling", private=True)
    model = build_model(2, row, data.modalities)
    lg = linear_decoder_model(model)
    g = torch.Generator().manual_seed(1)
    z, w = torch.randn(3, 5, generator=g), {n: torch.randn(3, 5, generator=g) for n in model.names}
    full = torch.cat([z, *[w[n] for n in model.names]], -1).double()
    want = torch.cat([model.decode(n, z, w[n]) for n in model.names], -1).double()
    torch.testing.assert_close(full @ lg.W.T + lg.b, want.detach(), rtol=1e-5, atol=1e-5)
    assert lg.noise_var.allclose(torch.full_like(lg.noise_var, (1 + 1e-3) ** 2))
    # the gap itself, on enough rows for a full-rank PPCA MLE (Dx = Σ D_s ≈ 225 < N)
    big = multimodal_linear(num_samples=400, sparse=True, seed=0)
    assert math.isfinite(llh_gap(model, big.train, 30))


def test_table_2_sparse_rows_evaluate_end_to_end(script, tmp_path):
    out = tmp_path / "pi"
    argv = [
        "--tables", "2", "--sections", "sparse", "--rows", "SumPooling", "--objectives", "masked",
        "--epochs", "1", "--seeds", "1", "--num-train", "400",
        "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--no-progress",
    ]  # fmt: skip
    script.main(argv)
    cell = json.loads(out.with_suffix(".json").read_text())["tables"]["2"]["sections"]["sparse"]["SumPooling"]
    for metric in ("llh_gap", "mcc", "mcc_strong"):
        summary = cell["masked"][metric]
        assert summary["n"] == 1 and summary["failed"] == 0 and math.isfinite(summary["mean"])
    assert 0 <= cell["masked"]["mcc"]["mean"] <= 1


def test_published_numbers_are_the_package_data_file():
    raw = json.loads(resources.files("pyro_mmvae.experiments.pi_tables").joinpath("published.json").read_text())
    assert PUBLISHED == {int(t): sections for t, sections in raw.items()} and load_published() is PUBLISHED
    for t, sections in PUBLISHED.items():
        assert set(sections) <= {sec.name for sec in LAYOUT[t]}
        for sec_name, rows in sections.items():
            # every published row is the published_label of a row of ours (of the PoE rows: the paper-mean one)
            layout = [r for sec in LAYOUT[t] if sec.name == sec_name for r in sec.rows]
            labels = {r.published_label for r in layout if r.published_label is not None}
            assert set(rows) == labels, (t, sec_name)
            for cells in rows.values():
                assert set(cells) == set(OBJECTIVES)
                for metrics in cells.values():
                    assert set(metrics) == set(METRICS[t])
                    for mean, std in metrics.values():
                        assert isinstance(mean, float) and (std is None or isinstance(std, float))
    # spot checks against the paper's tables
    assert PUBLISHED[1]["main"]["SumPooling"]["masked"]["llh_gap"] == [3.6e-5, None]
    assert PUBLISHED[3]["main"]["SumPoolingMixture (GMM prior)"]["masked"] == {
        "llh": [-15.1, 2.15],
        "mcc": [1.0, 0.001],
    }
    assert PUBLISHED[4]["eta=0"]["SelfAttentionMixture (GMM prior)"]["mixture"]["llh"] == [-473.6, 8.24]
