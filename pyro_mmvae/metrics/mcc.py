"""Mean correlation coefficient (MCC) between true and inferred latents, with and without CCA alignment.

Protocol (identifiability experiments of "Learning multi-modal generative models with
permutation-invariant encoders and tighter variational objectives", after Khemakhem et al.): draw
ONE ẑ ~ q(z | x) per data point, split the rows into halves (first ⌊N/2⌋ rows fit, the next ⌊N/2⌋
evaluate), and report

- ``weak_out``: fit CCA on half 1, transform half 2, then the mean absolute correlation of the
  canonical variate pairs after Hungarian matching (identifiability up to an affine map);
  ``weak_in`` is the same on half 1;
- ``strong_out``: Pearson correlations between raw coordinates, the matching (permutation, sign via
  |·|) learned on half 1 and applied to half 2 (identifiability up to permutation and scaling);
  ``strong_in`` matches and evaluates on half 1.

CCA is solved in closed form (whitening + SVD, a tiny ridge for rank-deficient inputs); matching
uses ``scipy.optimize.linear_sum_assignment``. ``n_components=None`` keeps min(D_true, D_hat)
canonical pairs (Khemakhem et al.); the paper's published scripts use ``n_components=1``.

The dependence between two coordinates is Pearson's correlation (default), Spearman's, or the
randomized dependence coefficient (``method="rdc"``, :func:`randomized_dependence`), which the
published scripts of the permutation-invariant paper use for ``weak_in``, ``weak_out`` and
``strong_in`` (their ``strong_out`` is Pearson). RDC measures any, also non-monotone, dependence: it
exceeds |Pearson| for a non-linear relation (sin(3x): 0.99), is close to |ρ| for a Gaussian pair, ignores
a few aligned outliers that Pearson follows, and is biased upward for small N (independent pairs score
0.50 at N = 100, 0.11 at N = 2000, 0.07 at N = 5000).

Sanity check (dense linear model of Table 2, exact posterior): a posterior SAMPLE gives ≈ 5/6,
the posterior MEAN ≈ √(5/6).

Models with private latents (shared z′ plus a private z̃_s per modality, e.g.
:class:`~pyro_mmvae.models.private.PrivateLatentVAE` with the guides of ``guides/equivariant.py``):
``latent_mcc(..., private=True)`` scores the concatenation (z′, z̃_{s_1}, …, z̃_{s_M}) returned by
:func:`encode_dataset_with_private` against the true latents (all of them, shared and private).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from ..data.batch import Subset
from ..data.dataset import iterate_batches
from .probe import encode_dataset

METHODS = ("pearson", "spearman", "rdc")
# Randomized dependence coefficient: random sine features of each copula with the published scripts'
# constants (20 features, w and b ~ N(0, 0.5²)); Lopez-Paz et al. draw w with the smaller scale 1/6
# per input dimension, which scores non-linear relations a little lower (sin(3x): 0.96 instead of 0.99).
RDC_FEATURES = 20
RDC_SCALE = 0.5


def _as_float64(a, name: str, shape_ok, expected: str) -> np.ndarray:
    """``a`` (array or tensor) as float64, checked: ``shape_ok(a)`` and finite entries."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    a = a.astype(np.float64)
    if not shape_ok(a):
        raise ValueError(f"{name} must be {expected}, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has NaN/inf entries")
    return a


def _as_2d(a, name: str) -> np.ndarray:
    return _as_float64(a, name, lambda a: a.ndim == 2, "a matrix (N, D)")


def _as_vector(a, name: str) -> np.ndarray:
    """One variable ``(N,)`` from ``(N,)`` or ``(N, 1)``."""
    one = _as_float64(
        a, name, lambda a: a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1), "one variable, shape (N,) or (N, 1)"
    )
    return one.reshape(-1)


