"""``UnimodalGaussianGuide``: one Gaussian expert q_m(z | x_m) per modality.

``posterior(batch, subset)`` answers for a single modality (``subset="m"`` or ``{"m"}``); for
several modalities combine the experts with a product/mixture guide or sample the subset
posterior with :class:`pyro_mmvae.infer.SubsetPosterior`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyro.distributions as dist
from torch import nn

from pyro_mmvae.data.batch import MultimodalBatch, Subset
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.nn.networks import GaussianHead, default_encoder

from .base import MultimodalGuide


def single_modality(subset: Subset, names: list[str]) -> str:
    """The one modality named by ``subset`` (a name or a one-element collection)."""
    if isinstance(subset, str):
        subset = [subset]
    if subset is None or isinstance(subset, Mapping) or len(list(subset)) != 1:
        raise ValueError(
            f"this guide answers q(z | x_m) for ONE modality; got subset={subset!r}. "
            "Use a product/mixture guide or pyro_mmvae.infer.SubsetPosterior for several modalities."
        )
    (name,) = list(subset)
    if name not in names:
        raise KeyError(f"unknown modality {name!r}; this guide has {names}")
    return name


class UnimodalGaussianGuide(MultimodalGuide):
    """Gaussian experts q_m(z | x_m) = N(μ_m(x_m), diag σ_m(x_m)²).

    Args:
        modalities: the modalities.
        latent_dim: D.
        encoders: optional name → module ``(B, *shape) → (B, 2D)``.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        encoders: Mapping[str, nn.Module] | None = None,
        hidden=(512, 512),
        min_scale: float = 1e-3,
    ):
        super().__init__(modalities, latent_dim)
        self.encoders = self.per_modality(lambda m: default_encoder(m, 2 * self.latent_dim, hidden), encoders)
        self.gaussian = GaussianHead(min_scale)

    def expert(self, batch: MultimodalBatch, name: str):
        """q_name(z | x_name): batch ``(B,)``, event ``(D,)``."""
        loc, scale = self.gaussian(self.encoders[name](batch.data[name]))
        return dist.Normal(loc, scale).to_event(1)

    def posterior(self, batch: MultimodalBatch, subset: Subset = None):
        return self.expert(batch, single_modality(subset, self.names))
