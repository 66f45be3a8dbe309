"""The forward-pass pieces the library's generative models share.

A model ``model(batch, beta=1.0)`` of the library runs, inside ``pyro.plate("data", B)``:

1. its latent sites under ``poutine.scale(β)`` (``"z"``, and ``"w_<s>"`` for models with private
   latents);
2. :func:`observe_modalities`: every modality present in the batch at its site ``"x_<s>"``, masked
   by the batch's presence mask, so a missing modality contributes exactly zero.

:func:`check_batch_modalities` is the preamble: a batch may hold fewer modalities than the model,
never unknown ones. Site and plate names come from :mod:`pyro_mmvae.sites`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import pyro
from pyro import poutine
from pyro.distributions import Distribution

from ..data.batch import MultimodalBatch
from ..data.modality import Modality
from ..sites import observed_site


class NamedModalities:
    """What every model of the library derives from its ``modalities`` (``name -> Modality``)."""

    modalities: Mapping[str, Modality]

    @property
    def names(self) -> list[str]:
        return list(self.modalities)

    @property
    def reconstruction_weights(self) -> dict[str, float]:
        return {n: m.weight for n, m in self.modalities.items()}


def check_batch_modalities(batch: MultimodalBatch, modalities: Mapping[str, Modality]) -> None:
    """Raise ``KeyError`` if ``batch`` holds a modality that is not one of the model's ``{name: modality}``."""
    unknown = [n for n in batch.names if n not in modalities]
    if unknown:
        raise KeyError(f"unknown modality name(s) {unknown}; this model has {list(modalities)}")


def observe_modalities(
    batch: MultimodalBatch, names: Iterable[str], likelihood_of: Callable[[str], Distribution]
) -> None:
    """Observe ``batch.data[name]`` at site ``"x_<name>"`` under the presence mask, for each ``name`` in the batch.

    ``likelihood_of(name)`` returns p(x_name | latents) with batch shape ``(*particles, B)``; it is
    called inside the mask, in the order of ``names``, and only for modalities the batch holds.
    """
    for name in names:
        x = batch.data.get(name)
        if x is None:
            continue
        with poutine.mask(mask=batch.present[name]):
            pyro.sample(observed_site(name), likelihood_of(name), obs=x)
