"""``MultimodalVAE``: p(z) Π_m p(x_m | z) as a Pyro program.

Site-name convention (:mod:`pyro_mmvae.sites`; every ELBO, metric and sampler in the library relies on it):

- ``pyro.plate("data", B)`` around everything per data point (plate dim −1);
- the shared latent is the site ``"z"`` with event shape ``(D,)``, scaled by β with
  ``poutine.scale`` (the guide scales its ``"z"`` site by the same β);
- modality ``m`` is the observed site ``"x_m"``, masked by the batch's presence mask, so a missing
  modality contributes exactly zero.

Subclasses with more latent sites override :meth:`MultimodalVAE.sample_latents` and
:meth:`MultimodalVAE.decoder_input` (see :class:`~pyro_mmvae.models.private.PrivateLatentVAE`).

Any Pyro function ``model(batch, beta=1.0)`` that follows the convention trains with the same
ELBOs (see ``tutorials/01_write_a_multimodal_vae.ipynb``).

Reconstruction weights are a training device, not part of the generative model: they live on the
:class:`~pyro_mmvae.data.Modality` and are applied by the ELBOs (``model.reconstruction_weights``),
so log-likelihood evaluation always sees the unweighted model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from ..data.batch import MultimodalBatch
from ..data.modality import Modality
from ..distributions.likelihoods import Likelihood
from ..distributions.priors import make_prior
from ..nn.networks import default_decoder
from ..nn.per_modality import check_latent_dim, index_modalities, per_modality_modules
from ..nn.shared_encodings import RegisterModulesOnce
from ..sites import DATA_PLATE, LATENT_SITE
from .base import NamedModalities, check_batch_modalities, observe_modalities


class MultimodalVAE(NamedModalities, RegisterModulesOnce, PyroModule):
    """Generative model with one shared latent ``z ∈ R^D`` and a decoder per modality.

    Args:
        modalities: the modalities, each with its likelihood family and reconstruction weight.
        latent_dim: D.
        prior: ``"normal"`` (N(0, I)), ``"gmm"`` (learned K-component Gaussian mixture) or an
            ``nn.Module`` whose ``forward()`` returns a distribution with event shape ``(D,)``.
        num_components: K for ``prior="gmm"``.
        decoders: optional name → module mapping ``(*lead, D)`` to ``(*lead, *param_shape)``;
            defaults come from :func:`~pyro_mmvae.nn.networks.default_decoder`.
        hidden: hidden sizes of the default MLP decoders.
        arch: ``"mlp"`` or ``"conv"`` (square images) for the default decoders.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        prior: str | nn.Module = "normal",
        num_components: int = 5,
        decoders: Mapping[str, nn.Module] | None = None,
        hidden=(512, 512),
        arch: str = "mlp",
    ):
        super().__init__()
        self.modalities = index_modalities(modalities, "a MultimodalVAE")
        self.latent_dim = check_latent_dim(latent_dim)
        self.prior = prior if isinstance(prior, nn.Module) else make_prior(self.latent_dim, prior, num_components)
        self.likelihoods = per_modality_modules(self.modalities, Likelihood)

        def decoder(m: Modality) -> nn.Module:
            return default_decoder(m, self.latent_dim, self.likelihoods[m.name].param_shape, hidden, arch)

        self.decoders = per_modality_modules(self.modalities, decoder, decoders, "decoders", owner="model")

    # ------------------------------------------------------------------ distributions
    def prior_dist(self):
        """p(z): batch shape ``()``, event shape ``(D,)``."""
        return self.prior()

    def likelihood_dist(self, name: str, z: torch.Tensor):
        """p(x_name | z) for ``z`` of shape ``(*lead, D)``: batch shape ``lead``."""
        if name not in self.modalities:
            raise KeyError(f"unknown modality {name!r}; this model has {self.names}")
        return self.likelihoods[name](self.decoders[name](z))

    def reconstruct(self, z: torch.Tensor, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Decoded means ``name -> (*lead, *shape)`` at ``z (*lead, D)``."""
        names = self.names if names is None else list(names)
        decoders, likelihoods = self.decoders, self.likelihoods
        return {n: likelihoods[n].mean(decoders[n](z)) for n in names}

    @torch.no_grad()
    def sample_prior(self, num_samples: int) -> torch.Tensor:
        """``(num_samples, D)`` draws from p(z)."""
        return self.prior_dist().sample((num_samples,))

    # ------------------------------------------------------------------ the Pyro program
    def sample_latents(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Sample the latent sites (inside the data plate and β-scale): ``{"z": (*particles, B, D)}``."""
        return {LATENT_SITE: pyro.sample(LATENT_SITE, self.prior_dist().expand([batch_size]))}

    def decoder_input(self, name: str, latents: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What modality ``name``'s decoder reads from the sampled ``latents``: z ``(*lead, D)``."""
        return latents[LATENT_SITE]

    def forward(self, batch: MultimodalBatch, beta: float = 1.0):
        """Run the generative program, observing every present modality of ``batch``; returns z."""
        check_batch_modalities(batch, self.modalities)
        # Read each ModuleDict once: every attribute access of a plain nn.Module on a PyroModule re-runs
        # pyro.module over ALL its parameters, which made a step cost O(M²) in the number of modalities.
        decoders, likelihoods = self.decoders, self.likelihoods
        with pyro.plate(DATA_PLATE, batch.batch_size):
            with poutine.scale(scale=beta):
                latents = self.sample_latents(batch.batch_size)
            observe_modalities(
                batch, self.names, lambda name: likelihoods[name](decoders[name](self.decoder_input(name, latents)))
            )
        return latents[LATENT_SITE]
