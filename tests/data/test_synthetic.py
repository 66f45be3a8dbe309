"""Synthetic data of Tables 1-4: shapes, seeding, statistics against the generating parameters."""

import math

import numpy as np
import pytest
import torch

from pyro_mmvae.data.synthetic import (
    bimodal_linear,
    ivae_bimodal,
    ivae_multimodal,
    leaky_relu,
    mixing_matrix,
    multimodal_linear,
    partial_view_mask,
    table_data,
)

FAST = {"cond_draws": 300}  # fewer draws for the condition-number threshold keep the tests fast


def same(a, b) -> bool:
    fa, fb = a.train.full, b.train.full
    return all(torch.equal(fa.data[n], fb.data[n]) and torch.equal(fa.present[n], fb.present[n]) for n in fa.data)


# ---------------------------------------------------------------------------------------------- Table 1
def test_table1_shapes_seed_and_covariance():
    d = bimodal_linear(num_samples=5000, seed=0)
    x = torch.cat([d.train.full.data["x1"], d.train.full.data["x2"]], -1).double()
    assert x.shape == (5000, 2) and d.train.full.labels["z"].shape == (5000, 3)
    assert [m.name for m in d.modalities] == ["x1", "x2"] and d.test is None
    assert same(d, bimodal_linear(num_samples=5000, seed=0)) and not same(d, bimodal_linear(num_samples=5000, seed=1))
    # Cov = W Wᵀ + I = [[3, 1], [1, 102]]; sd of a sample (co)variance ≈ √((Σ_ii Σ_jj + Σ_ij²) / N)
    want = torch.tensor([[3.0, 1.0], [1.0, 102.0]], dtype=torch.float64)
    assert torch.allclose(d.truth["model"].covariance(), want)
    got = torch.cov(x.T)
    se = torch.sqrt((torch.outer(want.diag(), want.diag()) + want**2) / 5000)
    assert ((got - want).abs() < 5 * se).all()
    z = d.train.full.labels["z"].double()
    resid = x - z @ torch.as_tensor(d.truth["W"]).T
    assert abs(resid.std().item() - 1.0) < 5 / math.sqrt(2 * 10000)


# ---------------------------------------------------------------------------------------------- Table 2
def test_table2_dense():
    d = multimodal_linear(seed=3)
    names = d.train.names
    assert names == [f"m{s}" for s in range(5)] and len(d.train) == 5000
    for name, mod in zip(names, d.modalities):
        ds = d.truth["dims"][name]
        assert 30 <= ds <= 59 and mod.shape == (ds,) and mod.scale == pytest.approx(1.001)
        W = torch.as_tensor(d.truth["W"][name])
        assert W.shape == (ds, 30) and torch.allclose(W.T @ W, torch.eye(30, dtype=torch.float64), atol=1e-10)
        # residual noise has unit variance
        resid = (
            d.train.full.data[name].double()
            - d.train.full.labels["z"].double() @ W.T
            - torch.as_tensor(d.truth["b"][name])
        )
        assert abs(resid.var().item() - 1.0) < 5 * math.sqrt(2 / resid.numel())
    assert same(d, multimodal_linear(seed=3))


def test_table2_sparse_layout():
    d = multimodal_linear(sparse=True, seed=4)
    shared = d.truth["shared_index"]
    assert shared == list(range(25, 30))
    for s, name in enumerate(d.train.names):
        W = torch.as_tensor(d.truth["W"][name])
        own = d.truth["private_index"][name]
        assert own == list(range(5 * s, 5 * s + 5))
        used = torch.zeros(30, dtype=torch.bool)
        used[own + shared] = True
        assert (W[:, ~used] == 0).all()
        block = W[:, own + shared]  # [W_p, W_sh] has orthonormal columns
        assert torch.allclose(block.T @ block, torch.eye(10, dtype=torch.float64), atol=1e-10)
    labels = d.train.full.labels
    assert torch.equal(labels["z_shared"], labels["z"][:, 25:])
    assert torch.equal(labels["z_private_m1"], labels["z"][:, 5:10])
    with pytest.raises(ValueError, match="divisible"):
        multimodal_linear(sparse=True, latent_dim=31)


# ---------------------------------------------------------------------------------------------- Table 3
def test_table3_structure_and_noise():
    d = ivae_bimodal(seed=2)
    f = d.train.full
    assert len(d.train) == 4000 and f.data["x"].shape == (4000, 2) and f.data["u"].shape == (4000, 5)
    assert [m.likelihood for m in d.modalities] == ["normal", "onehot_categorical"]
    assert d.modalities[0].scale == pytest.approx(0.101)
    assert torch.equal(f.data["u"].argmax(-1), f.labels["label"]) and (f.data["u"].sum(-1) == 1).all()
    assert torch.equal(torch.bincount(f.labels["label"]), torch.full((5,), 800))
    assert not torch.equal(f.labels["label"][:800], torch.zeros(800, dtype=torch.long))  # rows were permuted
    A = d.truth["A"]
    assert np.allclose(A.T @ A, np.eye(2))
    z = f.labels["z"].double().numpy()
    resid = f.data["x"].double().numpy() - leaky_relu(z @ A) @ A
    assert abs(resid.std() - 0.1) < 5 * 0.1 / math.sqrt(2 * resid.size) + 1e-6  # float32 storage
    # cluster statistics: per-cluster std of z ≈ the drawn STDs
    lab = f.labels["label"].numpy()
    for c in range(5):
        sd = z[lab == c].std(0)
        assert np.all(np.abs(sd / d.truth["stds"][c] - 1) < 5 / math.sqrt(2 * 800))
    assert same(d, ivae_bimodal(seed=2)) and not same(d, ivae_bimodal(seed=3))


