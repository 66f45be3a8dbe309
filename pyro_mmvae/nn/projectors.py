"""Projectors g_j: networks extracting the information a modality shares with the others (JNF-Shared).

A projector maps one modality to a small vector, ``(*lead, *shape) → (*lead, k)`` (k = 10 in the
MNIST-SVHN experiments of "Bridging the inference gap in Multimodal Variational Autoencoders").
Projectors are trained FIRST, with :func:`pyro_mmvae.train.train_projectors` (DCCA or
contrastive objective), then frozen; the JNF-Shared unimodal posteriors q_j(z | g_j(x_j)) read them
through :class:`FrozenProjector` (see ``FlowExpertGuide(project=...)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..data.modality import Modality
from .networks import default_encoder


def make_projector(modality: Modality, out_dim: int = 10, hidden=(512, 512), arch: str = "mlp") -> nn.Module:
    """A projector for ``modality``: ``(*lead, *shape) → (*lead, out_dim)``.

    ``arch="mlp"``: MLP on the flattened input (class indices are one-hot encoded first);
    ``arch="conv"``: strided conv net for square images ``(C, H, H)``, H divisible by 4. The
    returned module has an ``out_dim`` attribute.
    """
    if int(out_dim) < 1:
        raise ValueError(f"projector for {modality.name!r}: out_dim must be >= 1, got {out_dim}")
    return default_encoder(modality, int(out_dim), hidden, arch)


def make_projectors(
    modalities: Iterable[Modality], out_dim: int = 10, hidden=(512, 512), arch: str | Mapping[str, str] = "mlp"
) -> nn.ModuleDict:
    """One projector per modality, ``name → module``; ``arch`` may be a per-modality mapping."""
    out = {}
    for m in modalities:
        a = arch.get(m.name, "mlp") if isinstance(arch, Mapping) else arch
        out[m.name] = make_projector(m, out_dim, hidden, a)
    return nn.ModuleDict(out)


def freeze(module: nn.Module) -> nn.Module:
    """Switch ``module`` to eval mode and turn off ``requires_grad`` of its parameters; returns it."""
    module.requires_grad_(False)
    return module.eval()


class FrozenProjector(nn.Module):
    """A trained projector used as a fixed feature extractor.

    Its parameters never require gradients, it stays in eval mode even when a parent module is
    switched to training mode, and its output is computed without building a graph. The wrapped
    projector is still a submodule, so it is saved with (and moved with) the guide that holds it.

    Args:
        projector: the trained network ``(*lead, *shape) → (*lead, k)``.
        out_dim: k; taken from ``projector.out_dim`` when omitted.
    """

    def __init__(self, projector: nn.Module, out_dim: int | None = None):
        super().__init__()
        if out_dim is None:
            out_dim = getattr(projector, "out_dim", None)
        if out_dim is None:
            raise ValueError(
                f"cannot tell the output size of projector {type(projector).__name__}: give it an `out_dim` "
                "attribute or pass out_dim="
            )
        self.projector = freeze(projector)
        self.out_dim = int(out_dim)

    def train(self, mode: bool = True) -> FrozenProjector:
        # Frozen means frozen: normalisation statistics must not drift while the guide trains.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.projector(x)
        if h.shape[-1] != self.out_dim:
            raise ValueError(f"projector returned features of size {h.shape[-1]}, expected out_dim={self.out_dim}")
        return h
