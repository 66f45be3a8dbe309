"""Linear-Gaussian multimodal models with EXACT posterior guides, for closed-form tests (float64).

Shared model:   z ~ N(0, I_D),  x_s = W_s z + b_s + σ_s ε.
Private model:  z ~ N(0, I_D′), w_s ~ N(0, I_P),  x_s = W′_s z + W̃_s w_s + b_s + σ_s ε
(sites ``"z"``, ``"w_<name>"``, ``"x_<name>"``).

The exact posterior given any per-row subset S is Gaussian. For the private model it factorises
as p(z | x_S) Π_{s∈S} p(w_s | z, x_s) Π_{s∉S} p(w_s), which is exactly the structure of the
private-latent guides (q(w_s | ·) = prior for s ∉ S), so the guide below is both exact and
conventional. ``as_linear_gaussian()`` stacks modalities (and, for the private model, latents) into
one :class:`~pyro_mmvae.metrics.linear_gaussian.LinearGaussian` for the analytic answers.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from pyro_mmvae.data import Modality, MultimodalBatch
from pyro_mmvae.data.linear_gaussian import LinearGaussian

DTYPE = torch.float64


def _param(x: torch.Tensor, learn: bool):
    return nn.Parameter(x) if learn else x


def _standard_normal(dim: int, batch_size: int):
    """N(0, I_dim) with batch ``(batch_size,)``, event ``(dim,)``."""
    return dist.Normal(torch.zeros(dim, dtype=DTYPE), 1.0).to_event(1).expand([batch_size])


def draw_data(lg: LinearGaussian, n: int, seed: int = 1) -> torch.Tensor:
    """``n`` draws ``(n, Dx)`` of x = W z + b + √v ε from ``lg`` (z, ε standard normal, in that order)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, lg.latent_dim, generator=g, dtype=DTYPE)
    return z @ lg.W.T + lg.b + lg.noise_var.sqrt() * torch.randn(n, lg.data_dim, generator=g, dtype=DTYPE)


