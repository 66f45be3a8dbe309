"""``JointGuide``: q(z | X) from per-modality heads merged by an MLP (JNF stage 1, JMVAE-style).

The joint encoder of "Bridging the inference gap in Multimodal Variational Autoencoders" (the
paper below).

Each modality has a head ``x_m (B, *shape) → h_m (B, H)``; the heads are concatenated in modality
order, rows where a modality is missing (or outside the subset) contribute zeros, and an MLP maps
``(B, M·H) → (B, 2D)`` to the mean and scale of a diagonal Gaussian.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyro.distributions as dist
import torch
from torch import nn

from pyro_mmvae.data.batch import MultimodalBatch, Subset
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.nn.networks import MLP, GaussianHead, default_encoder

from .base import MultimodalGuide


class JointGuide(MultimodalGuide):
    """Joint encoder q(z | X) = N(μ(X), diag σ(X)²).

    Args:
        modalities: the model's modalities (order fixes the concatenation order).
        latent_dim: D.
        head_dim: H, the feature size of each modality head.
        merge_hidden: hidden sizes of the merging MLP (paper: two layers of 512).
        heads: optional name → module ``(B, *shape) → (B, head_dim)``.
        min_scale: lower bound of σ.
        hidden, arch: hidden sizes and kind (``"mlp"``/``"conv"``) of the default heads.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        head_dim: int = 256,
        merge_hidden=(512, 512),
        heads: Mapping[str, nn.Module] | None = None,
        min_scale: float = 1e-3,
        hidden=(512, 512),
        arch: str = "mlp",
    ):
        super().__init__(modalities, latent_dim)
        self.heads = self.per_modality(lambda m: default_encoder(m, head_dim, hidden, arch), heads, "heads")
        self.merge = MLP(head_dim * len(self.modalities), merge_hidden, 2 * self.latent_dim)
        self.gaussian = GaussianHead(min_scale)

    def posterior(self, batch: MultimodalBatch, subset: Subset = None):
        masks = batch.subset_mask(subset)
        heads = self.heads  # read once: each access re-registers every head's parameters with pyro.module
        feats = []
        for name in self.names:
            if name not in batch.data:
                raise KeyError(f"modality {name!r} is missing from the batch (mark it missing with present=False)")
            h = heads[name](batch.data[name])
            feats.append(torch.where(masks[name].unsqueeze(-1), h, torch.zeros_like(h)))
        loc, scale = self.gaussian(self.merge(torch.cat(feats, dim=-1)))
        return dist.Normal(loc, scale).to_event(1)
