"""The datasets of Tables 3-4 as the paper's published scripts draw them, and Table 4's view masks.

The library's generators (:mod:`pyro_mmvae.data.synthetic`) draw the same laws from
``numpy.random.default_rng(seed)``; the published scripts of "Learning multi-modal generative models
with permutation-invariant encoders and tighter variational objectives" (``iVAE_bimodal_simulation.py``
and ``iVAE_multimodal_simulation.py`` of marcelah/MaskedMultimodalVAE, whose generator follows
Khemakhem et al.'s iVAE code) seed NumPy's legacy global ``RandomState`` with the run's ``--seed``
(flag default 1 for Table 3, 2 for Table 4) and compute in float32. So the same seed gives other
datasets, and the library's seed 0 does not exist there. The functions here redo the scripts' draws
in their order with ``np.random.RandomState(seed)`` (the stream ``np.random.seed(seed)`` sets) and their
float32 roundings:

- sources: cluster STDs ``uniform(0.5, 3, (K, D))``, means ``uniform(-5, 5, (K, D))``, then
  ``randn(N, D)`` cast to float32, scaled and shifted per block of N/K rows (products and sums in
  float64, rounded back to float32);
- mixing matrices in float32: ``"orthogonal"`` = Q of QR(``uniform(-1, 1)``); ``"uniform"`` = 10⁴
  reference draws ``uniform(-1, 1)`` with unit-norm columns whose condition numbers' 25th percentile is
  the threshold, then draws ``uniform(0, 2) − 1`` (unit-norm columns) until one is at most the threshold;
- leaky ReLU (slope 0.1) applied element by element in float64 and rounded to float32;
- Table 3: ``x = lrelu(s A) A + 0.1 randn`` (A orthogonal), then ONE ``permutation(N)`` of the rows;
- Table 4: per view ``A`` (D × D_s), ``x = lrelu(s A)``, ``B`` (D_s × D_s), ``x = lrelu(x B) B + 0.5 randn``;
  no permutation; train = the first rows; then the train and the test view masks
  (:func:`authors_view_mask`).

The float32 matrix products use NumPy's BLAS as the scripts do, so a dataset is reproduced bit for bit
with the same NumPy build; another BLAS may round a last bit differently.

Table 4's masks follow CPM-Nets (``get_sn`` in the published script): one uniformly chosen view per
row, the others kept with probability ``int(100 r)/100`` where r corrects the first draw's overlaps;
with M = 4 views and η = 0.5 that is 0.33 in most draws (not 1/3, the library's
:func:`~pyro_mmvae.data.synthetic.partial_view_mask` choice), redrawn until the observed fraction is
within 0.005 of 1 − η. The library generator's masks with a given keep probability are
``partial_view_mask(..., keep_prob=p)``.
"""

from __future__ import annotations

import numpy as np
import torch

from ...data.dataset import MultimodalDataset
from ...data.modality import Modality
from ...data.synthetic import SyntheticData

F32 = np.float32


def lrelu32(x: np.ndarray, slope: float = 0.1) -> np.ndarray:
    """Leaky ReLU of a float32 array as the scripts compute it: negative entries × slope in float64, then float32."""
    x = np.asarray(x)
    return np.where(x > 0, x.astype(np.float64), x.astype(np.float64) * slope).astype(F32)


def _unit_columns(a: np.ndarray) -> np.ndarray:
    """Every column (last axis) of a matrix or stack scaled to unit norm in place, one column at a time, in float32."""
    for i in range(a.shape[-1]):
        a[..., i] /= np.sqrt((a[..., i] ** 2).sum(-1))[..., None]
    return a