# ---------------------------------------------------------------------------------------------- Table 4
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_table4_missingness(eta):
    d = ivae_multimodal(missing_rate=eta, seed=1, **FAST)
    assert [m.name for m in d.modalities] == ["m0", "m1", "m2", "m3"]
    for split in (d.train, d.test):
        assert len(split) == 5000
        present = torch.stack([split.full.present[n] for n in split.names], -1)
        assert present.any(-1).all()  # at least one view per row
        assert abs(present.double().mean().item() - (1 - eta)) < 0.005
        for j, n in enumerate(split.names):
            assert (split.full.data[n][~present[:, j]] == 0).all()  # missing entries stored as zeros
    if eta == 0.0:
        assert present.all()


def test_table4_split_and_generation():
    d = ivae_multimodal(num_modalities=5, seed=2, **FAST)
    assert len(d.modalities) == 5 and all(m.learn_scale for m in d.modalities)
    labels = torch.cat([d.train.full.labels["label"], d.test.full.labels["label"]])
    assert torch.equal(labels, torch.arange(5).repeat_interleave(2000))  # train = first rows, no shuffle
    z = torch.cat([d.train.full.labels["z"], d.test.full.labels["z"]]).double().numpy()
    for n in d.train.names:
        A, B = d.truth["A"][n], d.truth["B"][n]
        assert A.shape == (10, 25) and B.shape == (25, 25)
        assert np.allclose(np.linalg.norm(A, axis=0), 1) and np.allclose(np.linalg.norm(B, axis=0), 1)
        x = torch.cat([d.train.full.data[n], d.test.full.data[n]]).double().numpy()
        resid = x - leaky_relu(leaky_relu(z @ A) @ B) @ B
        assert abs(resid.std() - 0.5) < 5 * 0.5 / math.sqrt(2 * resid.size) + 1e-5
    assert same(d, ivae_multimodal(num_modalities=5, seed=2, **FAST))


def test_table4_default_threshold_run():
    # the paper's 10⁴ condition-number draws (a few seconds)
    d = ivae_multimodal(seed=0, missing_rate=0.5)
    for n in d.train.names:
        assert np.linalg.cond(d.truth["B"][n]) <= 60  # the 25th percentile for 25×25 is ≈ 45


def test_mixing_matrix_condition_threshold():
    rng = np.random.default_rng(0)
    draws = rng.uniform(-1, 1, (2000, 6, 6))
    draws /= np.linalg.norm(draws, axis=1, keepdims=True)
    q25 = np.percentile(np.linalg.cond(draws), 25)
    conds = [np.linalg.cond(mixing_matrix(np.random.default_rng(s), 6, 6, cond_draws=2000)) for s in range(20)]
    assert max(conds) < 1.5 * q25  # each accepted matrix is below its own (sampled) 25th percentile
    fixed = mixing_matrix(rng, 6, 6, cond_draws=0, cond_threshold=8.0)
    assert np.linalg.cond(fixed) <= 8.0
    q = mixing_matrix(rng, 3, 3, "orthogonal")
    assert np.allclose(q.T @ q, np.eye(3))
    with pytest.raises(ValueError, match="mixing"):
        mixing_matrix(rng, 2, 2, "gaussian")


def test_partial_view_mask_properties():
    rng = np.random.default_rng(0)
    for m, eta in [(4, 0.5), (5, 0.3), (3, 2 / 3), (4, 0.1)]:
        mask = partial_view_mask(5000, m, eta, rng)
        assert mask.shape == (5000, m) and mask.any(1).all()
        assert abs(mask.mean() - (1 - eta)) < 0.005
        # views are exchangeable: each view observed about equally often
        per_view = mask.mean(0)
        assert np.all(np.abs(per_view - (1 - eta)) < 5 * math.sqrt(0.25 / 5000))
    assert (partial_view_mask(100, 4, 0.75, rng).sum(1) == 1).all()
    with pytest.raises(ValueError, match="fewer than one"):
        partial_view_mask(100, 4, 0.8, rng)
    with pytest.raises(ValueError, match="missing_rate"):
        partial_view_mask(100, 4, 1.0, rng)


def test_table_dispatch():
    assert len(table_data(1, num_samples=10).train) == 10
    with pytest.raises(ValueError, match="table"):
        table_data(5)
