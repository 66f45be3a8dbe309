"""One network per modality: the set-up every model (decoders) and guide (encoders, heads) repeats.

A model or guide is built from a list of :class:`~pyro_mmvae.data.Modality`; it keeps them as an
ordered ``{name: modality}`` (:func:`index_modalities`; the order fixes stacking and concatenation
orders) and holds its networks in an ``nn.ModuleDict`` keyed by modality name
(:func:`per_modality_modules`): the user's own module where one is given, a default one built from
the modality otherwise. The module keys are the modality names, so state-dict keys read
``<attribute>.<name>.…``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from torch import nn

from ..data.modality import Modality
from ..errors import check_int


def index_modalities(modalities: Iterable[Modality], owner: str | None = None) -> dict[str, Modality]:
    """``{name: modality}`` in the given order.

    Args:
        modalities: the modalities.
        owner: what is being built, for the error message (e.g. ``"a MultimodalVAE"``); when given,
            an empty list raises ``ValueError``.
    """
    out = {m.name: m for m in modalities}
    if owner is not None and not out:
        raise ValueError(f"{owner} needs at least one modality")
    return out


def check_latent_dim(latent_dim: int, what: str = "latent_dim") -> int:
    """``int(latent_dim)``, raising :class:`~pyro_mmvae.errors.InputError` (a ``ValueError``) unless it is
    an integer >= 1 (:class:`~pyro_mmvae.errors.InputTypeError` for a non-integer)."""
    return check_int(latent_dim, what, minimum=1)


def check_known_modalities(given: Mapping, names: Iterable[str], what: str, owner: str = "guide") -> None:
    """Raise ``KeyError`` if ``given`` (e.g. user encoders) has keys that are not modality ``names``."""
    names = list(names)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise KeyError(f"{what} given for unknown modalities {unknown}; this {owner} has {names}")


def per_modality_modules(
    modalities: Mapping[str, Modality],
    build: Callable[[Modality], nn.Module],
    given: Mapping[str, nn.Module] | None = None,
    what: str = "encoders",
    owner: str = "guide",
) -> nn.ModuleDict:
    """``nn.ModuleDict`` ``{name: given[name] if given else build(modality)}`` in modality order.

    Default modules are built in modality order, which fixes how a seeded initialisation is shared
    out among them. ``given`` may not name modalities outside ``modalities``.
    """
    given = dict(given or {})
    check_known_modalities(given, modalities, what, owner)
    return nn.ModuleDict({n: given[n] if n in given else build(m) for n, m in modalities.items()})
