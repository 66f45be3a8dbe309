"""MMVAE's guide: a mixture of Laplace (or Gaussian) unimodal experts, with the authors' scale head.

MMVAE ("Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative Models", Shi et
al. 2019) encodes each modality into a factorised Laplace expert q_s(z | x_s) = Π_d Laplace(μ_sd, b_sd)
and mixes them uniformly over the observed subset S:

    q(z | x_S) = Σ_{s∈S} (1/|S|) q_s(z | x_s),        S = ∅ → Laplace(0, 1)

Per row, S = subset ∩ presence; the encoders and the stacking follow
:class:`~pyro_mmvae.guides.aggregation.MoEGuide` (inputs zeroed outside S, modality axis second to
last). ``posterior`` returns a :class:`~pyro_mmvae.distributions.laplace.DiagLaplaceMixture`
(pathwise gradients through the component choice), batch ``(B,)``, event ``(D,)``.

:class:`ExpertScale` turns an encoder's ``[μ, ℓ]`` output ``(*, 2D)`` into ``(loc, scale)``:

- ``"softmax"`` — the authors' ``b = softmax(ℓ) · D + min_scale`` (scales of one expert sum to D;
  MMVAE's ``Constants.eta`` = 1e-6, MMVAE+'s = 1e-20);
- ``"exp"`` — ``min_scale + exp(ℓ)`` (the library's :class:`~pyro_mmvae.guides.MoEGuide`);
- ``"softplus"`` — ``min_scale + softplus(ℓ)``.

:class:`ReusedEncodings` lets an objective that traces the guide many times on one batch (MMVAE's
and MMVAE+'s draw from every expert, then evaluate the mixture: 2M guide calls) run each encoder once:
inside ``with guide.reuse_encodings():`` the unimodal features are computed on the batch's present
rows and reused for every subset. An expert's output depends on its own modality only and rows
outside the subset are discarded (``torch.where`` / switched-off components), so the distributions
are the same as without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_mmvae.data.batch import MultimodalBatch, Subset
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.distributions.experts import DiagNormalMixture
from pyro_mmvae.distributions.laplace import check_family, mixture_of_experts

from .aggregation import AggregationGuide, ModalityEncoders

SCALES = ("softmax", "exp", "softplus")
MMVAE_ETA = 1e-6
"""The authors' ``Constants.eta`` in MMVAE's code (iffsid/mmvae ``src/utils.py``)."""


class ExpertScale(nn.Module):
    """``(*, 2D)`` features ``[μ, ℓ]`` → ``(loc (*, D), scale (*, D))`` with the chosen positive map."""

    def __init__(self, kind: str = "softmax", min_scale: float = MMVAE_ETA):
        super().__init__()
        if kind not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {kind!r}")
        if not min_scale >= 0:
            raise ValueError(f"min_scale must be >= 0, got {min_scale}")
        self.kind, self.min_scale = kind, float(min_scale)

    def forward(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = out.chunk(2, dim=-1)
        if self.kind == "softmax":
            positive = torch.softmax(raw, -1) * raw.shape[-1]
        elif self.kind == "exp":
            positive = raw.exp()
        else:
            positive = softplus(raw)
        return loc, self.min_scale + positive


class ReusedEncodings:
    """Mixin for guides whose unimodal experts depend on their own modality only (see the module docstring)."""

    _encoding_cache: dict | None = None

    @contextmanager
    def reuse_encodings(self):
        """Inside: each :class:`~pyro_mmvae.guides.aggregation.ModalityEncoders` runs once per batch object."""
        outer = self._encoding_cache
        self._encoding_cache = {} if outer is None else outer
        try:
            yield self
        finally:
            self._encoding_cache = outer

    def encoded(self, encoders: ModalityEncoders, batch: MultimodalBatch, mask: torch.Tensor) -> torch.Tensor:
        """``encoders(batch, mask)``; inside :meth:`reuse_encodings`, features of the present rows, computed once.

        Entries outside ``mask`` then hold the features of the observed input instead of a zero input;
        callers discard them.
        """
        cache = self._encoding_cache
        if cache is None:
            return encoders(batch, mask)
        key = (id(encoders), id(batch))  # the batch object lives as long as the cache scope
        if key not in cache:
            cache[key] = encoders(batch, encoders.stacked_mask(batch, None))
        return cache[key]


class LaplaceMoEGuide(ReusedEncodings, AggregationGuide):
    """Mixture of experts Σ_{s∈S} (1/|S|) family(μ_s, b_s) over per-row subsets; S = ∅ → family(0, 1).

    Args:
        modalities: the modalities (the order only fixes the stacking order).
        latent_dim: D.
        hidden: hidden sizes of the default unimodal encoders ``D_s → hidden → 2D`` (ReLU).
        encoders: optional name → module ``(B, *shape) → (B, 2D)`` giving ``[μ_s, ℓ_s]``.
        arch: ``"mlp"`` or ``"conv"`` for the default encoders.
        family: ``"laplace"`` (MMVAE's) or ``"normal"``.
        scale, min_scale: the positive map of :class:`ExpertScale` (default: the authors' softmax).
        init: ``"torch"`` (default, PyTorch's initialisation as the authors') or ``"lecun"``.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        family: str = "laplace",
        scale: str = "softmax",
        min_scale: float = MMVAE_ETA,
        init: str = "torch",
    ):
        super().__init__(modalities, latent_dim)
        self.family = check_family(family)
        self.encoders = ModalityEncoders(self.modalities.values(), 2 * self.latent_dim, hidden, arch, encoders, 0, init)
        self.expert_scale = ExpertScale(scale, min_scale)

    def experts(self, batch: MultimodalBatch, subset: Subset = None):
        """``(locs (B, M, D), scales (B, M, D), mask (B, M))`` in the guide's modality order."""
        mask = self.subset_mask(batch, subset)
        loc, scale = self.expert_scale(self.encoded(self.encoders, batch, mask))
        return loc, scale, mask

    def posterior(self, batch: MultimodalBatch, subset: Subset = None) -> DiagNormalMixture:
        # a DiagLaplaceMixture (a DiagNormalMixture subclass) for family="laplace"
        return mixture_of_experts(self.family, *self.experts(batch, subset))
