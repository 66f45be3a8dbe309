"""Coherence over every subset: enumeration, known answers (perfect, random, designed generators), the
missing-modality rule, the report's averages and JSON form, joint coherence from prior samples."""

import itertools
import json
import math

import pytest
import torch

from pyro_mmvae.data import MultimodalBatch, MultimodalDataset
from pyro_mmvae.errors import InputError, UnknownModalityError
from pyro_mmvae.metrics import (
    conditional_coherence,
    enumerate_subsets,
    joint_coherence,
    prior_joint_coherence,
    subset_coherence,
)

NAMES = ("m0", "m1", "m2", "m3", "m4")
K = 10


def code(labels: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    """A "digit image" (K,): a one-hot of the label plus noise small enough for argmax to read it."""
    noise = 0.1 * torch.rand(len(labels), K, generator=g)
    return torch.nn.functional.one_hot(labels, K).float() + noise


def perfect_classifier(x: torch.Tensor) -> torch.Tensor:
    return x.argmax(-1)


CLASSIFIERS = {name: perfect_classifier for name in NAMES}


def dataset(n: int, seed: int = 0, present=None) -> MultimodalDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    data = {name: code(y, g) for name in NAMES}
    return MultimodalDataset(data, present=present, labels={"digit": y, "row": torch.arange(n)})


def test_subset_enumeration_counts():
    subsets = enumerate_subsets(NAMES)
    assert len(subsets) == 30 and len(set(subsets)) == 30
    assert [sum(len(s) == k for s in subsets) for k in (1, 2, 3, 4)] == [5, 10, 10, 5]
    assert subsets[0] == ("m0",) and subsets[-1] == ("m1", "m2", "m3", "m4")
    assert len(enumerate_subsets(NAMES, proper=False)) == 31 and len(enumerate_subsets(["a", "b", "c"])) == 6


def test_perfect_generator_gives_one_and_sees_only_the_given_modalities():
    bank = code(torch.arange(K))  # one real "image" of each class

    def generate(batch, given, targets):
        for name in batch.names:  # everything outside S is marked missing and zeroed
            assert bool(batch.present[name].all()) == (name in given)
            if name not in given:
                assert not batch.present[name].any() and batch.data[name].abs().sum() == 0
        return {m: bank[batch.labels["digit"]] for m in targets}

    report = subset_coherence(generate, CLASSIFIERS, dataset(50), batch_size=16, progress=False)
    assert len(report.per_pair()) == 75  # sum over sizes k of C(5, k) * (5 - k)
    assert all(v == 1.0 for v in report.per_pair().values())
    assert report.per_size() == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0} and report.mean() == 1.0
    assert all(report.count[key] == 50 for key in report.count)


def test_random_generator_is_at_chance_within_binomial_tolerance():
    g = torch.Generator().manual_seed(1)

    def generate(batch, given, targets):
        return {m: torch.rand(batch.batch_size, K, generator=g) for m in targets}

    n = 400
    report = subset_coherence(generate, CLASSIFIERS, dataset(n), batch_size=200, progress=False)
    sd_pair = math.sqrt(0.1 * 0.9 / n)
    assert all(abs(v - 0.1) < 4.5 * sd_pair for v in report.per_pair().values())
    total = sum(report.count.values())
    assert abs(sum(report.correct.values()) / total - 0.1) < 4 * math.sqrt(0.09 / total)


def test_averages_per_subset_and_size_match_a_designed_generator():
    """Target m_j given S is right in the rows with ``row % 10 < |S| + j``: C_{S→m_j} = (|S| + j) / 10."""

    def generate(batch, given, targets):
        y, row = batch.labels["digit"], batch.labels["row"]
        out = {}
        for m in targets:
            right = (row % 10) < len(given) + NAMES.index(m)
            out[m] = code(torch.where(right, y, (y + 1) % K))
        return out

    report = subset_coherence(generate, CLASSIFIERS, dataset(100), batch_size=30, progress=False)
    expected_pair, expected_subset = {}, {}
    for k in range(1, 5):
        for s in itertools.combinations(NAMES, k):
            accs = [(k + j) / 10 for j, m in enumerate(NAMES) if m not in s]
            expected_subset[s] = sum(accs) / len(accs)
            expected_pair.update({(s, m): (k + NAMES.index(m)) / 10 for m in NAMES if m not in s})
    assert report.per_pair() == pytest.approx(expected_pair)
    assert report.per_subset() == pytest.approx(expected_subset)
    expected_size = {
        k: sum(v for s, v in expected_subset.items() if len(s) == k) / math.comb(5, k) for k in range(1, 5)
    }
    assert report.per_size() == pytest.approx(expected_size)
    # m4 given subsets of size 1 (not holding m4): (1 + 4) / 10
    assert report.per_target_and_size()["m4"][1] == pytest.approx(0.5)
    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["per_pair"]["m0+m1->m4"] == {"accuracy": pytest.approx(0.6), "correct": 60, "count": 100}
    assert summary["per_size"]["2"] == pytest.approx(expected_size[2]) and "plain accuracy" in summary["metric"]


