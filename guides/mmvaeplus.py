"""MMVAE+'s guide: a mixture of experts over the shared latent, one private posterior per modality.

MMVAE+ ("MMVAE+: Enhancing the generative quality of multimodal VAEs without compromises", Palumbo
et al. 2023) encodes each modality s with two networks (the authors' PolyMNIST encoder has two
ResNets): shared features ``[μ_s, ℓ_s]`` (2D) and private features ``[μ̃_s, ℓ̃_s]`` (2D̃). For the
model of :class:`~pyro_mmvae.models.mmvaeplus.MMVAEPlus` (shared z at ``"z"``, private w_s at
``"w_<s>"``) the guide is, per row with S = subset ∩ presence,

    q(z, w | x_S) = [Σ_{s∈S} (1/|S|) q_s(z | x_s)] · Π_{s∈S} q_s(w_s | x_s) · Π_{s∉S} p(w_s)

with factorised Laplace (or Gaussian) experts and p(w_s) = family(0, 1), the model's prior. The
private posterior of a modality outside S is the prior: that is what the authors' code decodes an
unobserved modality with at test time (``self_and_cross_modal_generation_forward`` draws w from
``pw_params``, the fixed prior). The training objective replaces those draws by draws from the
auxiliary priors r_s (:class:`~pyro_mmvae.infer.mmvaeplus.MMVAEPlusELBO`).

The contract is :class:`~pyro_mmvae.guides.equivariant.PrivateLatentGuide`'s: ``posterior(batch, subset)``
→ the mixture over z (batch ``(B,)``, event ``(D,)``), ``private_posterior(batch, subset, z)`` →
``{name: distribution}`` (batch ``z.shape[:-1]``, event ``(D̃,)``; q_s(w_s | x_s) does not depend on
z), ``forward`` samples ``"z"`` then every ``"w_<s>"``. Inside ``with guide.reuse_encodings():``
(:class:`~pyro_mmvae.guides.laplace_moe.ReusedEncodings`) the encoders run once per batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyro_mmvae.data.batch import MultimodalBatch, Subset
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.distributions.laplace import check_family, diagonal, mixture_of_experts

from .aggregation import ModalityEncoders
from .equivariant import Encoded, PrivateLatentGuide
from .laplace_moe import ExpertScale, ReusedEncodings

MMVAEPLUS_ETA = 1e-20
"""The authors' ``Constants.eta`` in MMVAE+'s code (srl-ethz/mmvaeplus ``src/utils.py``)."""


class MMVAEPlusGuide(ReusedEncodings, PrivateLatentGuide):
    """MoE over shared experts q_s(z | x_s); private experts q_s(w_s | x_s) for s ∈ S, p(w_s) outside S.

    Args:
        modalities: the modalities; latent_dim: D (shared); private_dim: D̃.
        hidden: hidden sizes of the default shared and private encoders ``D_s → hidden → 2D`` / ``2D̃``.
        shared_encoders, private_encoders: optional name → module giving ``[μ_s, ℓ_s]`` ``(B, 2D)`` and
            ``[μ̃_s, ℓ̃_s]`` ``(B, 2D̃)``.
        arch: ``"mlp"`` or ``"conv"`` for the default encoders.
        family: ``"laplace"`` (the authors' default) or ``"normal"``.
        scale, min_scale: the positive map of :class:`~pyro_mmvae.guides.laplace_moe.ExpertScale`
            (default: the authors' ``softmax(ℓ) · D + 1e-20``).
        init: ``"torch"`` (default) or ``"lecun"``.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        private_dim: int,
        hidden: Sequence[int] = (256, 256),
        shared_encoders: Mapping[str, nn.Module] | None = None,
        private_encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        family: str = "laplace",
        scale: str = "softmax",
        min_scale: float = MMVAEPLUS_ETA,
        init: str = "torch",
    ):
        super().__init__(modalities, latent_dim, private_dim, ExpertScale(scale, min_scale))
        self.family = check_family(family)
        self.shared_scale = ExpertScale(scale, min_scale)
        mods = list(self.modalities.values())
        self.encoders = ModalityEncoders(mods, 2 * self.latent_dim, hidden, arch, shared_encoders, 0, init)
        self.private_encoders = ModalityEncoders(mods, 2 * self.private_dim, hidden, arch, private_encoders, 0, init)

    def encode(self, batch: MultimodalBatch, subset: Subset = None) -> Encoded:
        mask = self.subset_mask(batch, subset)
        shared, private = self.encoded(self.encoders, batch, mask), self.encoded(self.private_encoders, batch, mask)
        return Encoded(mask, {"shared": shared, "private": private})

    def shared_from(self, enc: Encoded):
        loc, scale = self.shared_scale(enc.features["shared"])
        return mixture_of_experts(self.family, loc, scale, enc.mask)

    def private_params_from(self, enc: Encoded, z: torch.Tensor):
        loc, scale = self.private_gaussian(enc.features["private"])  # (B, M, D̃), independent of z
        shape = (*z.shape[:-1], *loc.shape[-2:])
        return loc.expand(shape), scale.expand(shape)

    def private_from(self, enc: Encoded, z: torch.Tensor) -> dict[str, dist.TorchDistribution]:
        """``{name: q(w_name | x_name) where name ∈ S, else p(w_name) = family(0, 1)}``, batch ``z.shape[:-1]``."""
        self._check_z(z, enc.mask.shape[0])
        loc, scale = self.private_params_from(enc, z)
        out = {}
        for i, name in enumerate(self.names):
            keep = enc.mask[:, i].unsqueeze(-1)  # (B, 1), broadcasts against (*particles, B, D̃)
            loc_i, scale_i = loc[..., i, :], scale[..., i, :]
            out[name] = diagonal(
                self.family,
                torch.where(keep, loc_i, torch.zeros_like(loc_i)),
                torch.where(keep, scale_i, torch.ones_like(scale_i)),
            )
        return out
