"""The guide contract shared by every encoder of the library.

A guide is a ``PyroModule`` with

- ``posterior(batch, subset=None) -> Distribution``: q(z | x_subset) itself, batch shape ``(B,)``,
  event shape ``(D,)``. ``subset`` is ``None`` (all present modalities), names, or per-row bool
  masks (see :meth:`~pyro_mmvae.data.MultimodalBatch.subset_mask`);
- ``forward(batch, subset=None, beta=1.0)``: the Pyro guide program, sampling site ``"z"`` from
  ``posterior`` inside ``pyro.plate("data")`` and ``poutine.scale(beta)``.

ELBOs, importance sampling, subset-posterior targets and plots all call ``posterior``: one source
of truth for q.
"""

from __future__ import annotations

import pyro
from pyro import poutine
from pyro.nn import PyroModule

from pyro_mmvae.data.batch import MultimodalBatch, Subset


class MultimodalGuide(PyroModule):
    """Base class: subclasses implement :meth:`posterior`."""

    latent_site = "z"

    def posterior(self, batch: MultimodalBatch, subset: Subset = None):
        raise NotImplementedError

    def forward(self, batch: MultimodalBatch, subset: Subset = None, beta: float = 1.0):
        q = self.posterior(batch, subset)
        with pyro.plate("data", batch.batch_size), poutine.scale(scale=beta):
            return pyro.sample(self.latent_site, q)
