"""``PrivateLatentVAE``: shared and private latents, p(z′) Π_s p(z̃_s | z′) p(x_s | z′, z̃_s).

The generative model of §3.2 / Appendix E of "Learning multi-modal generative models with
permutation-invariant encoders and tighter variational objectives". Site names extend the
:class:`~pyro_mmvae.models.multimodal_vae.MultimodalVAE` convention:

- ``pyro.plate("data", B)`` around everything per data point;
- the shared latent z′ is the site ``"z"`` (event ``(D,)``), its prior ``p(z′)`` is the usual
  ``"normal"``/``"gmm"``/module prior;
- modality s has a private latent z̃_s at the site ``"w_<s>"`` (event ``(D̃,)``) with
  ``p(z̃_s | z′) = N(0, I)`` — sampled for EVERY modality of the model, present or not;
- modality s is observed at ``"x_<s>"``, masked by presence, with decoder ``p(x_s | z′, z̃_s)``
  reading the concatenation ``[z′, z̃_s]``;
- every latent site sits under ``poutine.scale(β)``.

Guides for this model sample ``"z"`` and every ``"w_<s>"`` (see ``guides/equivariant.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..data.modality import Modality
from ..distributions.likelihoods import Likelihood
from ..nn.networks import default_decoder
from ..nn.per_modality import check_latent_dim
from ..sites import LATENT_SITE, private_site
from .multimodal_vae import MultimodalVAE

__all__ = ["PrivateLatentVAE", "private_site"]  # private_site: re-exported from pyro_mmvae.sites


class PrivateLatentVAE(MultimodalVAE):
    """Multimodal VAE with a shared latent z′ ∈ R^D and a private latent z̃_s ∈ R^D̃ per modality.

    Args:
        modalities: the modalities.
        latent_dim: D, the size of the shared latent z′ (site ``"z"``).
        private_dim: D̃, the size of every private latent z̃_s (sites ``"w_<s>"``).
        prior, num_components: the prior of z′, as in :class:`MultimodalVAE`.
        decoders: optional name → module ``(*lead, D + D̃) → (*lead, *param_shape)`` reading
            ``[z′, z̃_s]``.
        hidden, arch: of the default decoders.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        private_dim: int,
        prior: str | nn.Module = "normal",
        num_components: int = 5,
        decoders: Mapping[str, nn.Module] | None = None,
        hidden=(512, 512),
        arch: str = "mlp",
    ):
        modalities = list(modalities)
        latent_dim, private_dim = check_latent_dim(latent_dim), check_latent_dim(private_dim, "private_dim")
        decoders = dict(decoders or {})
        input_dim = int(latent_dim) + int(private_dim)
        # The parent builds default decoders from the SHARED size; build ours from D + D̃ first.
        for m in modalities:
            if m.name not in decoders:
                decoders[m.name] = default_decoder(m, input_dim, Likelihood(m).param_shape, hidden, arch)
        super().__init__(modalities, latent_dim, prior, num_components, decoders, hidden, arch)
        self.private_dim = int(private_dim)

    # ------------------------------------------------------------------ distributions
    def private_prior_dist(self, z: torch.Tensor):
        """p(z̃_s | z′) = N(0, I_D̃) for ``z (*lead, D)``: batch ``lead``, event ``(D̃,)``."""
        loc = z.new_zeros(*z.shape[:-1], self.private_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def decode(self, name: str, z: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """Likelihood parameters of modality ``name`` at ``z (*lead, D)``, ``w (*lead, D̃)``."""
        return self.decoders[name](self._decoder_input(name, z, w))

    def _decoder_input(self, name: str, z: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """``[z′, z̃_name]`` broadcast to common leading dims: ``(*lead, D + D̃)``."""
        if name not in self.modalities:
            raise KeyError(f"unknown modality {name!r}; this model has {self.names}")
        if w is None:
            raise ValueError(
                f"PrivateLatentVAE decodes modality {name!r} from the shared latent AND its private latent "
                f"(site {private_site(name)!r}); pass w"
            )
        if z.shape[-1] != self.latent_dim or w.shape[-1] != self.private_dim:
            raise ValueError(
                f"modality {name!r}: expected z (..., {self.latent_dim}) and w (..., {self.private_dim}), "
                f"got {tuple(z.shape)} and {tuple(w.shape)}"
            )
        lead = torch.broadcast_shapes(z.shape[:-1], w.shape[:-1])
        return torch.cat([z.expand(*lead, z.shape[-1]), w.expand(*lead, w.shape[-1])], dim=-1)

    def likelihood_dist(self, name: str, z: torch.Tensor, w: torch.Tensor | None = None):
        """p(x_name | z′, z̃_name) for ``z (*lead, D)``, ``w (*lead, D̃)``: batch shape ``lead``."""
        return self.likelihoods[name](self.decode(name, z, w))

    def reconstruct(self, z: torch.Tensor, w: Mapping[str, torch.Tensor] | None = None, names=None):
        """Decoded means ``name -> (*lead, *shape)`` at ``z (*lead, D)`` and private ``w[name] (*lead, D̃)``."""
        names = self.names if names is None else list(names)
        if w is None:
            raise ValueError("PrivateLatentVAE.reconstruct needs the private latents w = {name: (*lead, D̃)}")
        missing = [n for n in names if n not in w]
        if missing:
            raise KeyError(f"private latents missing for modalities {missing}")
        decoders, likelihoods = self.decoders, self.likelihoods
        return {n: likelihoods[n].mean(decoders[n](self._decoder_input(n, z, w[n]))) for n in names}

    # ------------------------------------------------------------------ the Pyro program
    # forward (inherited) runs these inside the data plate; it returns z′, the private latents are sites "w_<s>".
    def sample_latents(self, batch_size: int) -> dict[str, torch.Tensor]:
        """``{"z": (*particles, B, D), "w_<s>": (*particles, B, D̃) for every modality s}``, present or not."""
        latents = super().sample_latents(batch_size)
        z = latents[LATENT_SITE]
        for name in self.names:
            latents[private_site(name)] = pyro.sample(private_site(name), self.private_prior_dist(z))
        return latents

    def decoder_input(self, name: str, latents: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[z′, z̃_name]`` from the sampled ``latents``: ``(*lead, D + D̃)``."""
        return self._decoder_input(name, latents[LATENT_SITE], latents[private_site(name)])
