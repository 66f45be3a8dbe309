"""Linear-Gaussian models in closed form: log-likelihoods, posteriors, the probabilistic-PCA MLE.

Model: z ~ N(0, I_D), x = W z + b + ε, ε ~ N(0, diag(noise_var)), with W ``(Dx, D)``, b ``(Dx,)``,
noise_var ``(Dx,)``. Then x ~ N(b, W Wᵀ + diag(noise_var)) and, given the coordinates O of x,
z | x_O ~ N(P⁻¹ W_Oᵀ Ψ_O⁻¹ (x_O − b_O), P⁻¹) with P = I + W_Oᵀ Ψ_O⁻¹ W_O.

The linear synthetic data sets (:mod:`pyro_mmvae.data.synthetic`) record their true generative
model as a :class:`LinearGaussian`; the metrics compare a learned model's exact log-likelihood
with it and with the maximum-likelihood solution (:func:`ppca_mle`), see
:mod:`pyro_mmvae.metrics.linear_gaussian`. It lives with the data because it describes how data
are generated and needs nothing but torch. Computations run in float64; results are returned in
float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, loc: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(x; loc, cov) for ``x (N, Dx)``, ``loc (Dx,)`` or ``(N, Dx)``, ``cov (Dx, Dx)`` → ``(N,)``."""
    x, loc, cov = x.double(), loc.double(), cov.double()
    if x.dim() != 2 or cov.shape != (x.shape[-1], x.shape[-1]):
        raise ValueError(f"expected x (N, Dx) and cov (Dx, Dx); got x {tuple(x.shape)}, cov {tuple(cov.shape)}")
    chol = torch.linalg.cholesky(cov)
    # One triangular solve with all N rows as right-hand sides (Dx, N): a per-row solve is ~100× slower.
    sol = torch.linalg.solve_triangular(chol, (x - loc).T, upper=False).T
    logdet = 2 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (sol.pow(2).sum(-1) + logdet + x.shape[-1] * _LOG_2PI)


@dataclass
class LinearGaussian:
    """x = W z + b + ε with z ~ N(0, I), ε ~ N(0, diag(noise_var)).

    Attributes:
        W: ``(Dx, D)`` loading matrix.
        b: ``(Dx,)`` offset.
        noise_var: ``(Dx,)`` observation variances (a scalar is broadcast).
    """

    W: torch.Tensor
    b: torch.Tensor
    noise_var: torch.Tensor

    def __post_init__(self):
        self.W = torch.as_tensor(self.W).double()
        self.b = torch.as_tensor(self.b).double()
        if self.W.dim() != 2 or self.b.shape != (self.W.shape[0],):
            raise ValueError(f"expected W (Dx, D) and b (Dx,); got W {tuple(self.W.shape)}, b {tuple(self.b.shape)}")
        nv = torch.as_tensor(self.noise_var).double()
        self.noise_var = nv.expand(self.W.shape[0]).clone() if nv.dim() == 0 else nv
        if self.noise_var.shape != self.b.shape:
            raise ValueError(f"noise_var must be a scalar or ({self.b.shape[0]},), got {tuple(self.noise_var.shape)}")

    @property
    def data_dim(self) -> int:
        return self.W.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    def covariance(self) -> torch.Tensor:
        """Marginal covariance W Wᵀ + diag(noise_var), ``(Dx, Dx)``."""
        return self.W @ self.W.T + torch.diag(self.noise_var)

    def log_likelihood(self, x: torch.Tensor, dims: torch.Tensor | Iterable[int] | None = None) -> torch.Tensor:
        """Exact log p(x_dims) per row: ``x (N, Dx)`` → ``(N,)``; ``dims`` selects coordinates (default all)."""
        x = self._check_x(x)
        if dims is None:
            return gaussian_log_prob(x, self.b, self.covariance())
        idx = torch.as_tensor(dims)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        if idx.numel() == 0:
            return x.new_zeros(x.shape[0])
        return gaussian_log_prob(x[:, idx], self.b[idx], self.covariance()[idx][:, idx])

    def posterior(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z | x_O): mean ``(N, D)`` and covariance ``(N, D, D)``.

        ``observed``: bool ``(Dx,)`` or per-row ``(N, Dx)`` marking the coordinates O (default all);
        unobserved coordinates of ``x`` are ignored (they may hold anything finite).
        """
        x = self._check_x(x)
        n = x.shape[0]
        obs = torch.ones(self.data_dim, dtype=torch.bool) if observed is None else torch.as_tensor(observed).bool()
        obs = obs.expand(n, self.data_dim)
        # one covariance per distinct observation pattern (usually few), gathered back to rows
        patterns, which = torch.unique(obs, dim=0, return_inverse=True)
        inv_noise = torch.where(patterns, 1.0 / self.noise_var, torch.zeros((), dtype=torch.float64))  # (P, Dx)
        prec = torch.eye(self.latent_dim, dtype=torch.float64) + torch.einsum(
            "id,pi,ie->pde", self.W, inv_noise, self.W
        )
        cov = torch.linalg.inv(prec)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        resid = torch.where(obs, x - self.b, torch.zeros((), dtype=torch.float64))
        h = (inv_noise[which] * resid) @ self.W  # (N, D)
        mean = (cov[which] @ h.unsqueeze(-1)).squeeze(-1)
        return mean, cov[which]

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).double()
        if x.dim() != 2 or x.shape[-1] != self.data_dim:
            raise ValueError(f"expected x of shape (N, {self.data_dim}), got {tuple(x.shape)}")
        return x


# ---------------------------------------------------------------------------------------------- maximum likelihood
def gaussian_mle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean ``(Dx,)`` and maximum-likelihood covariance (divisor N) ``(Dx, Dx)``."""
    x = torch.as_tensor(x).double()
    mean = x.mean(0)
    xc = x - mean
    return mean, xc.T @ xc / x.shape[0]


def ppca_mle(x: torch.Tensor, latent_dim: int) -> LinearGaussian:
    """Maximum-likelihood probabilistic PCA with isotropic noise σ² (Tipping & Bishop).

    b̂ = x̄; S = sample covariance (divisor N) with eigenvalues λ_1 ≥ … ≥ λ_Dx;
    σ²_ML = mean of the Dx − D smallest eigenvalues; Ŵ = U_D (Λ_D − σ²_ML I)^{1/2} (unique up to a
    rotation). When ``latent_dim ≥ Dx`` the MLE is the unrestricted Gaussian N(x̄, S): Ŵ = U Λ^{1/2}
    (zero-padded to D columns) and σ² = 0.
    """
    x = torch.as_tensor(x).double()
    if x.dim() != 2:
        raise ValueError(f"expected x of shape (N, Dx), got {tuple(x.shape)}")
    n, dx = x.shape
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    mean, cov = gaussian_mle(x)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    if latent_dim >= dx:
        W = evecs * evals.clamp_min(0).sqrt()
        W = torch.cat([W, W.new_zeros(dx, latent_dim - dx)], 1)
        return LinearGaussian(W, mean, torch.zeros(dx, dtype=torch.float64))
    sigma2 = evals[latent_dim:].mean()
    W = evecs[:, :latent_dim] * (evals[:latent_dim] - sigma2).clamp_min(0).sqrt()
    return LinearGaussian(W, mean, sigma2.expand(dx).clone())