def _generator(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _feature_basis(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis ``(N, r)`` of the span of the centred columns of ``a (N, k)``, for columns of one scale.

    The rank tolerance is relative to the largest UNcentred entry (centring a constant column leaves
    rounding noise): right for RDC's sine features, all in [−1, 1], not for columns of unlike scales.
    """
    tol = np.abs(a).max(initial=0.0) * np.sqrt(a.shape[0]) * max(a.shape) * np.finfo(a.dtype).eps
    u, s, _ = np.linalg.svd(a - a.mean(0), full_matrices=False)
    return u[:, s > tol] if tol > 0 else u[:, :0]


def _column_basis(a: np.ndarray) -> np.ndarray:
    """:func:`_feature_basis` of the standardised non-constant columns of ``a (N, k)``: invariant to column scales."""
    eps = np.finfo(a.dtype).eps
    centred = a - a.mean(0)
    # a column is constant when its spread is rounding noise of its magnitude (offsets do not count)
    varying = np.ptp(a, axis=0) > 64 * eps * np.abs(a).max(axis=0, initial=0.0)
    centred = centred[:, varying]
    return _feature_basis(centred / np.linalg.norm(centred, axis=0)) if centred.shape[1] else centred


def _first_canonical_correlation(qx: np.ndarray, qy: np.ndarray) -> float:
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return 0.0
    return float(min(np.linalg.svd(qx.T @ qy, compute_uv=False)[0], 1.0))


def largest_canonical_correlation(x, y) -> float:
    """The first canonical correlation of ``x (N, Dx)`` and ``y (N, Dy)`` (0 when either is constant).

    Invariant to the scale and offset of each column; columns that are linear combinations of others
    add nothing (the correlation is that of the spans).
    """
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y disagree on N: {x.shape[0]} vs {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"a canonical correlation needs at least 2 rows, got {x.shape[0]}")
    return _first_canonical_correlation(_column_basis(x), _column_basis(y))


def _copula_features(v: np.ndarray, num_features: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """sin(w·F̂(v) + b) for ``num_features`` draws of (w, b) ~ N(0, scale²): ``(N, num_features)``."""
    # the empirical CDF F̂(v) = #{v_i ≤ v} / N: invariant to monotone maps of v, constant for constant v
    u = rankdata(v, method="max") / v.shape[0]
    w, b = rng.normal(0.0, scale, size=(2, num_features))
    return np.sin(np.outer(u, w) + b)


def randomized_dependence(
    x, y, num_features: int = RDC_FEATURES, scale: float = RDC_SCALE, rng: np.random.Generator | int | None = 0
) -> float:
    """Randomized dependence coefficient of two samples ``x (N,)``, ``y (N,)`` in [0, 1] (Lopez-Paz et al., 2013).

    Each variable is mapped through its empirical copula and ``num_features`` random sine features; the
    score is the largest canonical correlation between the two feature sets. It is 0 only (up to noise)
    for independent variables, 1 for a deterministic, even non-monotone, relation. The noise floor
    falls with N: independent pairs score about 0.50 at N = 100, 0.22 at 500, 0.11 at 2000, 0.07 at
    5000 (20 features), so compare scores at equal N. ``rng``: a numpy Generator or a seed (the features
    are random; a fixed seed makes the score reproducible). ``x`` and ``y`` may also be ``(N, 1)``.
    """
    x, y = _as_vector(x, "x"), _as_vector(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y disagree on N: {x.shape[0]} vs {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"the randomized dependence coefficient needs at least 2 rows, got {x.shape[0]}")
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale}")
    rng = _generator(rng)
    k = min(num_features, x.shape[0])
    fx, fy = _copula_features(x, k, scale, rng), _copula_features(y, k, scale, rng)
    return _first_canonical_correlation(_feature_basis(fx), _feature_basis(fy))


def correlation_matrix(x, y, method: str = "pearson", rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """Dependence between the columns of ``x (N, Dx)`` and ``y (N, Dy)``: ``(Dx, Dy)``; 0 for constant columns.

    ``method``: ``"pearson"`` or ``"spearman"`` correlations (signed), or ``"rdc"``
    (:func:`randomized_dependence`, in [0, 1], its random features drawn from ``rng``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y disagree on N: {x.shape[0]} vs {y.shape[0]}")
    if method == "rdc":
        rng = _generator(rng)
        return np.array([[randomized_dependence(xi, yj, rng=rng) for yj in y.T] for xi in x.T]).reshape(
            x.shape[1], y.shape[1]
        )
    if method == "spearman":
        x, y = rankdata(x, axis=0), rankdata(y, axis=0)
    xc, yc = x - x.mean(0), y - y.mean(0)
    nx, ny = np.linalg.norm(xc, axis=0), np.linalg.norm(yc, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cc = (xc.T @ yc) / np.outer(nx, ny)
    return np.nan_to_num(cc, nan=0.0, posinf=0.0, neginf=0.0)


def match(cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching maximising Σ |cc[i, j]|: ``(rows, cols)`` of min(Dx, Dy) pairs."""
    return linear_sum_assignment(-np.abs(cc))


def mean_corr_coef(x, y, method: str = "pearson", rng: np.random.Generator | int | None = 0) -> float:
    """Mean |correlation| of the best one-to-one matching of the columns of x and y (in sample)."""
    cc = correlation_matrix(x, y, method, rng)
    rows, cols = match(cc)
    return float(np.abs(cc[rows, cols]).mean())


def mean_corr_coef_out_of_sample(
    x, y, x_test, y_test, method: str = "pearson", rng: np.random.Generator | int | None = 0
) -> float:
    """Matching learned on ``(x, y)``, mean |correlation| of the matched pairs on ``(x_test, y_test)``."""
    rng = _generator(rng)
    rows, cols = match(correlation_matrix(x, y, method, rng))
    return float(np.abs(correlation_matrix(x_test, y_test, method, rng)[rows, cols]).mean())


@dataclass
class CCA:
    """A fitted canonical correlation analysis: u = (x − x_mean) x_weights, v = (y − y_mean) y_weights."""

    x_mean: np.ndarray
    y_mean: np.ndarray
    x_weights: np.ndarray  # (Dx, k)
    y_weights: np.ndarray  # (Dy, k)
    correlations: np.ndarray  # (k,) in-sample canonical correlations, descending

    def transform(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Canonical variates ``(N, k)`` of both views."""
        return (_as_2d(x, "x") - self.x_mean) @ self.x_weights, (_as_2d(y, "y") - self.y_mean) @ self.y_weights


def _inv_sqrt(cov: np.ndarray, ridge: float) -> np.ndarray:
    d = cov.shape[0]
    scale = max(np.trace(cov) / d, 1e-300)
    evals, evecs = np.linalg.eigh(cov + ridge * scale * np.eye(d))
    evals = np.maximum(evals, ridge * scale)
    return (evecs / np.sqrt(evals)) @ evecs.T


def fit_cca(x, y, n_components: int | None = None, ridge: float = 1e-10) -> CCA:
    """Closed-form CCA of ``x (N, Dx)`` and ``y (N, Dy)`` keeping ``n_components`` pairs (default min(Dx, Dy))."""
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y disagree on N: {x.shape[0]} vs {y.shape[0]}")
    kmax = min(x.shape[1], y.shape[1])
    k = kmax if n_components is None else int(n_components)
    if not 1 <= k <= kmax:
        raise ValueError(f"n_components must be in [1, {kmax}], got {n_components}")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n = x.shape[0]
    wx, wy = _inv_sqrt(xc.T @ xc / n, ridge), _inv_sqrt(yc.T @ yc / n, ridge)
    u, s, vt = np.linalg.svd(wx @ (xc.T @ yc / n) @ wy)
    return CCA(mx, my, wx @ u[:, :k], wy @ vt.T[:, :k], s[:k])


@dataclass
class MCCResult:
    weak_in: float
    weak_out: float
    strong_in: float
    strong_out: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def mcc(
    z_true, z_hat, n_components: int | None = None, method: str = "pearson", rng: np.random.Generator | int | None = 0
) -> MCCResult:
    """MCC scores of inferred latents ``z_hat (N, D̂)`` against true ``z_true (N, D)`` (see module docstring).

    ``method`` scores the dependence of each matched pair (``"rdc"``: random features from ``rng``, a seed
    or a numpy Generator, so a fixed seed gives a reproducible score).
    """
    z_true, z_hat = _as_2d(z_true, "z_true"), _as_2d(z_hat, "z_hat")
    if z_true.shape[0] != z_hat.shape[0]:
        raise ValueError(f"z_true and z_hat disagree on N: {z_true.shape[0]} vs {z_hat.shape[0]}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    half = z_true.shape[0] // 2
    if half < 2:
        raise ValueError("MCC needs at least 4 rows (two halves of >= 2)")
    rng = _generator(rng)
    a, b = slice(0, half), slice(half, 2 * half)
    strong_in = mean_corr_coef(z_true[a], z_hat[a], method, rng)
    strong_out = mean_corr_coef_out_of_sample(z_true[a], z_hat[a], z_true[b], z_hat[b], method, rng)
    cca = fit_cca(z_true[a], z_hat[a], n_components)
    weak_in = mean_corr_coef(*cca.transform(z_true[a], z_hat[a]), method, rng)
    weak_out = mean_corr_coef(*cca.transform(z_true[b], z_hat[b]), method, rng)
    return MCCResult(weak_in, weak_out, strong_in, strong_out)


def encode_dataset_with_private(
    guide, dataset, subset: Subset = None, batch_size: int = 500, sample: bool = True
) -> torch.Tensor:
    """Shared and private latents of every row of ``dataset`` (in order): ``(N, D + M·D̃)``.

    For a guide with private latents (``guide.posterior`` → q(z′ | x_S), ``guide.private_posterior(batch,
    subset, z′)`` → ``{name: q(z̃_name | z′, x_S)}``, ``guide.names``), row n holds
    ``[z′, z̃_{names[0]}, …, z̃_{names[M-1]}]``: z′ ~ q(z′ | x_S) and then z̃_s ~ q(z̃_s | z′, x_S) at that
    z′ (``sample``), or z′ = its mean and z̃_s = the mean of q(z̃_s | z′ = that mean, x_S) (a plug-in
    mean, not the marginal mean of z̃_s when q(z̃_s | z′, ·) depends on z′). For s outside S the guide
    returns the prior N(0, I), so those blocks carry no information. ``subset``: modality names
    (default every present modality).
    """
    if isinstance(subset, dict):
        raise TypeError("encode_dataset_with_private takes modality names as the subset, not per-row masks")
    if not callable(getattr(guide, "private_posterior", None)):
        raise TypeError(
            f"{type(guide).__name__} has no private_posterior(batch, subset, z); private=True needs a guide with "
            "private latents (see guides/equivariant.py)"
        )
    device = next((p.device for p in guide.parameters()), None) if hasattr(guide, "parameters") else None
    out = []
    with torch.no_grad():
        for batch in iterate_batches(dataset, batch_size, shuffle=False):
            batch = batch if device is None else batch.to(device)
            q = guide.posterior(batch, subset)
            z = q.sample() if sample else q.mean
            private = guide.private_posterior(batch, subset, z)
            blocks = [private[name].sample() if sample else private[name].mean for name in guide.names]
            out.append(torch.cat([z, *blocks], -1).cpu())
    return torch.cat(out)


def latent_mcc(
    guide,
    dataset,
    latent_label: str = "z",
    subset: Subset = None,
    batch_size: int = 500,
    sample: bool = True,
    n_components: int | None = None,
    method: str = "pearson",
    private: bool = False,
    rng: np.random.Generator | int | None = 0,
) -> MCCResult:
    """MCC of one ẑ ~ q(z | x_S) per row (``sample=False``: its mean) against ``dataset.full.labels[latent_label]``.

    ``private=True`` (guides with private latents): ẑ = (z′, z̃_{s_1}, …, z̃_{s_M}) ``(N, D + M·D̃)`` from
    :func:`encode_dataset_with_private`, to be scored against the true shared AND private latents.
    ``method`` and ``rng``: as in :func:`mcc`.
    """
    if latent_label not in dataset.full.labels:
        raise KeyError(
            f"dataset has no label {latent_label!r} with the true latents; it has {sorted(dataset.full.labels)}"
        )
    encode = encode_dataset_with_private if private else encode_dataset
    z_hat = encode(guide, dataset, subset, batch_size, sample)
    return mcc(dataset.full.labels[latent_label], z_hat, n_components, method, rng)