def authors_mixing_matrix(rs: np.random.RandomState, d_in: int, d_out: int, kind: str, cond_draws: int = 10_000):
    """A float32 ``(d_in, d_out)`` mixing matrix drawn from ``rs`` as the scripts draw it (see the module docstring)."""
    if kind == "orthogonal":
        return np.linalg.qr(rs.uniform(-1, 1, (d_in, d_out)))[0].astype(F32)
    if kind != "uniform":
        raise ValueError(f"unknown mixing kind {kind!r}; expected 'uniform' or 'orthogonal'")
    if cond_draws < 1:
        raise ValueError(f"cond_draws must be >= 1, got {cond_draws}")
    reference = _unit_columns(rs.uniform(-1, 1, (int(cond_draws), d_in, d_out)).astype(F32))
    threshold = np.percentile(np.linalg.cond(reference), 25)
    while True:
        a = _unit_columns((rs.uniform(0, 2, (d_in, d_out)) - 1).astype(F32))
        if not np.linalg.cond(a) > threshold:
            return a


def _authors_sources(rs: np.random.RandomState, num_clusters: int, per_cluster: int, dim: int):
    stds = rs.uniform(0.5, 3.0, (num_clusters, dim))
    means = rs.uniform(-5.0, 5.0, (num_clusters, dim))
    s = rs.randn(num_clusters * per_cluster, dim).astype(F32)
    labels = np.repeat(np.arange(num_clusters), per_cluster)
    s = (s * stds[labels]).astype(F32)
    s = (s + means[labels]).astype(F32)
    return s, labels, means, stds


