"""DCCA and contrastive objectives against known answers; projector training (a checkpointed, resumable
fit stage) on a toy two-view problem."""

import itertools
import math

import pytest
import torch
from torch import nn

from pyro_mmvae.data.batch import MultimodalBatch
from pyro_mmvae.data.dataset import MultimodalDataset
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.infer.shared_info import (
    SharedInfoLoss,
    canonical_correlations,
    cca_matrix,
    dcca_loss,
    info_nce_loss,
    inverse_sqrt,
    pairwise_loss,
)
from pyro_mmvae.nn.projectors import make_projectors
from pyro_mmvae.train import fit, train_projectors
from pyro_mmvae.train.checkpoint import load_checkpoint


def correlated_views(n, rhos, extra=(1, 2), seed=0):
    """Two views whose canonical correlations are ``rhos`` (then zeros), linearly mixed and shifted."""
    g = torch.Generator().manual_seed(seed)
    k = len(rhos)
    rho = torch.tensor(rhos, dtype=torch.float64)
    a = torch.randn(n, k, generator=g, dtype=torch.float64)
    b = rho * a + (1 - rho**2).sqrt() * torch.randn(n, k, generator=g, dtype=torch.float64)
    v1 = torch.cat([a, torch.randn(n, extra[0], generator=g, dtype=torch.float64)], -1)
    v2 = torch.cat([b, torch.randn(n, extra[1], generator=g, dtype=torch.float64)], -1)
    # CCA is invariant to invertible linear maps and shifts of each view; scale up so the 1e-3 ridge is negligible.
    m1 = 10 * torch.randn(v1.shape[1], v1.shape[1], generator=g, dtype=torch.float64)
    m2 = 10 * torch.randn(v2.shape[1], v2.shape[1], generator=g, dtype=torch.float64)
    return v1 @ m1 + 3.0, v2 @ m2 - 1.0


def test_canonical_correlations_recover_known_values():
    n, rhos = 20000, (0.9, 0.5)
    h1, h2 = correlated_views(n, rhos)
    corr = canonical_correlations(h1, h2)
    assert corr.shape == (3,)
    for est, rho in zip(corr[:2], rhos):
        se = (1 - rho**2) / math.sqrt(n)  # asymptotic standard error of a sample canonical correlation
        assert abs(est.item() - rho) < 4 * se + 1e-3
    assert corr[2] < 0.05  # the null direction: O(1/√n)
    assert dcca_loss(h1, h2, top_k=2).item() == pytest.approx(-(corr[0] + corr[1]).item())
    assert dcca_loss(h1, h2).item() == pytest.approx(-corr.sum().item())
    t = cca_matrix(h1, h2)  # −trace √(TᵀT) equals minus the sum of all singular values
    evals = torch.linalg.eigvalsh(t.T @ t).clamp_min(0)
    assert dcca_loss(h1, h2).item() == pytest.approx(-evals.sqrt().sum().item(), abs=1e-6)


def test_inverse_sqrt_drops_null_eigenvalues():
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    cov = q @ torch.diag(torch.tensor([4.0, 0.25, 1e-12], dtype=torch.float64)) @ q.T
    expected = q @ torch.diag(torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)) @ q.T
    torch.testing.assert_close(inverse_sqrt(cov), expected)


def test_info_nce_equals_a_hand_computation():
    h1 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    h2 = torch.tensor([[1.0, 0.5], [0.0, -1.0], [2.0, 2.0]])
    tau = 0.5

    def cos(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    rows1, rows2 = h1.tolist(), h2.tolist()
    s = [[cos(u, v) / tau for v in rows2] for u in rows1]
    n = len(s)
    one_to_two = sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(n))) for i in range(n)) / n
    two_to_one = sum(-s[i][i] + math.log(sum(math.exp(s[j][i]) for j in range(n))) for i in range(n)) / n
    expected = 0.5 * (one_to_two + two_to_one)
    assert info_nce_loss(h1, h2, temperature=tau).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("objective", ["dcca", "contrastive"])