class LinearVAE(PyroModule):
    """Shared-latent linear-Gaussian model. ``dims``: name → D_s; ``sigma``: name → σ_s."""

    def __init__(self, dims: dict, latent_dim: int, sigma: dict | float = 0.7, seed: int = 0, learn: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dims, self.latent_dim = dict(dims), latent_dim
        sig = sigma if isinstance(sigma, dict) else {n: sigma for n in dims}
        self.W = nn.ParameterDict() if learn else {}
        self.b = nn.ParameterDict() if learn else {}
        for n, d in dims.items():
            self.W[n] = _param(torch.randn(d, latent_dim, generator=g, dtype=DTYPE), learn)
            self.b[n] = _param(0.5 * torch.randn(d, generator=g, dtype=DTYPE), learn)
        self.sigma = {n: float(sig[n]) for n in dims}
        self.weights = {n: 1.0 for n in dims}

    names = property(lambda self: list(self.dims))
    reconstruction_weights = property(lambda self: dict(self.weights))

    def modalities(self):
        return [Modality(n, (d,), scale=self.sigma[n], weight=self.weights[n]) for n, d in self.dims.items()]

    def likelihood_dist(self, name, z):
        return dist.Normal(z @ self.W[name].T + self.b[name], self.sigma[name]).to_event(1)

    def sample_latents(self, batch_size: int) -> dict:
        """Samples every latent site from its standard-normal prior: ``{"z": (B, D)}``."""
        return {"z": pyro.sample("z", _standard_normal(self.latent_dim, batch_size))}

    def latents_of(self, name: str, latents: dict) -> tuple:
        """The latents that modality ``name``'s likelihood reads, as arguments of :meth:`likelihood_dist`."""
        return (latents["z"],)

    def forward(self, batch: MultimodalBatch, beta: float = 1.0):
        with pyro.plate("data", batch.batch_size):
            with poutine.scale(scale=beta):
                latents = self.sample_latents(batch.batch_size)
            for n in self.names:
                with poutine.mask(mask=batch.present[n]):
                    pyro.sample(f"x_{n}", self.likelihood_dist(n, *self.latents_of(n, latents)), obs=batch.data[n])

    # -- analytic side
    def latent_blocks(self) -> dict:
        return {"z": slice(0, self.latent_dim)}

    def as_linear_gaussian(self) -> LinearGaussian:
        W = torch.cat([self.W[n].detach() for n in self.names])
        b = torch.cat([self.b[n].detach() for n in self.names])
        v = torch.cat([torch.full((d,), self.sigma[n] ** 2, dtype=DTYPE) for n, d in self.dims.items()])
        return LinearGaussian(W, b, v)

    def coords(self, masks: dict) -> torch.Tensor:
        """Per-row observed coordinates of the stacked x: bool ``(B, Dx)`` from ``{name: (B,)}``."""
        return torch.cat([masks[n].unsqueeze(-1).expand(-1, d) for n, d in self.dims.items()], -1)

    def sample(self, batch_size: int, seed: int = 1, present: dict | None = None) -> MultimodalBatch:
        x = draw_data(self.as_linear_gaussian(), batch_size, seed)
        data, start = {}, 0
        for n, d in self.dims.items():
            data[n] = x[:, start : start + d].clone()
            start += d
        present = dict(present or {})
        for n, keep in present.items():  # missing entries are stored as zeros
            data[n] = torch.where(keep.unsqueeze(-1), data[n], torch.zeros_like(data[n]))
        return MultimodalBatch(data, present)


class PrivateLinearVAE(LinearVAE):
    """Shared latent ``z`` (D′) plus private latents ``w_<name>`` (P each); x_s = W′_s z + W̃_s w_s + b_s + σ ε."""

    def __init__(self, dims, latent_dim, private_dim, sigma=0.7, seed=0, learn=False):
        super().__init__(dims, latent_dim, sigma, seed, learn)
        g = torch.Generator().manual_seed(seed + 1000)
        self.private_dim = private_dim
        self.V = nn.ParameterDict() if learn else {}
        for n, d in dims.items():
            self.V[n] = _param(torch.randn(d, private_dim, generator=g, dtype=DTYPE), learn)

    def likelihood_dist(self, name, z, w):
        return dist.Normal(z @ self.W[name].T + w @ self.V[name].T + self.b[name], self.sigma[name]).to_event(1)

    def sample_latents(self, batch_size: int) -> dict:
        """``{"z": (B, D′), "w_<name>": (B, P) for every modality}``, each from its standard-normal prior."""
        latents = super().sample_latents(batch_size)
        for n in self.names:
            latents[f"w_{n}"] = pyro.sample(f"w_{n}", _standard_normal(self.private_dim, batch_size))
        return latents

    def latents_of(self, name: str, latents: dict) -> tuple:
        return latents["z"], latents[f"w_{name}"]

    def latent_blocks(self) -> dict:
        out, start = {"z": slice(0, self.latent_dim)}, self.latent_dim
        for n in self.names:
            out[f"w_{n}"] = slice(start, start + self.private_dim)
            start += self.private_dim
        return out

    def as_linear_gaussian(self) -> LinearGaussian:
        rows = []
        for j, n in enumerate(self.names):
            blocks = [self.W[n].detach()]
            for k in range(len(self.names)):
                blocks.append(
                    self.V[n].detach() if k == j else torch.zeros(self.dims[n], self.private_dim, dtype=DTYPE)
                )
            rows.append(torch.cat(blocks, 1))
        lg = super().as_linear_gaussian()
        return LinearGaussian(torch.cat(rows), lg.b, lg.noise_var)

    def sample(self, batch_size: int, seed: int = 1, present: dict | None = None) -> MultimodalBatch:
        return LinearVAE.sample(self, batch_size, seed, present)


class ExactGuide(PyroModule):
    """q(· | x_S) = p(· | x_S) for :class:`LinearVAE` and :class:`PrivateLinearVAE`."""

    def __init__(self, model: LinearVAE):
        super().__init__()
        self.model = model

    def _masks(self, batch, subset):
        return batch.subset_mask(subset)

    def posterior(self, batch: MultimodalBatch, subset=None):
        """p(z | x_S) (the shared latent), ``MultivariateNormal`` with batch ``(B,)``."""
        m, masks = self.model, self._masks(batch, subset)
        d = m.latent_dim
        prec = torch.eye(d, dtype=DTYPE).expand(batch.batch_size, d, d)
        h = torch.zeros(batch.batch_size, d, dtype=DTYPE)
        for n in m.names:
            cov_x = m.sigma[n] ** 2 * torch.eye(m.dims[n], dtype=DTYPE)
            if isinstance(m, PrivateLinearVAE):
                cov_x = cov_x + m.V[n] @ m.V[n].T
            a = m.W[n].T @ torch.linalg.inv(cov_x)  # (D, D_s)
            keep = masks[n].to(DTYPE)
            prec = prec + keep[:, None, None] * (a @ m.W[n])
            h = h + keep[:, None] * ((batch.data[n] - m.b[n]) @ a.T)
        cov = torch.linalg.inv(prec)
        loc = (cov @ h.unsqueeze(-1)).squeeze(-1)
        return dist.MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(cov))

    def private_dist(self, batch, name, z, keep):
        """p(w_name | z, x_name) where ``keep`` (B,), else the prior; batch ``z.shape[:-1]``."""
        m = self.model
        p = m.private_dim
        prec = torch.eye(p, dtype=DTYPE) + m.V[name].T @ m.V[name] / m.sigma[name] ** 2
        cov = torch.linalg.inv(prec)
        resid = batch.data[name] - m.b[name] - z @ m.W[name].T  # (*lead, B, D_s)
        loc = resid @ (m.V[name] @ cov) / m.sigma[name] ** 2  # cov symmetric
        loc = torch.where(keep.unsqueeze(-1), loc, torch.zeros_like(loc))
        tril = torch.where(keep[:, None, None], torch.linalg.cholesky(cov), torch.eye(p, dtype=DTYPE))
        return dist.MultivariateNormal(loc, scale_tril=tril)

    def forward(self, batch: MultimodalBatch, subset=None, beta: float = 1.0):
        masks = self._masks(batch, subset)
        q = self.posterior(batch, subset)
        with pyro.plate("data", batch.batch_size), poutine.scale(scale=beta):
            z = pyro.sample("z", q)
            if isinstance(self.model, PrivateLinearVAE):
                for n in self.model.names:
                    pyro.sample(f"w_{n}", self.private_dist(batch, n, z, masks[n]))
        return z