def authors_ivae_bimodal(
    num_samples: int = 4000, num_clusters: int = 5, latent_dim: int = 2, noise_std: float = 0.1, seed: int = 1
) -> SyntheticData:
    """Table 3's dataset as ``iVAE_bimodal_simulation.py --seed=<seed>`` draws it (the authors' seeds start at 1).

    Same modalities, labels and ``truth`` keys as :func:`~pyro_mmvae.data.synthetic.ivae_bimodal`
    (``"x"`` ``(D,)``, one-hot ``"u"`` ``(K,)``, labels ``"z"``/``"label"``); ``truth["generator"] = "authors"``.
    """
    if num_samples % num_clusters:
        raise ValueError(f"num_samples ({num_samples}) must be a multiple of num_clusters ({num_clusters})")
    rs = np.random.RandomState(int(seed))
    s, labels, means, stds = _authors_sources(rs, num_clusters, num_samples // num_clusters, latent_dim)
    A = authors_mixing_matrix(rs, latent_dim, latent_dim, "orthogonal")
    x = np.dot(lrelu32(np.dot(s, A)), A)
    x = (x + noise_std * rs.randn(*x.shape)).astype(F32)
    perm = rs.permutation(num_samples)
    s, labels, x = s[perm], labels[perm], x[perm]
    mods = (
        Modality("x", (latent_dim,), scale=noise_std + 1e-3),
        Modality("u", (num_clusters,), likelihood="onehot_categorical"),
    )
    data = {"x": torch.from_numpy(x), "u": torch.from_numpy(np.eye(num_clusters, dtype=F32)[labels])}
    ds = MultimodalDataset(data, None, {"z": torch.from_numpy(s), "label": torch.as_tensor(labels)}, mods)
    truth = {
        "means": means,
        "stds": stds,
        "A": A.astype(np.float64),
        "noise_std": noise_std,
        "permutation": perm,
        "generator": "authors",
    }
    return SyntheticData(ds, None, mods, truth)


def authors_view_mask(
    rs: np.random.RandomState, num_rows: int, num_views: int, missing_rate: float, tol: float = 0.005
) -> tuple[np.ndarray, float | None]:
    """The published script's CPM-Nets view mask drawn from ``rs``: bool ``(N, M)`` and the keep probability used.

    Each try: one view per row (``randint(0, M, (N, 1))``), a first ``randint(0, 100, (N, M)) < int(100 r₀)``
    with r₀ = ((1 − η) M N − N) / (M N) whose overlaps a with the chosen views give
    r = ((1 − η) M N − N) / (1 − a / ((1 − η) M N − N)) / (M N), and the kept extra views
    ``randint(0, 100, (N, M)) < int(100 r)``; repeated while the observed fraction is 0.005 or more
    away from 1 − η. η = 0 observes everything; 1 − η ≤ 1/M keeps one view per row (keep probability
    None for both). The chosen view of a row is column ``randint`` (the script's one-hot encoder gives
    the same when every view index occurs, as it does for the tables' sizes).
    """
    keep = 1 - missing_rate
    if keep <= 1 / num_views:
        return np.eye(num_views, dtype=bool)[rs.randint(0, num_views, size=(num_rows, 1))[:, 0]], None
    if keep == 1:
        return np.ones((num_rows, num_views), dtype=bool), None
    total = num_views * num_rows
    while True:
        chosen = np.eye(num_views, dtype=int)[rs.randint(0, num_views, size=(num_rows, 1))[:, 0]]
        extra = total * keep - num_rows
        first = (rs.randint(0, 100, size=(num_rows, num_views)) < int(extra / total * 100)).astype(int)
        overlaps = np.sum((first + chosen) > 1)
        percent = int(extra / (1 - overlaps / extra) / total * 100)
        mask = ((rs.randint(0, 100, size=(num_rows, num_views)) < percent).astype(int) + chosen) > 0
        if not abs(keep - np.sum(mask) / total) >= tol:
            return mask, percent / 100


def authors_ivae_multimodal(
    num_modalities: int = 4,
    missing_rate: float = 0.0,
    num_train: int = 5000,
    num_test: int = 5000,
    latent_dim: int = 10,
    data_dim: int = 25,
    num_clusters: int = 5,
    noise_std: float = 0.5,
    seed: int = 1,
    cond_draws: int = 10_000,
) -> SyntheticData:
    """Table 4's dataset as ``iVAE_multimodal_simulation.py --seed=<seed> --missing_rate=<η>`` draws it.

    Same modalities, labels, split and ``truth`` keys as :func:`~pyro_mmvae.data.synthetic.ivae_multimodal`;
    ``truth["keep_prob"]`` holds the extra-view keep probabilities of the train and test masks
    (None where η = 0) and ``truth["generator"] = "authors"``. ``cond_draws`` is the script's 10⁴.
    """
    n = num_train + num_test
    if n % num_clusters:
        raise ValueError(f"num_train + num_test ({n}) must be a multiple of num_clusters ({num_clusters})")
    rs = np.random.RandomState(int(seed))
    s, labels, means, stds = _authors_sources(rs, num_clusters, n // num_clusters, latent_dim)
    names = [f"m{j}" for j in range(num_modalities)]
    data, A, B = {}, {}, {}
    for name in names:
        A[name] = authors_mixing_matrix(rs, latent_dim, data_dim, "uniform", cond_draws)
        x = lrelu32(np.dot(s, A[name]))
        B[name] = authors_mixing_matrix(rs, data_dim, data_dim, "uniform", cond_draws)
        x = np.dot(lrelu32(np.dot(x, B[name])), B[name])
        data[name] = (x + noise_std * rs.randn(*x.shape)).astype(F32)
    train_mask, train_keep = authors_view_mask(rs, num_train, num_modalities, missing_rate)
    test_mask, test_keep = authors_view_mask(rs, num_test, num_modalities, missing_rate)
    masks = np.concatenate([train_mask, test_mask])
    mods = tuple(Modality(name, (data_dim,), scale=1.0, learn_scale=True) for name in names)
    label_t = torch.as_tensor(labels)

    def split(rows: slice) -> MultimodalDataset:
        return MultimodalDataset(
            {k: torch.from_numpy(np.ascontiguousarray(v[rows])) for k, v in data.items()},
            {name: torch.from_numpy(np.ascontiguousarray(masks[rows, j])) for j, name in enumerate(names)},
            {"z": torch.from_numpy(np.ascontiguousarray(s[rows])), "label": label_t[rows]},
            mods,
        )

    truth = {
        "means": means,
        "stds": stds,
        "A": A,
        "B": B,
        "noise_std": noise_std,
        "missing_rate": missing_rate,
        "present": masks,
        "keep_prob": {"train": train_keep, "test": test_keep},
        "generator": "authors",
    }
    return SyntheticData(split(slice(0, num_train)), split(slice(num_train, n)), mods, truth)
