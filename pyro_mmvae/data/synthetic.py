"""Seeded synthetic datasets of the permutation-invariant multimodal VAE paper (Tables 1-4).

The paper: "Learning multi-modal generative models with permutation-invariant encoders and tighter
variational objectives".

Every generator draws from ``numpy.random.default_rng(seed)`` in a fixed, documented order, so a
seed determines the data exactly. Each returns a :class:`SyntheticData`: ``MultimodalDataset``s
(float32 data, presence masks, labels ``"z"`` = the true latents and, for the clustered data,
``"label"`` = the cluster index), the modality specs the paper's models use, and the true
generative parameters in ``truth``.

- Table 1 (:func:`bimodal_linear`): Z ~ N(0, I_3); X1 = Z0 + Z1 + U1; X2 = Z0 + 10 Z2 + U2.
- Table 2 (:func:`multimodal_linear`): M = 5 linear-Gaussian modalities, D = 30, dense or sparse
  (private-latent) loadings.
- Table 3 (:func:`ivae_bimodal`): 2-d iVAE data with K = 5 Gaussian clusters and the one-hot
  cluster label as a second modality.
- Table 4 (:func:`ivae_multimodal`): M = 4 (or 5) non-linear 25-d views of a 10-d clustered latent,
  with CPM-Nets-style missing views.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .dataset import MultimodalDataset
from .linear_gaussian import LinearGaussian
from .modality import Modality


@dataclass
class SyntheticData:
    """A generated dataset: ``train``, optional ``test``, the ``modalities`` and the true parameters."""

    train: MultimodalDataset
    test: MultimodalDataset | None
    modalities: tuple[Modality, ...]
    truth: dict = field(default_factory=dict)


def _linear_gaussian(W, b, noise_var) -> LinearGaussian:
    return LinearGaussian(torch.as_tensor(W), torch.as_tensor(b), torch.as_tensor(noise_var, dtype=torch.float64))


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(int(seed))


def _tensor(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)


def _dataset(data: dict, modalities, present=None, labels=None) -> MultimodalDataset:
    data = {k: _tensor(v) for k, v in data.items()}
    present = None if present is None else {k: torch.as_tensor(v, dtype=torch.bool) for k, v in present.items()}
    labels = {k: (v if isinstance(v, torch.Tensor) else _tensor(v)) for k, v in (labels or {}).items()}
    return MultimodalDataset(data, present, labels, modalities)


def leaky_relu(x: np.ndarray, slope: float = 0.1) -> np.ndarray:
    return np.where(x > 0, x, slope * x)


# ---------------------------------------------------------------------------------------------- Table 1
def bimodal_linear(num_samples: int = 5000, seed: int = 0) -> SyntheticData:
    """Table 1: a less and a more noisy scalar modality of Z ∈ R³.

    Draw order: Z ~ N(0, I_3) ``(N, 3)``, then U ~ N(0, 1) ``(N, 2)``. X1 = Z0 + Z1 + U1,
    X2 = Z0 + 10 Z2 + U2; modalities ``"x1"``, ``"x2"`` of shape ``(1,)`` with Normal likelihood σ = 1.
    The paper leaves N unspecified; the default reuses Table 2's N = 5000. ``truth["model"]`` is the
    true :class:`LinearGaussian` (x ~ N(0, W Wᵀ + I)); the "true MLE" of Table 1 is N(x̄, Σ̂).
    """
    rng = _rng(seed)
    z = rng.standard_normal((num_samples, 3))
    u = rng.standard_normal((num_samples, 2))
    W = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 10.0]])
    x = z @ W.T + u
    mods = (Modality("x1", (1,), scale=1.0), Modality("x2", (1,), scale=1.0))
    ds = _dataset({"x1": x[:, :1], "x2": x[:, 1:]}, mods, labels={"z": z})
    truth = {"W": W, "b": np.zeros(2), "noise_var": 1.0, "model": _linear_gaussian(W, np.zeros(2), 1.0)}
    return SyntheticData(ds, None, mods, truth)


# ---------------------------------------------------------------------------------------------- Table 2
def multimodal_linear(
    num_samples: int = 5000,
    num_modalities: int = 5,
    latent_dim: int = 30,
    sparse: bool = False,
    seed: int = 0,
    min_dim: int = 30,
    max_dim: int = 60,
    noise_std: float = 1.0,
) -> SyntheticData:
    """Table 2: M linear-Gaussian modalities x_s = W_s z + b_s + ε, z ~ N(0, I_D), ε ~ N(0, σ² I).

    Draw order: D_s ~ randint(min_dim, max_dim) (30..59) for all s; then per modality s: W_s, b_s ~ N(0, 1)^{D_s};
    then z ~ N(0, I_D) ``(N, D)``; then per modality the noise ``(N, D_s)``.

    - dense: W_s = Q of QR(U(−1, 1)^{D_s × D}) (orthonormal columns).
    - sparse (private latents): with P = D / (M + 1) (= 5), [W_p, W_sh] = Q of QR(U(−1, 1)^{D_s × 2P});
      latent layout z = (private_0, …, private_{M−1}, shared), each block P wide; W_s holds W_p on
      block s and W_sh on the shared (last) block, zeros elsewhere.

    Modalities ``"m0"…`` of shape ``(D_s,)``, Normal with fixed std σ + 1e-3 (the paper's decoders).
    Labels: ``"z"`` (all latents); sparse also ``"z_shared"`` and ``"z_private_<name>"``.
    ``truth``: ``W``/``b`` per modality, ``dims``, ``noise_var``, ``model`` (stacked :class:`LinearGaussian`)
    and for sparse the index lists ``shared_index`` / ``private_index``.
    """
    if num_modalities < 1 or latent_dim < 1:
        raise ValueError("num_modalities and latent_dim must be >= 1")
    if sparse and latent_dim % (num_modalities + 1):
        raise ValueError(f"sparse loadings need latent_dim divisible by M + 1 = {num_modalities + 1}, got {latent_dim}")
    rng = _rng(seed)
    names = [f"m{s}" for s in range(num_modalities)]
    dims = rng.integers(min_dim, max_dim, size=num_modalities)
    if not sparse and dims.min() < latent_dim:
        raise ValueError(f"dense loadings need D_s >= latent_dim = {latent_dim}; min_dim is {min_dim}")
    block = latent_dim // (num_modalities + 1) if sparse else 0
    W, b = {}, {}
    for s, n in enumerate(names):
        d = int(dims[s])
        if not sparse:
            W[n] = np.linalg.qr(rng.uniform(-1, 1, (d, latent_dim)))[0]
        else:
            q = np.linalg.qr(rng.uniform(-1, 1, (d, 2 * block)))[0]
            w = np.zeros((d, latent_dim))
            w[:, s * block : (s + 1) * block] = q[:, :block]
            w[:, num_modalities * block :] = q[:, block:]
            W[n] = w
        b[n] = rng.standard_normal(d)
    z = rng.standard_normal((num_samples, latent_dim))
    data = {n: z @ W[n].T + b[n] + noise_std * rng.standard_normal((num_samples, W[n].shape[0])) for n in names}
    mods = tuple(Modality(n, (int(dims[s]),), scale=noise_std + 1e-3) for s, n in enumerate(names))
    labels = {"z": z}
    truth = {
        "W": W,
        "b": b,
        "dims": {n: int(dims[s]) for s, n in enumerate(names)},
        "noise_var": noise_std**2,
        "model": _linear_gaussian(
            np.concatenate([W[n] for n in names]), np.concatenate([b[n] for n in names]), noise_std**2
        ),
    }
    if sparse:
        shared = list(range(num_modalities * block, latent_dim))
        private = {n: list(range(s * block, (s + 1) * block)) for s, n in enumerate(names)}
        labels["z_shared"] = z[:, shared]
        labels.update({f"z_private_{n}": z[:, idx] for n, idx in private.items()})
        truth.update(shared_index=shared, private_index=private)
    return SyntheticData(_dataset(data, mods, labels=labels), None, mods, truth)


# ---------------------------------------------------------------------------------------------- iVAE helpers
def mixing_matrix(
    rng: np.random.Generator,
    d_in: int,
    d_out: int,
    kind: str = "uniform",
    cond_draws: int = 10_000,
    cond_threshold: float | None = None,
) -> np.ndarray:
    """A ``(d_in, d_out)`` mixing matrix.

    ``"orthogonal"``: Q of QR(U(−1, 1)^{d_in × d_out}). ``"uniform"``: entries U(−1, 1), columns
    scaled to unit norm, redrawn until the condition number is at most the 25th percentile of the
    condition numbers of ``cond_draws`` such matrices (drawn first; ``cond_draws=0`` uses
    ``cond_threshold``, default 25).
    """

    def draw(*lead):
        a = rng.uniform(-1, 1, (*lead, d_in, d_out))
        return a / np.linalg.norm(a, axis=-2, keepdims=True)

    if kind == "orthogonal":
        return np.linalg.qr(rng.uniform(-1, 1, (d_in, d_out)))[0]
    if kind != "uniform":
        raise ValueError(f"unknown mixing kind {kind!r}; expected 'uniform' or 'orthogonal'")
    if cond_draws:
        conds = np.concatenate([np.linalg.cond(draw(n)) for n in _chunks(int(cond_draws), 2000)])
        threshold = np.percentile(conds, 25)
    else:
        threshold = 25.0 if cond_threshold is None else cond_threshold
    for _ in range(100_000):
        a = draw()
        if np.linalg.cond(a) <= threshold:
            return a
    raise RuntimeError(f"no {d_in}x{d_out} mixing matrix with condition number <= {threshold:.3g} in 100000 draws")


def _chunks(total: int, size: int):
    while total > 0:
        yield min(size, total)
        total -= size


def partial_view_mask(
    num_rows: int,
    num_views: int,
    missing_rate: float,
    rng: np.random.Generator,
    tol: float = 0.005,
    max_tries: int = 10_000,
    keep_prob: float | None = None,
) -> np.ndarray:
    """Missing-completely-at-random views with at least one view per row (CPM-Nets style), bool ``(N, M)``.

    Each row keeps one uniformly chosen view; every view is also kept independently with
    probability p = ((1 − η) M − 1) / (M − 1), so the expected observed fraction is 1 − η, or with
    ``keep_prob`` when given (the published Table 4 code truncates p to whole percent: 0.33 for
    M = 4, η = 0.5). Draws are repeated until the realised fraction is within ``tol`` of 1 − η.
    η = 0 observes everything; η = 1 − 1/M keeps exactly one view per row; larger η is impossible
    and raises.
    """
    eta = float(missing_rate)
    if not 0.0 <= eta < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    keep_frac = 1.0 - eta
    if keep_frac < 1.0 / num_views - 1e-12:
        raise ValueError(
            f"missing_rate {eta} leaves fewer than one of {num_views} views per row; "
            f"it must be <= {1 - 1 / num_views:.4f}"
        )
    if eta == 0.0:
        return np.ones((num_rows, num_views), dtype=bool)
    if keep_prob is None:
        p = max((keep_frac * num_views - 1.0) / (num_views - 1.0), 0.0) if num_views > 1 else 0.0
    elif not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in [0, 1], got {keep_prob}")
    else:
        p = float(keep_prob)
    for _ in range(max_tries):
        mask = np.eye(num_views, dtype=bool)[rng.integers(num_views, size=num_rows)]
        mask |= rng.random((num_rows, num_views)) < p
        if p == 0.0 or abs(mask.mean() - keep_frac) < tol:
            return mask
    expected = 1 / num_views + (1 - 1 / num_views) * p
    raise RuntimeError(
        f"no mask within {tol} of observed fraction {keep_frac} with keep probability {p:.4f} in {max_tries} "
        f"draws (expected fraction {expected:.4f}; N too small?)"
    )


def _clustered_sources(rng, num_clusters: int, per_cluster: int, dim: int):
    """Draw order: L = U(0.5, 3)^{K×D} (cluster STDs), m = U(−5, 5)^{K×D}, s = N(0, 1)^{N×D}; s_c ← s_c L_c + m_c."""
    stds = rng.uniform(0.5, 3.0, (num_clusters, dim))
    means = rng.uniform(-5.0, 5.0, (num_clusters, dim))
    s = rng.standard_normal((num_clusters * per_cluster, dim))
    labels = np.repeat(np.arange(num_clusters), per_cluster)
    s = s * stds[labels] + means[labels]
    return s, labels, means, stds


# ---------------------------------------------------------------------------------------------- Table 3
def ivae_bimodal(
    num_samples: int = 4000, num_clusters: int = 5, latent_dim: int = 2, noise_std: float = 0.1, seed: int = 0
) -> SyntheticData:
    """Table 3: X = lrelu_0.1(s A) A + σ ε with a clustered 2-d latent s and its one-hot label U as modality.

    Draw order: cluster STDs L = U(0.5, 3)^{K×D}, means m = U(−5, 5)^{K×D}, s = N(0, 1)^{N×D} with
    s ← s L_c + m_c on the c-th block of N/K rows; A = Q of QR(U(−1, 1)^{D×D}); noise N(0, 1)^{N×D};
    finally ONE random row permutation of everything.

    Modalities: ``"x"`` ``(D,)`` Normal with fixed std σ + 1e-3 (the paper's decoder), ``"u"`` ``(K,)``
    one-hot categorical. Labels: ``"z"`` (s) and ``"label"`` (the cluster index). The paper reports
    LLH and MCC on this (training) set.
    """
    if num_samples % num_clusters:
        raise ValueError(f"num_samples ({num_samples}) must be a multiple of num_clusters ({num_clusters})")
    rng = _rng(seed)
    s, labels, means, stds = _clustered_sources(rng, num_clusters, num_samples // num_clusters, latent_dim)
    A = mixing_matrix(rng, latent_dim, latent_dim, "orthogonal")
    x = leaky_relu(s @ A) @ A + noise_std * rng.standard_normal((num_samples, latent_dim))
    perm = rng.permutation(num_samples)
    s, labels, x = s[perm], labels[perm], x[perm]
    onehot = np.eye(num_clusters)[labels]
    mods = (
        Modality("x", (latent_dim,), scale=noise_std + 1e-3),
        Modality("u", (num_clusters,), likelihood="onehot_categorical"),
    )
    ds = _dataset({"x": x, "u": onehot}, mods, labels={"z": s, "label": torch.as_tensor(labels, dtype=torch.long)})
    truth = {"means": means, "stds": stds, "A": A, "noise_std": noise_std, "permutation": perm}
    return SyntheticData(ds, None, mods, truth)


# ---------------------------------------------------------------------------------------------- Table 4
def ivae_multimodal(
    num_modalities: int = 4,
    missing_rate: float = 0.0,
    num_train: int = 5000,
    num_test: int = 5000,
    latent_dim: int = 10,
    data_dim: int = 25,
    num_clusters: int = 5,
    noise_std: float = 0.5,
    seed: int = 0,
    cond_draws: int = 10_000,
) -> SyntheticData:
    """Table 4: views X_s = lrelu(lrelu(s A_s) B_s) B_s + σ ε of a clustered 10-d latent, some missing.

    Draw order: the clustered sources as in :func:`ivae_bimodal` (N = num_train + num_test rows,
    N/K per cluster, cluster blocks in order); then per modality s: A_s = mixing(D, D_s),
    B_s = mixing(D_s, D_s) (uniform entries, unit-norm columns, condition number ≤ the 25th
    percentile of ``cond_draws`` draws), noise N(0, 1)^{N×D_s}; then the missing-view masks of the
    training rows, then of the test rows (:func:`partial_view_mask`, observed fraction within 0.005
    of 1 − η, at least one view per row).

    Train = rows [0, num_train), test = the rest, NOT shuffled (as in the paper's published code,
    so with the defaults training holds clusters 0, 1 and half of 2). M = 4 by default: the
    published magnitudes match M = 4 although the paper's text says 5 (pass ``num_modalities=5``).

    Modalities ``"m0"…`` ``(D_s,)``, Normal with learned per-dimension scale (initial 1).
    Labels ``"z"`` and ``"label"``.
    """
    n = num_train + num_test
    if n % num_clusters:
        raise ValueError(f"num_train + num_test ({n}) must be a multiple of num_clusters ({num_clusters})")
    rng = _rng(seed)
    s, labels, means, stds = _clustered_sources(rng, num_clusters, n // num_clusters, latent_dim)
    names = [f"m{j}" for j in range(num_modalities)]
    data, A, B = {}, {}, {}
    for name in names:
        A[name] = mixing_matrix(rng, latent_dim, data_dim, "uniform", cond_draws)
        B[name] = mixing_matrix(rng, data_dim, data_dim, "uniform", cond_draws)
        f = leaky_relu(leaky_relu(s @ A[name]) @ B[name]) @ B[name]
        data[name] = f + noise_std * rng.standard_normal((n, data_dim))
    masks = np.concatenate(
        [
            partial_view_mask(num_train, num_modalities, missing_rate, rng),
            partial_view_mask(num_test, num_modalities, missing_rate, rng),
        ]
    )
    mods = tuple(Modality(name, (data_dim,), scale=1.0, learn_scale=True) for name in names)
    label_t = torch.as_tensor(labels, dtype=torch.long)

    def split(rows: slice) -> MultimodalDataset:
        return _dataset(
            {k: v[rows] for k, v in data.items()},
            mods,
            present={name: masks[rows, j] for j, name in enumerate(names)},
            labels={"z": s[rows], "label": label_t[rows]},
        )

    truth = {
        "means": means,
        "stds": stds,
        "A": A,
        "B": B,
        "noise_std": noise_std,
        "missing_rate": missing_rate,
        "present": masks,
    }
    return SyntheticData(split(slice(0, num_train)), split(slice(num_train, n)), mods, truth)


TABLES = {1: bimodal_linear, 2: multimodal_linear, 3: ivae_bimodal, 4: ivae_multimodal}


def table_data(table: int, **kwargs) -> SyntheticData:
    """The generator of the paper's Table ``table`` (1-4) called with ``kwargs``."""
    if table not in TABLES:
        raise ValueError(f"no synthetic data for table {table!r}; expected one of {sorted(TABLES)}")
    return TABLES[table](**kwargs)
