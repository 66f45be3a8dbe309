"""Guides for models with private latents: invariant q(z′ | x_S), equivariant q(z̃_S | z′, x_S).

For the model of :class:`~pyro_mmvae.models.private.PrivateLatentVAE` (shared z′ at site ``"z"``,
private z̃_s at sites ``"w_<s>"``) these guides factorise as

    q(z′, z̃ | x_S) = q(z′ | x_S) · q(z̃_S | z′, x_S) · Π_{s∉S} p(z̃_s | z′),   p(z̃_s | z′) = N(0, I),

per row of the batch (every row has its own S = subset ∩ presence). The guide therefore SAMPLES
``"w_s"`` from the prior N(0, I) in rows where s is outside S, so the private latent of a modality
the encoder did not see carries no information from the other modalities.

The contract extends :class:`~pyro_mmvae.guides.base.MultimodalGuide`:

- ``posterior(batch, subset)`` → q(z′ | x_S), batch ``(B,)``, event ``(D,)``;
- ``private_posterior(batch, subset, z)`` → ``{name: distribution}`` with batch ``z.shape[:-1]``
  and event ``(D̃,)``: q(z̃_s | z′ = z, x_S) in rows with s ∈ S, N(0, I) elsewhere. Summing
  ``log_prob`` over names gives log q(z̃_S | z′, x_S) + log p(z̃_{\\S} | z′) at any (z, z̃), e.g.
  at a draw from q(· | x_M), as the masked bound needs; ``z`` may carry extra leading (particle)
  dimensions ``(L, B, D)``;
- ``forward(batch, subset, beta)`` samples ``"z"`` and then every ``"w_<s>"`` inside
  ``pyro.plate("data")`` and ``poutine.scale(beta)``.

Permutation symmetry: q(z′ | x_S) is invariant to the modality order; the private heads are
equivariant — permuting the modalities permutes the private posteriors with them. The guides are
Examples 3-5 of "Learning multi-modal generative models with permutation-invariant encoders and
tighter variational objectives" (the paper below):

- :class:`EquivariantPoEGuide` (Example 3): PoE over shared heads; q(z̃_s | x_s) from private heads.
- :class:`EquivariantSumPoolingGuide` (Example 4): SumPooling for z′;
  ``[μ̃_s, ℓ̃_s] = ρ(Σ_{t∈S} χ0(h_t) + χ1(z′) + χ2(h_s))``.
- :class:`EquivariantSelfAttentionGuide` (Example 5): SelfAttention for z′;
  ``g⁰_s = χ1(h_s) + χ2(z′)``, masked blocks, ``[μ̃_s, ℓ̃_s] = Dense(LN(g^L_s))``.

Scales are ``σ = min_scale + exp(ℓ)`` for the PoE's private heads and ``σ = min_scale + exp_linear(ℓ)``
(the same below ℓ = 5, linear above; see :func:`~pyro_mmvae.nn.set_aggregators.exp_linear`) for the set
guides, whose networks sum over the set; the PoE's shared experts use ``v = var_floor + exp(2ℓ)``, as in
:class:`~pyro_mmvae.guides.aggregation.PoEGuide`. Default sizes follow the paper's linear private-latent
setting (PoE heads ``D_s → 512 → 512 → ·``; set encoders ``D_s → 128 → 128 → 128`` and set networks of
width 128).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_mmvae.data.batch import MultimodalBatch, Subset
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.distributions.experts import VAR_FLOOR
from pyro_mmvae.nn.networks import GaussianHead
from pyro_mmvae.nn.set_aggregators import (
    EquivariantSelfAttention,
    EquivariantSumPooling,
    SelfAttentionPooling,
    SetGaussianHead,
    SumPooling,
)
from pyro_mmvae.nn.shared_encodings import cached_for
from pyro_mmvae.sites import DATA_PLATE, private_site

from .aggregation import (
    AggregationGuide,
    ModalityEncoders,
    check_poe_options,
    distribution_from_output,
    gaussian_output_dim,
    init_networks,
    poe_of_features,
)


@dataclass
class Encoded:
    """What one pass of the unimodal encoders produced for a batch and subset.

    ``mask``: bool ``(B, M)``; ``features``: named tensors ``(B, M, ·)`` (guide-specific).
    """

    mask: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class PrivateLatentGuide(AggregationGuide):
    """Base class: subclasses build ``self.encoders`` and implement :meth:`encode`, :meth:`shared_from` and
    :meth:`private_params_from`; ``private_head`` maps ``(*, 2D̃)`` to the private ``(loc, scale)``."""

    def __init__(self, modalities: Iterable[Modality], latent_dim: int, private_dim: int, private_head: nn.Module):
        super().__init__(modalities, latent_dim)
        self.private_dim = int(private_dim)
        if self.private_dim < 1:
            raise ValueError(f"private_dim must be >= 1, got {private_dim}")
        self.private_gaussian = private_head

    @property
    def private_sites(self) -> dict[str, str]:
        """``name -> "w_<name>"``."""
        return {n: private_site(n) for n in self.names}

    # ------------------------------------------------------------------ to implement
    def encode(self, batch: MultimodalBatch, subset: Subset = None) -> Encoded:
        raise NotImplementedError

    def shared_from(self, enc: Encoded):
        """q(z′ | x_S): batch ``(B,)``, event ``(D,)``."""
        raise NotImplementedError

    def private_params_from(self, enc: Encoded, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z̃_s | z′ = z, x_S) for every s: each ``(*z.shape[:-1], M, D̃)``.

        Entries of modalities outside a row's S may hold anything finite (they are replaced by the prior).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ the contract
    def _check_z(self, z: torch.Tensor, batch_size: int) -> None:
        if z.dim() < 2 or z.shape[-1] != self.latent_dim or z.shape[-2] != batch_size:
            raise ValueError(f"z must have shape (*particles, {batch_size}, {self.latent_dim}), got {tuple(z.shape)}")

    def private_from(self, enc: Encoded, z: torch.Tensor) -> dict[str, dist.TorchDistribution]:
        """``{name: q(z̃_name | z′, x_S) where name ∈ S, else N(0, I)}``, batch ``z.shape[:-1]``, event ``(D̃,)``."""
        self._check_z(z, enc.mask.shape[0])
        loc, scale = self.private_params_from(enc, z)
        out = {}
        for i, name in enumerate(self.names):
            keep = enc.mask[:, i].unsqueeze(-1)  # (B, 1), broadcasts against (*particles, B, D̃)
            loc_i, scale_i = loc[..., i, :], scale[..., i, :]
            out[name] = dist.Normal(
                torch.where(keep, loc_i, torch.zeros_like(loc_i)), torch.where(keep, scale_i, torch.ones_like(scale_i))
            ).to_event(1)
        return out

    def posterior(self, batch: MultimodalBatch, subset: Subset = None):
        return self.shared_from(self.encode(batch, subset))

    def _encode_shared(self, batch: MultimodalBatch, subset: Subset):
        enc = self.encode(batch, subset)
        return enc, self.shared_from(enc)

    def private_posterior(
        self, batch: MultimodalBatch, subset: Subset, z: torch.Tensor
    ) -> dict[str, dist.TorchDistribution]:
        """q(z̃_s | z′ = z, x_S) for s ∈ S and N(0, I) for s ∉ S, per row; see the module docstring."""
        return self.private_from(self.encode(batch, subset), z)

    def forward(self, batch: MultimodalBatch, subset: Subset = None, beta: float = 1.0):
        enc, q_shared = cached_for(self, "shared posterior", batch, subset, lambda: self._encode_shared(batch, subset))
        with pyro.plate(DATA_PLATE, batch.batch_size), poutine.scale(scale=beta):
            z = pyro.sample(self.latent_site, q_shared)
            for name, q in self.private_from(enc, z).items():
                pyro.sample(private_site(name), q)
        return z


class EquivariantPoEGuide(PrivateLatentGuide):
    """Example 3: q(z′ | x_S) = PoE of shared experts with the prior expert; q(z̃_s | x_s) from private heads.

    Args:
        modalities: the modalities; latent_dim: D (shared); private_dim: D̃.
        hidden: hidden sizes of the default shared and private heads ``D_s → hidden → 2D`` / ``2D̃`` (ReLU).
        shared_encoders, private_encoders: optional name → module giving ``[μ′_s, ℓ′_s]`` ``(B, 2D)``
            and ``[μ̃_s, ℓ̃_s]`` ``(B, 2D̃)``.
        poe_mean, var_floor: as in :class:`~pyro_mmvae.guides.aggregation.PoEGuide`.
        min_scale: σ̃ = min_scale + exp(ℓ̃).
        arch, init: as in :class:`~pyro_mmvae.guides.aggregation.PoEGuide`.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        private_dim: int,
        hidden: Sequence[int] = (512, 512),
        shared_encoders: Mapping[str, nn.Module] | None = None,
        private_encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        poe_mean: str = "correct",
        var_floor: float = VAR_FLOOR,
        min_scale: float = 1e-3,
        init: str = "lecun",
    ):
        super().__init__(modalities, latent_dim, private_dim, GaussianHead(min_scale, positive="exp"))
        self.poe_mean, self.var_floor = check_poe_options(poe_mean, var_floor)
        mods = list(self.modalities.values())
        self.encoders = ModalityEncoders(mods, 2 * self.latent_dim, hidden, arch, shared_encoders, 0, init)
        self.private_encoders = ModalityEncoders(mods, 2 * self.private_dim, hidden, arch, private_encoders, 0, init)

    def encode(self, batch: MultimodalBatch, subset: Subset = None) -> Encoded:
        mask = self.subset_mask(batch, subset)
        return Encoded(mask, {"shared": self.encoders(batch, mask), "private": self.private_encoders(batch, mask)})

    def shared_from(self, enc: Encoded):
        return poe_of_features(enc.features["shared"], enc.mask, self.var_floor, self.poe_mean)

    def private_params_from(self, enc: Encoded, z: torch.Tensor):
        loc, scale = self.private_gaussian(enc.features["private"])  # (B, M, D̃): independent of z′
        shape = (*z.shape[:-1], *loc.shape[-2:])
        return loc.expand(shape), scale.expand(shape)


