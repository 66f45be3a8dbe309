"""Mask samplers ρ(S | M): distributions checked by chi-square tests with fixed seeds."""

import itertools
import math

import pyro
import pytest
import torch
from scipy.stats import chisquare

from pyro_mmvae.data import MultimodalBatch
from pyro_mmvae.infer.masks import MaskSampler, make_mask_sampler

NAMES = ["a", "b", "c", "d"]
P_MIN = 1e-3  # a fixed-seed chi-square test fails only for a real mismatch


def batch_of(present: torch.Tensor) -> MultimodalBatch:
    """A batch with presence ``(B, M)``; the data are irrelevant to the samplers."""
    b = present.shape[0]
    return MultimodalBatch(
        {n: torch.zeros(b, 1) for n in NAMES}, {n: present[:, j].clone() for j, n in enumerate(NAMES)}
    )


def full_batch(b: int) -> MultimodalBatch:
    return batch_of(torch.ones(b, len(NAMES), dtype=torch.bool))


def pattern_counts(masks: torch.Tensor) -> torch.Tensor:
    """Counts of each of the 2^M patterns (bit j = modality j)."""
    codes = (masks.long() * (2 ** torch.arange(masks.shape[1]))).sum(-1)
    return torch.bincount(codes, minlength=2 ** masks.shape[1])


def test_paper_sampler_size_is_uniform_and_subsets_exchangeable():
    pyro.set_rng_seed(0)
    n, m = 40_000, len(NAMES)
    s = MaskSampler("paper").stacked(full_batch(n))
    sizes = torch.bincount(s.sum(-1), minlength=m + 1).numpy()
    assert chisquare(sizes, [n / (m + 1)] * (m + 1)).pvalue > P_MIN  # P(|S| = k) = 1/(M+1)
    counts = pattern_counts(s).numpy()
    expected = [n / ((m + 1) * math.comb(m, bin(code).count("1"))) for code in range(2**m)]
    assert chisquare(counts, expected).pvalue > P_MIN  # uniform within each size


def test_uniform_sampler_is_uniform_over_all_subsets():
    pyro.set_rng_seed(1)
    n, m = 32_000, len(NAMES)
    s = MaskSampler("uniform").stacked(full_batch(n))
    assert chisquare(pattern_counts(s).numpy(), [n / 2**m] * 2**m).pvalue > P_MIN


@pytest.mark.parametrize("kind", ["paper", "uniform", "singletons", "all"])
def test_samples_stay_inside_the_observed_modalities(kind):
    pyro.set_rng_seed(2)
    present = torch.rand(5000, len(NAMES)) < 0.6
    present[:, 0] |= ~present.any(-1)  # at least one modality per row
    batch = batch_of(present)
    masks = make_mask_sampler(kind)(batch)
    s = torch.stack([masks[n] for n in NAMES], -1)
    assert s.dtype == torch.bool and s.shape == present.shape
    assert not (s & ~present).any()
    if kind == "all":
        assert torch.equal(s, present)
    if kind == "singletons":
        assert (s.sum(-1) == 1).all()


def test_paper_sampler_with_missing_modalities_uses_the_observed_count():
    # rows observe 2 of 4 modalities: |S| is uniform on {0, 1, 2}
    pyro.set_rng_seed(3)
    n = 30_000
    present = torch.zeros(n, len(NAMES), dtype=torch.bool)
    present[:, 1] = present[:, 3] = True
    s = MaskSampler("paper").stacked(batch_of(present))
    sizes = torch.bincount(s.sum(-1), minlength=3).numpy()
    assert chisquare(sizes, [n / 3] * 3).pvalue > P_MIN


def test_singletons_are_uniform_among_observed():
    pyro.set_rng_seed(4)
    n = 30_000
    present = torch.ones(n, len(NAMES), dtype=torch.bool)
    present[:, 2] = False
    s = MaskSampler("singletons").stacked(batch_of(present))
    counts = s.sum(0).numpy()
    assert counts[2] == 0
    assert chisquare(counts[[0, 1, 3]], [n / 3] * 3).pvalue > P_MIN


def test_fresh_randomness_each_call_and_reproducible_with_seed():
    sampler = MaskSampler("paper")
    batch = full_batch(200)
    pyro.set_rng_seed(5)
    first, second = sampler.stacked(batch), sampler.stacked(batch)
    assert not torch.equal(first, second)
    pyro.set_rng_seed(5)
    assert torch.equal(first, sampler.stacked(batch))


def test_generator_argument_is_used():
    batch = full_batch(100)
    a = MaskSampler("uniform", generator=torch.Generator().manual_seed(7)).stacked(batch)
    b = MaskSampler("uniform", generator=torch.Generator().manual_seed(7)).stacked(batch)
    assert torch.equal(a, b)


def test_callable_sampler_is_checked_and_intersected_with_presence():
    present = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    batch = batch_of(present)
    sampler = make_mask_sampler(lambda b: {"a": torch.ones(2, dtype=torch.bool), "c": torch.ones(2, dtype=torch.bool)})
    masks = sampler(batch)
    assert masks["a"].tolist() == [True, False] and masks["c"].tolist() == [False, True]
    assert not masks["b"].any() and not masks["d"].any()
    with pytest.raises(ValueError, match="bool tensor"):
        make_mask_sampler(lambda b: {"a": torch.ones(2)})(batch)
    with pytest.raises(TypeError, match="dict"):
        make_mask_sampler(lambda b: [True])(batch)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown mask sampler"):
        make_mask_sampler("bernoulli")
    with pytest.raises(TypeError):
        make_mask_sampler(3)


@pytest.mark.parametrize("kind", ["paper", "uniform"])
def test_every_subset_occurs_including_empty_and_full(kind):
    pyro.set_rng_seed(6)
    s = MaskSampler(kind).stacked(full_batch(4000))
    seen = {tuple(r) for r in s.tolist()}
    assert seen == set(itertools.product([False, True], repeat=len(NAMES)))
