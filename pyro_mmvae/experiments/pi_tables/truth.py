"""The log-likelihood of a table's data under the model that generated it (the "true model").

A summed log-likelihood depends strongly on the dataset drawn: the true model of Table 3's data scores
−9.5 × 10³ nats on the library's seed 0 and −14.6 × 10³ on average over the published scripts'
seeds 1-4. So the tables report each seed's true-model log-likelihood and the learned model's gap to
it next to the published comparison.

- Tables 1-2 (linear Gaussian): exact, log N(x; b, W Wᵀ + σ² I) with the generating parameters
  (``truth["model"]``).
- Table 3 (:func:`ivae_bimodal_log_likelihood`): exact. Given the cluster c = u, y = s A ~ N(m_c A,
  Aᵀ diag(L_c²) A) and x = lrelu(y) A + σ ε; lrelu is linear on each sign orthant O of y, so
  p(x | c) = Σ_O N(x; μ_O, C_O) · P_O(y ∈ O | x), a Gaussian marginal times a bivariate normal orthant
  probability of the orthant's linear-Gaussian posterior (Owen's T function: machine precision).
- Table 4: none (a 10-d latent under two leaky-ReLU layers has no closed form here).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from scipy.special import logsumexp, ndtr, owens_t

from ...metrics.linear_gaussian import stack_modalities


def bivariate_normal_cdf(h: np.ndarray, k: np.ndarray, rho: float) -> np.ndarray:
    """P(Z₁ ≤ h, Z₂ ≤ k) for standard normals with correlation ``rho`` (|rho| < 1), elementwise (Owen 1956).

    Φ₂ = ½Φ(h) + ½Φ(k) − T(h, (k − ρh)/(h√(1−ρ²))) − T(k, (h − ρk)/(k√(1−ρ²))) − δ, with δ = ½ when h and k
    differ in sign.
    A zero argument is moved to 1e-300 (the limit of the formula); the result is clipped to [0, 1].
    """
    h = np.where(np.asarray(h, dtype=np.float64) == 0, 1e-300, h)
    k = np.where(np.asarray(k, dtype=np.float64) == 0, 1e-300, k)
    r = math.sqrt(1.0 - rho * rho)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        a_h, a_k = (k - rho * h) / (h * r), (h - rho * k) / (k * r)
    delta = np.where((h > 0) == (k > 0), 0.0, 0.5)  # the signs, not h·k (1e-300² underflows to 0)
    return np.clip(0.5 * ndtr(h) + 0.5 * ndtr(k) - owens_t(h, a_h) - owens_t(k, a_k) - delta, 0.0, 1.0)


def _gaussian_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(cov)
    sol = np.linalg.solve(chol, (x - mean).T).T
    return -0.5 * (np.sum(sol**2, -1) + 2 * np.log(np.diag(chol)).sum() + x.shape[-1] * math.log(2 * math.pi))


def ivae_bimodal_log_likelihood(x, labels, means, stds, A, noise_std: float, slope: float = 0.1) -> np.ndarray:
    """Exact log p(x_n, u_n) of Table 3's generative model, per row ``(N,)`` float64.

    The model: c ~ U{0..K−1} (u = one-hot c), s | c ~ N(means[c], diag(stds[c]²)),
    x = lrelu_slope(s A) A + noise_std · ε with ε ~ N(0, I₂). ``x (N, 2)``, ``labels (N,)`` cluster
    indices, ``means``/``stds`` ``(K, 2)``, ``A (2, 2)`` (row-vector convention, as the generators).
    """
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    means, stds, A = (np.asarray(a, dtype=np.float64) for a in (means, stds, A))
    if x.ndim != 2 or x.shape[1] != 2 or A.shape != (2, 2):
        raise ValueError(f"the closed form is for a 2-d latent and 2-d x; got x {x.shape}, A {A.shape}")
    num_clusters = means.shape[0]
    var = float(noise_std) ** 2
    out = np.full(x.shape[0], np.nan)
    for c in range(num_clusters):
        rows = labels == c
        xc = x[rows]
        mu = means[c] @ A
        cov_y = A.T @ np.diag(stds[c] ** 2) @ A
        prec_y = np.linalg.inv(cov_y)
        terms = []
        for signs in itertools.product((1.0, -1.0), repeat=2):
            t = np.array(signs)
            G = np.where(t > 0, 1.0, slope)[:, None] * A  # x = y G + noise on the orthant sign(y) = t
            marginal = _gaussian_logpdf(xc, mu @ G, G.T @ cov_y @ G + var * np.eye(2))
            post_cov = np.linalg.inv(prec_y + G @ G.T / var)
            post_mean = ((prec_y @ mu)[None, :] + xc @ G.T / var) @ post_cov
            sd = np.sqrt(np.diag(post_cov))
            rho = post_cov[0, 1] / (sd[0] * sd[1])
            h = t * post_mean / sd  # P(t·y > 0) = P(Z ≤ h) with corr(Z) = t₀t₁ρ
            with np.errstate(divide="ignore"):
                terms.append(marginal + np.log(bivariate_normal_cdf(h[:, 0], h[:, 1], t[0] * t[1] * rho)))
        out[rows] = logsumexp(np.stack(terms), axis=0)
    return out - math.log(num_clusters)


def true_log_likelihood(table: int, data) -> torch.Tensor | None:
    """Per-row true-model log-likelihood ``(N,)`` float64 of the set a table's LLH is measured on; None for Table 4.

    Tables 1-2 and 3: the training set (``data.train``); ``data`` is a
    :class:`~pyro_mmvae.data.synthetic.SyntheticData` with its generating parameters in ``truth``.
    """
    full = data.train.full
    if table in (1, 2):
        model = data.truth["model"]
        names = [m.name for m in data.modalities]
        return model.log_likelihood(stack_modalities(full, names))
    if table == 3:
        t = data.truth
        ll = ivae_bimodal_log_likelihood(
            full.data["x"].double().numpy(), full.labels["label"].numpy(), t["means"], t["stds"], t["A"],
            t["noise_std"],
        )  # fmt: skip
        return torch.from_numpy(ll)
    return None