class _SetPrivateGuide(PrivateLatentGuide):
    """Shared unimodal features h (B, M, E) feed an invariant network (z′) and an equivariant one (z̃)."""

    def __init__(self, modalities, latent_dim, private_dim, feature_dim, hidden, encoders, arch, min_scale, init):
        super().__init__(modalities, latent_dim, private_dim, SetGaussianHead(min_scale))
        self.feature_dim, self.min_scale, self.init = int(feature_dim), float(min_scale), init
        self.encoders = ModalityEncoders(self.modalities.values(), self.feature_dim, hidden, arch, encoders, 0, init)

    def _finish(self, shared: nn.Module, private: nn.Module) -> None:
        self.shared_net, self.private_net = init_networks(self.init, shared, private)

    def encode(self, batch: MultimodalBatch, subset: Subset = None) -> Encoded:
        mask = self.subset_mask(batch, subset)
        return Encoded(mask, {"h": self.encoders(batch, mask)})

    def shared_from(self, enc: Encoded):
        out = self.shared_net(enc.features["h"], enc.mask)
        return distribution_from_output(out, self.latent_dim, None, self.min_scale)

    def private_params_from(self, enc: Encoded, z: torch.Tensor):
        return self.private_gaussian(self.private_net(enc.features["h"], enc.mask, z))


