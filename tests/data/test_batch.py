import pytest
import torch

from pyro_mmvae.data import Modality, MultimodalBatch, MultimodalDataset, collate, iterate_batches
from tests.common import small_batch, small_modalities


def test_defaults_and_move():
    b = small_batch(4)
    assert b.names == ["a", "b", "c"] and b.batch_size == 4
    assert all(p.dtype == torch.bool and p.all() for p in b.present.values())
    b64 = b.to("cpu", dtype=torch.float64)
    assert b64.data["a"].dtype == torch.float64 and b64.data["c"].dtype == torch.int64


def test_validate_accepts_good_batch():
    small_batch(4).validate(small_modalities())


@pytest.mark.parametrize(
    "mutate, error, words",
    [
        (lambda d: d.update(a=torch.randn(4, 6)), ValueError, ["'a'", "(B, 5)", "(4, 6)"]),
        (lambda d: d.update(a=torch.randn(4, 5).double().int()), TypeError, ["'a'", "floating"]),
        (lambda d: d.update(c=torch.rand(4)), TypeError, ["'c'", "integer"]),
        (lambda d: d.update(c=torch.full((4,), 3)), ValueError, ["'c'", "[0, 3)"]),
        (lambda d: d.update(b=torch.full((4, 1, 4, 4), 2.0)), ValueError, ["'b'", "[0, 1]"]),
        (lambda d: d.update(zz=torch.randn(4, 5)), KeyError, ["zz"]),
    ],
    ids=["shape", "float-dtype", "int-dtype", "class-range", "bernoulli-range", "unknown-name"],
)
def test_validate_rejects_bad_input(mutate, error, words):
    b = small_batch(4)
    data = dict(b.data)
    mutate(data)
    with pytest.raises(error) as info:
        MultimodalBatch(data).validate(small_modalities())
    for w in words:
        assert w in str(info.value)


def test_validate_nan_only_in_present_rows():
    b = small_batch(4)
    b.data["a"][1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"'a' has NaN/inf values in present rows \[1\]"):
        b.validate(small_modalities())
    b.present["a"][1] = False
    b.validate(small_modalities())  # a missing row may hold anything


def test_validate_rejects_rows_with_everything_missing():
    present = {n: torch.tensor([True, False, True]) for n in "abc"}
    with pytest.raises(ValueError, match=r"rows \[1\] have every modality missing"):
        small_batch(3, present=present).validate(small_modalities())


def test_missing_modality_in_batch_is_named():
    b = small_batch(3).select(["a", "b"])
    with pytest.raises(KeyError, match="lacks modalities \\['c'\\]"):
        b.validate(small_modalities())


def test_subset_masks():
    present = {"a": torch.tensor([True, False, True]), "b": torch.tensor([True, True, False])}
    b = small_batch(3, present=present)
    m = b.subset_mask(["a", "c"])
    assert m["a"].tolist() == [True, False, True] and not m["b"].any() and m["c"].all()
    per_row = b.subset_mask({"b": torch.tensor([False, True, True])})
    assert per_row["b"].tolist() == [False, True, False] and not per_row["a"].any()
    assert b.stacked_mask(None).shape == (3, 3)
    with pytest.raises(KeyError, match="unknown modality"):
        b.subset_mask(["nope"])
    with pytest.raises(ValueError, match="bool tensor of shape \\(3,\\)"):
        b.subset_mask({"a": torch.ones(2, dtype=torch.bool)})


def test_with_missing_and_rows():
    b = small_batch(4).with_missing(["a"])
    assert not b.present["a"].any() and (b.data["a"] == 0).all()
    assert b[1:3].batch_size == 2


def test_modality_spec_errors():
    with pytest.raises(ValueError, match="identifier"):
        Modality("bad name", (2,))
    with pytest.raises(ValueError, match="unknown likelihood"):
        Modality("x", (2,), likelihood="poisson")
    with pytest.raises(ValueError, match="num_classes"):
        Modality("x", (), likelihood="categorical")


def test_dataset_batches_and_zeroes_missing_rows():
    data = {"a": torch.randn(10, 5), "c": torch.randint(0, 3, (10,))}
    present = {"a": torch.arange(10) % 2 == 0}
    ds = MultimodalDataset(data, present, modalities=[small_modalities()[0], small_modalities()[2]])
    assert (ds.full.data["a"][1] == 0).all()
    batches = list(iterate_batches(ds, 4, shuffle=True, seed=3, epoch=1))
    assert [len(x) for x in batches] == [4, 4, 2]
    again = list(iterate_batches(ds, 4, shuffle=True, seed=3, epoch=1))
    assert all(torch.equal(x.data["a"], y.data["a"]) for x, y in zip(batches, again))
    other = list(iterate_batches(ds, 4, shuffle=True, seed=3, epoch=2))
    assert not all(torch.equal(x.data["a"], y.data["a"]) for x, y in zip(batches, other))
    loaded = next(iter(ds.loader(3)))
    assert isinstance(loaded, MultimodalBatch) and loaded.batch_size == 3
    assert collate([ds[0], ds[1]]).batch_size == 2


def test_only_declared_batches_answer_observed_names_without_values_while_tracing():
    from pyro_mmvae.data.batch import is_tracing_step, trace_batch, tracing_step

    none_of_a = {"a": torch.zeros(6, dtype=torch.bool)}
    outer, inner = small_batch(present=none_of_a), small_batch(seed=1, present=none_of_a)
    names = ["a", "b", "c"]
    assert outer.observed_names(names) == ["b", "c"] and not is_tracing_step()
    with pytest.raises(RuntimeError, match="tracing_step"):
        trace_batch(outer)
    with tracing_step():
        trace_batch(outer)
        assert outer.observed_names(names) == names and inner.observed_names(names) == ["b", "c"]
        with tracing_step():  # a nested block still knows the outer declaration
            trace_batch(inner)
            assert outer.observed_names(names) == names and inner.observed_names(names) == names
        assert inner.observed_names(names) == ["b", "c"]  # forgotten with its block
    assert outer.observed_names(names) == ["b", "c"] and not is_tracing_step()
    with pytest.raises(ValueError), tracing_step():  # reset on errors too
        trace_batch(outer)
        raise ValueError
    assert not is_tracing_step() and outer.observed_names(names) == ["b", "c"]
