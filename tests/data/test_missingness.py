"""random_missing: exact marginal rates (binomial tolerance), never all missing, seeding, bad rates."""

import math

import pytest
import torch

from pyro_mmvae.data import random_missing
from pyro_mmvae.errors import InputError

NAMES = ["m0", "m1", "m2", "m3", "m4"]


@pytest.mark.parametrize(
    "rate",
    [0.5, 0.75, 0.8, {"m0": 0.0, "m1": 0.9, "m2": 0.3}, {"m0": 0.7, "m1": 0.7, "m2": 0.7, "m3": 0.2, "m4": 0.95}],
    ids=["half", "high", "exactly-one-present", "dict-with-zero", "mixed"],
)
def test_rates_hold_within_binomial_tolerance_and_no_row_is_empty(rate):
    n = 40_000
    masks = random_missing(n, NAMES, rate, seed=3)
    present = torch.stack([masks[k] for k in NAMES], -1)
    assert present.dtype == torch.bool and present.shape == (n, 5)
    assert present.any(-1).all()
    for k in NAMES:
        r = rate.get(k, 0.0) if isinstance(rate, dict) else rate
        realised = 1 - masks[k].double().mean().item()
        assert abs(realised - r) < 4.5 * math.sqrt(r * (1 - r) / n) + 1e-12, (k, realised, r)


def test_naive_redraw_would_have_been_detected():
    # the tolerance above is tight enough to see the bias of "independent drops, then redraw empty rows"
    n, r = 40_000, 0.5
    biased = (r - r**5) / (1 - r**5)
    assert abs(biased - r) > 4.5 * math.sqrt(r * (1 - r) / n)


def test_seeded():
    a = random_missing(500, NAMES, 0.6, seed=1)
    b = random_missing(500, NAMES, 0.6, seed=1)
    c = random_missing(500, NAMES, 0.6, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in NAMES)
    assert not all(torch.equal(a[k], c[k]) for k in NAMES)


def test_edge_rates():
    assert all(m.all() for m in random_missing(10, NAMES, 0.0).values())
    masks = random_missing(100, ["a", "b"], {"a": 1.0})
    assert not masks["a"].any() and masks["b"].all()
    assert random_missing(0, NAMES, 0.5)["m0"].shape == (0,)


@pytest.mark.parametrize(
    "rate, match",
    [(0.6, "impossible"), (1.2, r"\[0, 1\]"), (-0.1, "non-negative"), ({"zz": 0.1}, "unknown")],
    ids=["infeasible", "above-one", "negative", "unknown-name"],
)
def test_bad_rates_raise(rate, match):
    # two modalities at rate 0.6 keep 0.8 present modalities per row on average: fewer than one
    with pytest.raises(InputError, match=match):
        random_missing(10, ["a", "b"], rate)