class EquivariantSumPoolingGuide(_SetPrivateGuide):
    """Example 4: SumPooling q(z′ | x_S); ``[μ̃_s, ℓ̃_s] = ρ(Σ_{t∈S} χ0(h_t) + χ1(z′) + χ2(h_s))``.

    Args:
        modalities, latent_dim (D), private_dim (D̃), arch, init: as in :class:`EquivariantPoEGuide`.
        feature_dim: E; hidden: hidden sizes of the default unimodal encoders ``D_s → hidden → E``.
        width: H of χ, χ0, χ1, χ2 and both ρ; pooled_dim: P; num_hidden: their hidden layers.
        encoders: optional name → module ``(B, *shape) → (B, E)``; min_scale: σ = min_scale + exp_linear(ℓ).
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        private_dim: int,
        feature_dim: int = 128,
        hidden: Sequence[int] = (128, 128),
        width: int = 128,
        pooled_dim: int = 128,
        num_hidden: int = 2,
        min_scale: float = 1e-3,
        encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        init: str = "lecun",
    ):
        super().__init__(modalities, latent_dim, private_dim, feature_dim, hidden, encoders, arch, min_scale, init)
        e, d = self.feature_dim, self.latent_dim
        self._finish(
            SumPooling(e, gaussian_output_dim(d, None), width, pooled_dim, num_hidden),
            EquivariantSumPooling(e, d, 2 * self.private_dim, width, pooled_dim, num_hidden),
        )


class EquivariantSelfAttentionGuide(_SetPrivateGuide):
    """Example 5: SelfAttention q(z′ | x_S); ``g⁰_s = χ1(h_s) + χ2(z′)``, masked blocks, ``Dense(LN(g^L_s))``.

    Args as in :class:`EquivariantSumPoolingGuide`, plus ``dim`` (attention width), ``num_layers``
    (blocks in each of the two transformers) and ``num_heads`` (4).
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        private_dim: int,
        feature_dim: int = 128,
        hidden: Sequence[int] = (128, 128),
        width: int = 128,
        dim: int = 128,
        num_layers: int = 1,
        num_heads: int = 4,
        num_hidden: int = 2,
        min_scale: float = 1e-3,
        encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        init: str = "lecun",
    ):
        super().__init__(modalities, latent_dim, private_dim, feature_dim, hidden, encoders, arch, min_scale, init)
        e, d = self.feature_dim, self.latent_dim
        self._finish(
            SelfAttentionPooling(e, gaussian_output_dim(d, None), width, dim, num_layers, num_heads, num_hidden),
            EquivariantSelfAttention(e, d, 2 * self.private_dim, width, dim, num_layers, num_heads),
        )
