"""The site names every model, guide, objective, metric and sampler of the library agrees on.

A multimodal model ``model(batch, beta=1.0)`` and its guide ``guide(batch, subset=None, beta=1.0)``
are written with these names, and everything downstream finds its terms by them:

- ``pyro.plate(DATA_PLATE, B)`` (``"data"``, plate dim −1) around everything per data point;
- the shared latent is the sample site :data:`LATENT_SITE` (``"z"``), event shape ``(D,)``;
- a model with private latents gives modality ``m`` the latent site ``private_site(m)``
  (``"w_<m>"``), event shape ``(D̃,)``;
- modality ``m`` is observed at ``observed_site(m)`` (``"x_<m>"``), masked by the batch's presence
  mask, so a missing modality contributes exactly zero.

This module imports nothing from the library: any layer may use it.
"""

from __future__ import annotations

DATA_PLATE = "data"
"""Name of the plate over the data points of a batch (dim −1)."""

LATENT_SITE = "z"
"""Name of the shared latent's sample site."""

OBSERVED_PREFIX = "x_"
PRIVATE_PREFIX = "w_"


def observed_site(name: str) -> str:
    """The observed site of modality ``name``: ``"x_<name>"``."""
    return f"{OBSERVED_PREFIX}{name}"


def private_site(name: str) -> str:
    """The site of modality ``name``'s private latent: ``"w_<name>"``."""
    return f"{PRIVATE_PREFIX}{name}"


def is_observed_site(site: str) -> bool:
    """Whether ``site`` is named like an observed modality site ``"x_<name>"``."""
    return site.startswith(OBSERVED_PREFIX)


def modality_of(site: str) -> str:
    """The modality of an observed site ``"x_<name>"`` or a private-latent site ``"w_<name>"``.

    Raises:
        ValueError: ``site`` follows neither pattern (e.g. the shared latent ``"z"``).
    """
    for prefix in (OBSERVED_PREFIX, PRIVATE_PREFIX):
        if site.startswith(prefix):
            return site[len(prefix) :]
    raise ValueError(f"site {site!r} names no modality (expected 'x_<modality>' or 'w_<modality>')")