def test_only_rows_with_every_given_modality_present_count():
    n = 120
    g = torch.Generator().manual_seed(5)
    present = {name: torch.rand(n, generator=g) > 0.3 for name in NAMES}
    bank = code(torch.arange(K))
    seen_rows = {}

    def generate(batch, given, targets):
        seen_rows.setdefault(tuple(given), []).append(batch.labels["row"])
        return {m: bank[batch.labels["digit"]] for m in targets}

    data = dataset(n, present=present)
    report = subset_coherence(generate, CLASSIFIERS, data, subsets=[["m1", "m0"], ["m3"]], progress=False)
    both = present["m0"] & present["m1"]
    assert report.subsets == [("m0", "m1"), ("m3",)]  # put in modality order
    assert report.count[(("m0", "m1"), "m2")] == int(both.sum()) and report.count[(("m3",), "m0")] == int(
        present["m3"].sum()
    )
    assert torch.equal(torch.cat(seen_rows[("m0", "m1")]), torch.nonzero(both).flatten())
    # whether the target is present does not matter: every counted row is judged
    assert report.accuracy(("m3",), "m4") == 1.0


def test_dataset_and_batches_give_the_same_report():
    data = dataset(60)
    bank = code(torch.arange(K))

    def generate(batch, given, targets):
        right = batch.labels["row"] % 3 == 0
        return {m: bank[torch.where(right, batch.labels["digit"], (batch.labels["digit"] + 1) % K)] for m in targets}

    a = subset_coherence(generate, CLASSIFIERS, data, batch_size=7, progress=False)
    batches = [data.full[i : i + 25] for i in range(0, 60, 25)]
    b = subset_coherence(generate, CLASSIFIERS, batches, progress=False)
    c = subset_coherence(generate, CLASSIFIERS, data.full, progress=False)
    assert a.per_pair() == b.per_pair() == c.per_pair()
    assert all(v == pytest.approx(20 / 60) for v in a.per_pair().values())


def test_joint_coherence_from_prior_samples():
    def coherent(n):
        y = torch.randint(0, K, (n,))
        return {name: code(y) for name in NAMES[:2]}

    def independent(n):
        return {name: code(torch.randint(0, K, (n,))) for name in NAMES[:2]}

    torch.manual_seed(0)
    assert prior_joint_coherence(coherent, CLASSIFIERS, num_samples=250, batch_size=100) == 1.0
    n = 4000
    rate = prior_joint_coherence(independent, CLASSIFIERS, num_samples=n, batch_size=1000)
    assert abs(rate - 0.1) < 4 * math.sqrt(0.09 / n)
    report = subset_coherence(
        lambda b, s, t: {m: b.data[s[0]] for m in t},
        CLASSIFIERS,
        dataset(20),
        sample_prior=coherent,
        num_prior_samples=50,
        progress=False,
    )
    assert report.joint == 1.0 and report.to_dict()["joint"] == 1.0


def test_conditional_and_joint_coherence_on_given_generations():
    y = torch.tensor([0, 1, 2, 3])
    generated = {"m0": code(y), "m1": code(torch.tensor([0, 1, 0, 0]))}
    assert conditional_coherence(CLASSIFIERS, generated, y) == {"m0": 1.0, "m1": 0.5}
    assert joint_coherence(CLASSIFIERS, generated) == 0.5


def test_bad_inputs_raise_naming_the_culprit():
    data = dataset(10)

    def generate(batch, given, targets):
        return {m: batch.data[given[0]] for m in targets}

    with pytest.raises(UnknownModalityError, match="no classifier for target modalities \\['m4'\\]"):
        subset_coherence(generate, {n: perfect_classifier for n in NAMES[:4]}, data, progress=False)
    with pytest.raises(InputError, match="unknown: \\['m9'\\]"):
        subset_coherence(generate, CLASSIFIERS, data, subsets=[["m0", "m9"]], progress=False)
    with pytest.raises(InputError, match="leaves no target"):
        subset_coherence(generate, CLASSIFIERS, data, subsets=[NAMES], progress=False)
    with pytest.raises(InputError, match="no label 'class'"):
        subset_coherence(generate, CLASSIFIERS, data, label="class", progress=False)
    with pytest.raises(InputError, match="must return 'm1' as a \\(10, ...\\) tensor, got \\(3, 10\\)"):
        subset_coherence(
            lambda b, s, t: {m: code(torch.zeros(3, dtype=torch.long)) for m in t},
            CLASSIFIERS,
            MultimodalBatch(data.full.data, labels=data.full.labels),
            subsets=[["m0"]],
            progress=False,
        )
