"""The guide contract shared by every encoder of the library.

A guide is a ``PyroModule`` with

- ``posterior(batch, subset=None) -> Distribution``: q(z | x_subset) itself, batch shape ``(B,)``,
  event shape ``(D,)``. ``subset`` is ``None`` (all present modalities), names, or per-row bool
  masks (see :meth:`~pyro_mmvae.data.MultimodalBatch.subset_mask`);
- ``forward(batch, subset=None, beta=1.0)``: the Pyro guide program, sampling site ``"z"`` from
  ``posterior`` inside ``pyro.plate("data")`` and ``poutine.scale(beta)`` (site and plate names
  from :mod:`pyro_mmvae.sites`).

ELBOs, importance sampling, subset-posterior targets and plots all call ``posterior``: one source
of truth for q.

The library's guides are built from modalities and a latent size D; :class:`MultimodalGuide` keeps
them (``modalities``, ``names``, ``latent_dim``) and builds per-modality networks with
:meth:`MultimodalGuide.per_modality`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

import pyro
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from pyro_mmvae.data.batch import MultimodalBatch, Subset
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.data.validation import validate_for
from pyro_mmvae.nn.per_modality import check_latent_dim, index_modalities, per_modality_modules
from pyro_mmvae.nn.shared_encodings import RegisterModulesOnce, cached_for
from pyro_mmvae.sites import DATA_PLATE, LATENT_SITE


def _validating_posterior(posterior):
    """Wrap ``posterior(self, batch, subset=None)``: check ``batch`` against the guide's modalities first.

    The guide sees the safe batch (missing rows zero-filled); modalities the guide does not know are
    checked structurally only (a guide may read some of the batch's modalities).
    """

    @functools.wraps(posterior)
    def checked(self, batch, *args, **kwargs):
        return posterior(self, validate_for(batch, self, allow_unknown=True), *args, **kwargs)

    checked._validates_batch = True
    return checked


class MultimodalGuide(RegisterModulesOnce, PyroModule):
    """Base class: subclasses implement :meth:`posterior`.

    Args:
        modalities: optional; kept as ``self.modalities`` (``{name: Modality}``, in order).
        latent_dim: optional D (>= 1), kept as ``self.latent_dim``.
        require_modalities: with ``modalities``, the error message's subject when the list is empty
            (e.g. ``"an aggregation guide"``); ``None`` accepts an empty list.

    Subclasses that do not pass ``modalities`` set up ``self.modalities`` themselves or not at all.
    """

    latent_site = LATENT_SITE

    def __init_subclass__(cls, **kwargs):
        # every subclass's posterior validates its batch on the way in (once: a validated batch passes at once)
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("posterior")
        if fn is not None and not getattr(fn, "_validates_batch", False):
            cls.posterior = _validating_posterior(fn)

    def __init__(
        self,
        modalities: Iterable[Modality] | None = None,
        latent_dim: int | None = None,
        require_modalities: str | None = None,
    ):
        super().__init__()
        if modalities is not None:
            self.modalities = index_modalities(modalities, require_modalities)
        if latent_dim is not None:
            self.latent_dim = check_latent_dim(latent_dim)

    @property
    def names(self) -> list[str]:
        """The modality names, in the guide's order."""
        return list(self.modalities)

    def per_modality(
        self, build: Callable[[Modality], nn.Module], given: Mapping[str, nn.Module] | None = None, what="encoders"
    ) -> nn.ModuleDict:
        """``{name: given[name] or build(modality)}`` over the guide's modalities (unknown names in ``given`` raise)."""
        return per_modality_modules(self.modalities, build, given, what, owner="guide")

    def posterior(self, batch: MultimodalBatch, subset: Subset = None):
        raise NotImplementedError

    def forward(self, batch: MultimodalBatch, subset: Subset = None, beta: float = 1.0):
        # one q(·|x_S) per batch and subset inside an objective's shared_encodings block (the masked
        # bound's replay of q(·|x_S) at z_M reuses the distribution of its z_S run)
        q = cached_for(self, "posterior", batch, subset, lambda: self.posterior(batch, subset))
        with pyro.plate(DATA_PLATE, batch.batch_size), poutine.scale(scale=beta):
            return pyro.sample(self.latent_site, q)
