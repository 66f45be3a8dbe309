"""docs/baselines.md stays true: its Python blocks run in order, its quotes are library code, its table is whole."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import pytest

from pyro_mmvae.experiments.recipes import BASELINE_MODELS

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "baselines.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
QUOTE_BLOCK = re.compile(r"^```\{code-block\} python\n:caption: ([^,\n]+), ([\w.]+)\n\n(.*?)^```$", re.S | re.M)


def page_text() -> str:
    return PAGE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def namespace():
    blocks = PYTHON_BLOCK.findall(page_text())
    assert len(blocks) >= 8, "the page lost its runnable examples"
    ns = {"__name__": "baselines_doc"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{PAGE.name}[python block {i}]", "exec"), ns)
    return ns


def test_the_three_models_train_and_are_scored(namespace):
    results, scores = namespace["results"], namespace["scores"]
    assert set(results) == set(scores) == {"mvae", "mmvae", "subset-iwae"}
    for name, result in results.items():
        losses = [row["train_loss"] for row in result.history]
        assert len(losses) == 2 and all(math.isfinite(v) for v in losses), name
    for name, s in scores.items():
        assert 0.0 <= s["coherence"] <= 1.0 and 0.0 <= s["joint coherence"] <= 1.0, name
        assert math.isfinite(s["log p(x)"]) and s["log p(x)"] < 0, name  # 2 × 1024 Bernoulli pixels


def test_the_new_guide_averages_the_experts_of_the_subset(namespace):
    torch = namespace["torch"]
    model, guide, _ = namespace["subset_iwae"]
    batch = namespace["batch"]
    with torch.no_grad():
        both = guide.posterior(batch, ["square", "circle"])
        square, circle = guide.posterior(batch, ["square"]), guide.posterior(batch, ["circle"])
        empty = guide.posterior(batch, [])
    torch.testing.assert_close(both.mean, (square.mean + circle.mean) / 2)
    torch.testing.assert_close(both.variance, (square.variance + circle.variance) / 2)
    torch.testing.assert_close(empty.mean, torch.zeros_like(empty.mean))
    torch.testing.assert_close(empty.variance, torch.ones_like(empty.variance))


def test_the_new_objective_is_the_iwae_bound_of_each_subset(namespace):
    """With K = 1 the subset bound is the subset ELBO, so SubsetIWAE(1) equals MVAEELBO on the same subsets."""
    torch = namespace["torch"]
    model, guide, _ = namespace["subset_iwae"]
    batch = namespace["batch"]
    from pyro_mmvae.infer import MVAEELBO

    torch.manual_seed(3)
    ours = namespace["SubsetIWAE"](num_particles=1, num_subsets=0).loss(model, guide, batch)
    torch.manual_seed(3)
    mvae = MVAEELBO(num_subsets=0).loss(model, guide, batch)
    assert ours == pytest.approx(mvae, rel=1e-5)


def test_quoted_code_is_the_librarys_code():
    quotes = QUOTE_BLOCK.findall(page_text())
    assert len(quotes) == 2
    for path, where, body in quotes:
        source = (ROOT / path).read_text(encoding="utf-8")
        block = textwrap.dedent(body)
        assert any(textwrap.indent(block, " " * k) in source for k in range(0, 17, 4)), f"{path} ({where}) changed"
        assert f"def {where.split('.')[-1]}(" in source


def test_the_table_lists_every_baseline():
    rows = [ln for ln in page_text().splitlines() if ln.startswith("| `")]
    assert sorted(ln.split("`")[1] for ln in rows) == sorted(BASELINE_MODELS)
    for ln in rows:
        assert ln.count(" | ") == 5, f"a table row lacks a column: {ln[:60]}"