def test_pairwise_loss_sums_pairs_on_common_rows(objective):
    g = torch.Generator().manual_seed(1)
    feats = {n: torch.randn(40, 3, generator=g) for n in "abc"}
    present = {"a": torch.ones(40, dtype=torch.bool), "b": torch.arange(40) % 3 != 0, "c": torch.arange(40) % 4 != 0}
    fn = dcca_loss if objective == "dcca" else info_nce_loss
    expected = sum(
        fn(feats[x][present[x] & present[y]], feats[y][present[x] & present[y]])
        for x, y in itertools.combinations("abc", 2)
    )
    torch.testing.assert_close(pairwise_loss(feats, present, objective), expected)
    torch.testing.assert_close(
        pairwise_loss(feats, None, objective), sum(fn(feats[x], feats[y]) for x, y in itertools.combinations("abc", 2))
    )
    lonely = {"a": torch.tensor([True] + [False] * 39), "b": torch.ones(40, dtype=torch.bool)}
    assert pairwise_loss({"a": feats["a"], "b": feats["b"]}, lonely, objective) is None


@pytest.mark.parametrize("objective", ["dcca", "contrastive"])
def test_gradients_are_finite(objective):
    g = torch.Generator().manual_seed(2)
    h1 = torch.randn(64, 5, generator=g).requires_grad_(True)
    h2 = torch.randn(64, 5 if objective == "contrastive" else 4, generator=g).requires_grad_(True)
    loss = pairwise_loss({"x": h1, "y": h2}, None, objective)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(h1.grad).all() and torch.isfinite(h2.grad).all()
    assert h1.grad.abs().sum() > 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="different numbers of rows"):
        dcca_loss(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="equal size"):
        info_nce_loss(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(torch.randn(5, 2), torch.randn(5, 2), temperature=0.0)
    with pytest.raises(ValueError, match="unknown objective"):
        pairwise_loss({"a": torch.randn(5, 2), "b": torch.randn(5, 2)}, objective="cka")
    with pytest.raises(ValueError, match="at least two modalities"):
        pairwise_loss({"a": torch.randn(5, 2)})


# ---------------------------------------------------------------- training


def two_view_dataset(n=1024, seed=0):
    """x1, x2 share a scalar s (the second through a tanh); each view also carries private noise dims."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 1, generator=g)
    x1 = torch.cat([s + 0.3 * torch.randn(n, 1, generator=g), torch.randn(n, 3, generator=g)], -1)
    x2 = torch.cat([torch.tanh(s) + 0.3 * torch.randn(n, 1, generator=g), torch.randn(n, 4, generator=g)], -1)
    # Orthogonal mixing hides the shared coordinate without making the views ill-conditioned.
    mix1 = torch.linalg.qr(torch.randn(4, 4, generator=g))[0]
    mix2 = torch.linalg.qr(torch.randn(5, 5, generator=g))[0]
    mods = [Modality("one", (4,)), Modality("two", (5,))]
    present = {"two": torch.arange(n) % 10 != 0}  # some rows miss view two
    return MultimodalDataset({"one": x1 @ mix1, "two": x2 @ mix2}, present=present, modalities=mods), mods


def top_correlation(projectors, dataset):
    full = dataset.full
    rows = full.present["one"] & full.present["two"]
    with torch.no_grad():
        h1, h2 = projectors["one"](full.data["one"][rows]), projectors["two"](full.data["two"][rows])
    return canonical_correlations(h1, h2)[0].item()


@pytest.mark.parametrize("objective", ["dcca", "contrastive"])
def test_training_increases_the_shared_correlation(objective):
    dataset, mods = two_view_dataset()
    torch.manual_seed(0)
    projectors = make_projectors(mods, out_dim=2, hidden=(32,))
    before = top_correlation(projectors, dataset)
    history = train_projectors(projectors, dataset, objective, epochs=25, batch_size=256, lr=3e-3, progress=False)
    after = top_correlation(projectors, dataset)
    assert len(history) == 25 and all(math.isfinite(v) for v in history)
    assert history[-1] < history[0]
    assert after > before + 0.3 and after > 0.65  # the best linear value on these data is 0.82
    # frozen afterwards
    assert all(not p.requires_grad for p in projectors.parameters()) and not projectors["one"].training


def test_training_is_reproducible_and_validates_names():
    dataset, mods = two_view_dataset(n=256)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        projectors = make_projectors(mods, out_dim=2, hidden=(8,))
        runs.append(train_projectors(projectors, dataset, "dcca", epochs=2, batch_size=64, seed=3, progress=False))
    assert runs[0] == runs[1]
    with pytest.raises(KeyError, match="dataset lacks"):
        train_projectors({"one": projectors["one"], "three": projectors["two"]}, dataset, progress=False)
    with pytest.raises(ValueError, match="at least two"):
        train_projectors({"one": projectors["one"]}, dataset, progress=False)


# ---------------------------------------------------------------- SharedInfoLoss: the projectors as a fit stage


def fit_projectors(projectors, dataset, run_dir=None, **kwargs):
    """The projector stage written out as a plain fit call (what train_projectors does, minus the freeze)."""
    options = dict(epochs=4, batch_size=64, lr=3e-3, seed=3, progress=False, stage="projectors")
    options.update(kwargs)
    return fit(
        None,
        projectors,
        dataset,
        SharedInfoLoss("dcca"),
        params=projectors,
        train_mode_modules=[projectors],
        run_dir=run_dir,
        **options,
    )


def test_loss_through_fit_decreases_and_raises_the_correlation(tmp_path):
    dataset, mods = two_view_dataset()
    torch.manual_seed(0)
    projectors = make_projectors(mods, out_dim=2, hidden=(32,))
    before = top_correlation(projectors, dataset)
    result = fit_projectors(projectors, dataset, tmp_path, epochs=25, batch_size=256)
    losses = result.train_loss
    assert len(losses) == 25 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    after = top_correlation(projectors, dataset)
    assert after > before + 0.3 and after > 0.65  # the best linear value on these data is 0.82
    # The DCCA loss of a batch is minus the sum of its 2 canonical correlations: within [-2, 0].
    assert all(-2 <= v <= 0 for v in losses)
    saved = load_checkpoint(result.checkpoint_path)
    assert saved["stage"] == "projectors" and saved["finished"] and saved["model"] == {}
    assert set(saved["guide"]) == set(projectors.state_dict())  # the checkpoint holds the projectors, nothing else


def test_resuming_an_interrupted_stage_gives_the_uninterrupted_parameters(tmp_path):
    dataset, mods = two_view_dataset(n=320)  # 5 batches of 64, some rows miss view two

    def fresh():
        torch.manual_seed(0)
        return make_projectors(mods, out_dim=2, hidden=(8,))

    straight = fresh()
    fit_projectors(straight, dataset, tmp_path / "straight")

    class Interrupt(Exception):
        pass

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise Interrupt

    interrupted = fresh()
    with pytest.raises(Interrupt):
        fit_projectors(interrupted, dataset, tmp_path / "cut", callbacks=[stop_after_two])
    resumed = fresh()  # a new process: fresh initial weights, everything else comes from the checkpoint
    # train_projectors resumes the stage that the plain fit call began: it is the same stage
    history = train_projectors(
        resumed,
        dataset,
        "dcca",
        epochs=4,
        batch_size=64,
        lr=3e-3,
        seed=3,
        progress=False,
        run_dir=tmp_path / "cut",
        resume=True,
    )
    assert len(history) == 4
    for (key, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), key
    assert all(not p.requires_grad for p in resumed.parameters()) and not resumed["two"].training


def test_a_finished_stage_is_loaded_not_retrained(tmp_path, monkeypatch):
    dataset, mods = two_view_dataset(n=256)
    torch.manual_seed(0)
    trained = make_projectors(mods, out_dim=2, hidden=(8,))
    options = dict(epochs=2, batch_size=64, seed=3, progress=False, run_dir=tmp_path, resume=True)
    first = train_projectors(trained, dataset, "contrastive", **options)
    checkpoint = tmp_path / "projectors" / "checkpoint.pt"
    data, stamp = checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns

    calls = []
    original = SharedInfoLoss.differentiable_loss

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SharedInfoLoss, "differentiable_loss", counting)
    torch.manual_seed(1)
    again = make_projectors(mods, out_dim=2, hidden=(8,))  # other initial weights
    assert train_projectors(again, dataset, "contrastive", **options) == first
    assert not calls  # no training step
    assert checkpoint.read_bytes() == data and checkpoint.stat().st_mtime_ns == stamp
    for (key, a), (_, b) in zip(trained.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), key
    assert all(not p.requires_grad for p in again.parameters())


def test_batches_without_a_shared_pair_take_no_step():
    dataset, mods = two_view_dataset(n=128)
    # View two is present in a single row: no batch has two rows with both views.
    lonely = MultimodalDataset(dict(dataset.full.data), present={"two": torch.arange(128) == 5}, modalities=mods)
    torch.manual_seed(0)
    projectors = make_projectors(mods, out_dim=2, hidden=(8,))
    before = {k: v.clone() for k, v in projectors.state_dict().items()}
    batch = lonely.full
    loss = SharedInfoLoss().differentiable_loss(None, projectors, batch)
    assert loss.item() == 0 and loss.requires_grad  # the empty sum, a leaf: backward reaches no parameter
    loss.backward()
    assert all(p.grad is None for p in projectors.parameters())
    result = fit_projectors(projectors, lonely, epochs=2, batch_size=32)
    assert result.train_loss == [0.0, 0.0]
    for key, value in projectors.state_dict().items():
        assert torch.equal(value, before[key]), key  # Adam skipped every step


def test_weight_decay_is_the_optimizers():
    """train_projectors(weight_decay=wd) is Adam(weight_decay=wd) on the plain loss: the decay is not in the loss."""
    dataset, mods = two_view_dataset(n=128)
    batch = dataset.full
    finals = []
    for by_hand, decay in ((True, 0.5), (False, 0.5), (False, 0.0)):
        torch.manual_seed(0)
        projectors = make_projectors(mods, out_dim=2, hidden=(8,))
        if by_hand:
            opt = torch.optim.Adam(projectors.parameters(), lr=1e-2, weight_decay=decay)
            for _ in range(3):
                opt.zero_grad()
                SharedInfoLoss("dcca").differentiable_loss(None, projectors, batch).backward()
                opt.step()
        else:  # one batch of all 128 rows per epoch: the same three steps
            train_projectors(
                projectors, dataset, "dcca", epochs=3, batch_size=128, lr=1e-2, weight_decay=decay, progress=False
            )
        finals.append(torch.cat([p.detach().flatten() for p in projectors.parameters()]))
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-5, atol=1e-6)
    assert (finals[1] - finals[2]).abs().max() > 1e-3  # the decay changed the parameters


def test_shared_info_loss_refuses_bad_inputs():
    dataset, mods = two_view_dataset(n=16)
    projectors = make_projectors(mods, out_dim=2, hidden=(4,))
    batch: MultimodalBatch = dataset.full
    with pytest.raises(TypeError, match="pass them as the guide"):
        SharedInfoLoss().differentiable_loss(None, nn.Linear(2, 2), batch)
    with pytest.raises(KeyError, match="batch lacks"):
        SharedInfoLoss().differentiable_loss(None, {"one": projectors["one"], "three": projectors["two"]}, batch)
    with pytest.raises(ValueError, match="at least two"):
        SharedInfoLoss().differentiable_loss(None, {"one": projectors["one"]}, batch)
    with pytest.raises(ValueError, match="unknown objective"):
        SharedInfoLoss("cka")
    with pytest.raises(ValueError, match="min_rows"):
        SharedInfoLoss(min_rows=1)
    with pytest.raises(ValueError, match="temperature"):
        SharedInfoLoss("contrastive", temperature=0)
