import torch

from pyro_mmvae.data import CirclesSquares, iterate_batches
from pyro_mmvae.data.toy import centre_fill_classifier, render_circles, render_squares


def test_splits_are_seeded_balanced_and_disjoint_streams():
    a = CirclesSquares("train", size=100, seed=1)
    b = CirclesSquares("train", size=100, seed=1)
    c = CirclesSquares("test", size=100, seed=1)
    assert torch.equal(a.square_size, b.square_size) and not torch.equal(a.square_size, c.square_size)
    assert a.full.sum() == 50
    assert a.square_size.min() >= 10 and a.square_size.max() <= 28


def test_images_and_validation():
    ds = CirclesSquares("validation", size=64)
    batch = next(iterate_batches(ds, 64, shuffle=False))
    batch.validate(ds.modalities)
    assert batch.data["square"].shape == (64, 1, 32, 32)
    assert set(batch.data["circle"].unique().tolist()) <= {0.0, 1.0}


def test_shapes_have_the_requested_width_and_fill():
    w = torch.tensor([10.0, 28.0])
    sq = render_squares(w, torch.tensor([1, 1]))
    # a full square of side w covers w*w pixels
    assert sq.sum(dim=(1, 2, 3)).tolist() == [100.0, 784.0]
    empty = render_squares(w, torch.tensor([0, 0]))
    assert empty.sum(dim=(1, 2, 3)).tolist() == [100.0 - 36.0, 784.0 - 576.0]
    disc = render_circles(w, torch.tensor([1, 1])).sum(dim=(1, 2, 3))
    assert torch.allclose(disc, torch.pi * (w / 2) ** 2, rtol=0.15)


def test_centre_fill_classifier_is_exact_on_data():
    ds = CirclesSquares("test", size=500)
    batch = next(iterate_batches(ds, 500, shuffle=False))
    for name in ("square", "circle"):
        assert torch.equal(centre_fill_classifier(batch.data[name]), batch.labels["full"])