# ---------------------------------------------------------------------------------------------- fixtures
DIMS = {"a": 3, "b": 2, "c": 4}
"""Three modalities of different sizes: the data dimensions of the models built by :func:`make_exact`."""

PRESENT = {
    "a": torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool),
    "b": torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool),
    "c": torch.tensor([1, 1, 0, 0, 1, 1], dtype=torch.bool),
}
"""Presence in 6 rows of the modalities of :data:`DIMS`: rows 0 and 5 full, 1 and 2 two modalities, 3 and 4 one."""


def make_exact(kind: str = "shared", *, batch_size: int, seed: int, present: dict | None = None, learn: bool = False):
    """``(model, guide, batch)``: a :class:`LinearVAE` (``kind="shared"``, D = 2) or :class:`PrivateLinearVAE`
    (``kind="private"``, D′ = P = 2) over :data:`DIMS`, its :class:`ExactGuide` and ``batch_size`` rows
    sampled from the model with ``seed`` and ``present``."""
    if kind == "shared":
        model = LinearVAE(DIMS, latent_dim=2, learn=learn)
    else:
        model = PrivateLinearVAE(DIMS, latent_dim=2, private_dim=2, learn=learn)
    return model, ExactGuide(model), model.sample(batch_size, seed=seed, present=present)


# ---------------------------------------------------------------------------------------------- closed forms
def log_marginal(model: LinearVAE, batch: MultimodalBatch, masks: dict) -> torch.Tensor:
    """log p(x_S) per row (0 where S = ∅), ``(B,)``."""
    lg = model.as_linear_gaussian()
    x = torch.cat([batch.data[n] for n in model.names], -1)
    coords = model.coords(masks)
    out = torch.zeros(batch.batch_size, dtype=DTYPE)
    for i in range(batch.batch_size):
        out[i] = lg.log_likelihood(x[i : i + 1], coords[i])[0]
    return out


def posterior_moments(model: LinearVAE, batch: MultimodalBatch, masks: dict):
    """Mean ``(B, K)`` and covariance ``(B, K, K)`` of ALL latents (stacked) given x_S."""
    lg = model.as_linear_gaussian()
    x = torch.cat([batch.data[n] for n in model.names], -1)
    return lg.posterior(x, model.coords(masks))


def expected_log_lik(model: LinearVAE, batch, masks_eval: dict, mean, cov) -> torch.Tensor:
    """E_{N(mean, cov)}[Σ_{s∈eval} log p(x_s | latents)] per row, ``(B,)``."""
    lg = model.as_linear_gaussian()
    x = torch.cat([batch.data[n] for n in model.names], -1)
    keep = model.coords(masks_eval)
    pred = mean @ lg.W.T + lg.b
    quad = (x - pred) ** 2 + torch.einsum("ik,bkl,il->bi", lg.W, cov, lg.W)
    per_coord = -0.5 * (torch.log(2 * torch.pi * lg.noise_var) + quad / lg.noise_var)
    return torch.where(keep, per_coord, torch.zeros_like(per_coord)).sum(-1)


def expected_bound(model: LinearVAE, batch, beta: float, masks_eval: dict, masks_q: dict, masks_ref=None):
    """E_{p(·|x_q)}[Σ_{s∈eval} log p(x_s | latents)] − β KL(p(·|x_q) ‖ p(·|x_ref)) per row, ``(B,)``.

    ``masks_*`` are per-row subsets ``{name: (B,)}``; ``masks_ref=None`` compares with the prior p(·).
    """
    mean_q, cov_q = posterior_moments(model, batch, masks_q)
    if masks_ref is None:
        mean_ref, cov_ref = prior_moments(model, batch.batch_size)
    else:
        mean_ref, cov_ref = posterior_moments(model, batch, masks_ref)
    return expected_log_lik(model, batch, masks_eval, mean_q, cov_q) - beta * gaussian_kl(
        mean_q, cov_q, mean_ref, cov_ref
    )


def gaussian_kl(mean_p, cov_p, mean_q, cov_q) -> torch.Tensor:
    """KL(N(mean_p, cov_p) ‖ N(mean_q, cov_q)) per row."""
    p = dist.MultivariateNormal(mean_p, covariance_matrix=cov_p)
    q = dist.MultivariateNormal(mean_q, covariance_matrix=cov_q)
    return torch.distributions.kl_divergence(p, q)


def prior_moments(model: LinearVAE, batch_size: int):
    k = model.as_linear_gaussian().latent_dim
    return torch.zeros(batch_size, k, dtype=DTYPE), torch.eye(k, dtype=DTYPE).expand(batch_size, k, k)
