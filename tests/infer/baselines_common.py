"""Shared pieces of the product-of-experts baselines' tests (JMVAE, MVAE, MoPoE, MVTCAE, MMJSD).

Linear-Gaussian models whose product-of-experts guides are EXACT, for the closed-form tests (float64):

x_s = W_s z + b_s + σ_s ε with z ~ N(0, I_D) and W_s = Q_s diag(d_s) (orthonormal columns Q_s). Then, as a
function of z, p(x_s | z) ∝ N(z; μ_s, diag v_s) with μ_s = diag(1/d_s²) W_sᵀ (x_s − b_s) and v_s = σ_s²/d_s²,
so p(z | x_S) = N(0, I) Π_{s∈S} N(z; μ_s, v_s) (normalised): a PoE with the prior expert whose experts
are :class:`ExactExpertEncoder`. The prior expert of the library's PoE is N(0, 1 + var_floor); with
``VAR_FLOOR = 1e-10`` the guides are exact to ~1e-10.

Training smoke tests: :func:`train_baseline` builds a baseline with small MLPs on three-modality linear
data (one modality missing in a quarter of the rows) and trains it with ``fit``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

from pyro_mmvae.data import Modality, MultimodalBatch, MultimodalDataset
from pyro_mmvae.distributions.likelihoods import Likelihood
from pyro_mmvae.guides import MoPoEGuide, PoEGuide
from pyro_mmvae.infer.mvtcae import MVTCAEGuide
from tests.exact_linear import DIMS, DTYPE, LinearVAE

VAR_FLOOR = 1e-10
LATENT_DIM = 2


class DiagLinearVAE(LinearVAE):
    """:class:`~tests.exact_linear.LinearVAE` with W_s = Q_s diag(d_s) and a ``prior_dist()``."""

    def __init__(self, dims: dict = DIMS, latent_dim: int = LATENT_DIM, sigma: float = 0.7, seed: int = 0):
        super().__init__(dims, latent_dim, sigma=sigma, seed=seed)
        g = torch.Generator().manual_seed(seed + 7)
        for n, d in dims.items():
            q, _ = torch.linalg.qr(torch.randn(d, latent_dim, generator=g, dtype=DTYPE))
            scales = 0.5 + 1.5 * torch.rand(latent_dim, generator=g, dtype=DTYPE)
            self.W[n] = q * scales

    def prior_dist(self):
        return dist.Normal(torch.zeros(self.latent_dim, dtype=DTYPE), 1.0).to_event(1)


class ExactExpertEncoder(nn.Module):
    """``x_s (B, D_s) → [μ_s, ℓ_s] (B, 2D)``: modality s's likelihood factor as a PoE expert (v = floor + e^{2ℓ})."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor, sigma: float, var_floor: float = VAR_FLOOR):
        super().__init__()
        d2 = (W**2).sum(0)
        self.register_buffer("A", W / d2)
        self.register_buffer("b", b.clone())
        self.register_buffer("ell", 0.5 * torch.log(sigma**2 / d2 - var_floor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = (x - self.b) @ self.A
        return torch.cat([mu, self.ell.expand_as(mu)], -1)


def exact_encoders(model: DiagLinearVAE, names=None) -> dict:
    names = list(model.names if names is None else names)
    return {n: ExactExpertEncoder(model.W[n], model.b[n], model.sigma[n]) for n in names}


def exact_guide(model: DiagLinearVAE, kind: str = "poe", names=None, **kwargs):
    """An exact PoE-family guide over ``names`` (default the model's order): ``"poe"``, ``"mopoe"``, ``"mvtcae"``."""
    names = list(model.names if names is None else names)
    mods = {m.name: m for m in model.modalities()}
    mods = [mods[n] for n in names]
    common = dict(encoders=exact_encoders(model, names), var_floor=VAR_FLOOR, init="torch")
    if kind == "poe":
        return PoEGuide(mods, model.latent_dim, **common, **kwargs)
    if kind == "mopoe":
        return MoPoEGuide(mods, model.latent_dim, **common, **kwargs)
    if kind == "mvtcae":
        return MVTCAEGuide(mods, model.latent_dim, **common, **kwargs)
    raise ValueError(kind)


class ExactExperts(nn.Module):
    """``expert(batch, name)`` = p(z | x_name) from an exact PoE guide (the experts a JMVAEGuide needs)."""

    def __init__(self, poe: PoEGuide):
        super().__init__()
        self.poe = poe
        self.names = list(poe.names)

    def expert(self, batch, name):
        return self.poe.posterior(batch, [name])

    def posterior(self, batch, subset=None):
        return self.poe.posterior(batch, subset)


def se_close(samples: torch.Tensor, expected: torch.Tensor, k: float = 5.0) -> bool:
    """Mean over dim 0 within k standard errors (plus rounding) of ``expected``."""
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return bool(((samples.mean(0) - expected).abs() <= k * se + 1e-8).all())


def reversed_batch(batch):
    """The same batch with its modalities in reverse order."""
    names = list(reversed(batch.names))
    return MultimodalBatch({n: batch.data[n] for n in names}, {n: batch.present[n] for n in names})


def with_nan_in_missing(batch):
    """The same batch with NaN in every missing row (validation must zero-fill them)."""
    data = {}
    for n, x in batch.data.items():
        keep = batch.present[n].reshape(-1, *([1] * (x.dim() - 1)))
        data[n] = torch.where(keep, x, torch.full_like(x, float("nan")))
    return MultimodalBatch(data, dict(batch.present))


# ---------------------------------------------------------------------------------------------- training
LINEAR = (
    Modality("a", (3,), likelihood="normal", scale=0.2),
    Modality("b", (2,), likelihood="normal", scale=0.2),
    Modality("c", (2,), likelihood="normal", scale=0.2),
)


def linear_data(n: int = 256, seed: int = 0) -> MultimodalDataset:
    """Three modalities x_m = z W_m + 0.2 ε of one 2-D latent; modality c missing in a quarter of the rows."""
    w = torch.Generator().manual_seed(1000)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    data = {
        m.name: z @ torch.randn(2, m.shape[0], generator=w) + 0.2 * torch.randn(n, m.shape[0], generator=g)
        for m in LINEAR
    }
    return MultimodalDataset(data, modalities=LINEAR, present={"c": torch.arange(n) % 4 != 0})


def small_networks(latent_dim: int = 2, out_dim: int | None = None, hidden=(32,)) -> tuple[dict, dict]:
    """``(encoders → out_dim (default 2D), decoders)`` small MLPs for :data:`LINEAR`."""
    from pyro_mmvae.nn.networks import default_decoder, default_encoder

    out_dim = 2 * latent_dim if out_dim is None else out_dim
    encoders = {m.name: default_encoder(m, out_dim, hidden) for m in LINEAR}
    decoders = {m.name: default_decoder(m, latent_dim, Likelihood(m).param_shape, hidden) for m in LINEAR}
    return encoders, decoders


def train_baseline(name: str, epochs: int = 6, beta=1.0, **options) -> tuple[list[float], tuple]:
    """Train baseline ``name`` on :func:`linear_data`: ``(per-epoch train losses, (model, guide, objective))``."""
    from pyro_mmvae.experiments.baselines_poe import build_baseline
    from pyro_mmvae.train import fit

    torch.manual_seed(0)
    encoders, decoders = small_networks()
    if name == "jmvae":
        options.setdefault("heads", small_networks(out_dim=16)[0])
        options.setdefault("head_dim", 16)
    built = build_baseline(name, "toy", LINEAR, 2, encoders=encoders, decoders=decoders, **options)
    result = fit(*built[:2], linear_data(), built[2], epochs=epochs, batch_size=64, lr=3e-3, beta=beta, progress=False)
    return [row["train_loss"] for row in result.history], built
