"""Mask samplers ρ(S | M): which observed modalities a masked/mixture objective conditions on.

A mask sampler draws, for every data point, a subset S of its observed modalities M (the batch's
presence masks). It is a callable ``sampler(batch) -> {name: BoolTensor(B,)}`` whose masks are
always contained in the presence masks (S ⊆ M); S = ∅ and S = M are both allowed. "The paper"
below is "Learning multi-modal generative models with permutation-invariant encoders and tighter
variational objectives".

Built-in samplers (``make_mask_sampler(kind)``):

- ``"paper"`` — γ ~ U(0, 1) per data point, m_j ~ Bernoulli(γ) i.i.d. over modalities,
  S = {j : m_j = 1} ∩ M. Then ``|S|`` is uniform on ``{0, …, |M|}``: ``P(|S| = k) = 1/(|M| + 1)``,
  and given ``|S| = k`` every k-subset of M is equally likely.
- ``"uniform"`` — the paper's published code: each observed modality is kept independently with
  probability ½, so S is uniform over the 2^|M| subsets of M.
- ``"singletons"`` — S = {s} for one observed modality chosen uniformly per data point.
- ``"all"`` — S = M.

Randomness comes from torch's global RNG (seed it with ``pyro.set_rng_seed``) unless a
``torch.Generator`` is given, so every training step draws fresh masks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.batch import MultimodalBatch

MaskDict = dict[str, torch.Tensor]


def _stacked_present(batch: MultimodalBatch) -> torch.Tensor:
    """Presence masks as a bool tensor ``(B, M)`` in batch order."""
    return batch.stacked_mask(None)


def _unstack(batch: MultimodalBatch, masks: torch.Tensor) -> MaskDict:
    return {name: masks[:, j] for j, name in enumerate(batch.names)}


def paper_masks(present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ρ of the paper: ``present (B, M) bool → S (B, M) bool`` with γ ~ U(0,1), m_j ~ Bern(γ)."""
    b, m = present.shape
    gamma = torch.rand(b, 1, generator=generator, device=present.device)
    keep = torch.rand(b, m, generator=generator, device=present.device) < gamma
    return keep & present


def uniform_masks(present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each observed modality kept with probability ½: S uniform over the subsets of M. ``(B, M)``."""
    keep = torch.rand(present.shape, generator=generator, device=present.device) < 0.5
    return keep & present


def singleton_masks(present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One observed modality per row, uniformly; rows with nothing observed get S = ∅. ``(B, M)``."""
    # Random keys on the observed entries only; the arg-max is uniform among them.
    keys = torch.rand(present.shape, generator=generator, device=present.device)
    keys = torch.where(present, keys, torch.full_like(keys, -1.0))
    choice = torch.nn.functional.one_hot(keys.argmax(-1), present.shape[-1]).bool()
    return choice & present


def all_masks(present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """S = M. ``(B, M)``."""
    return present.clone()


_KINDS: dict[str, Callable[..., torch.Tensor]] = {
    "paper": paper_masks,
    "uniform": uniform_masks,
    "singletons": singleton_masks,
    "all": all_masks,
}


class MaskSampler:
    """Callable ``sampler(batch) -> {name: BoolTensor(B,)}`` with S ⊆ M in every row.

    Args:
        kind: ``"paper"``, ``"uniform"``, ``"singletons"`` or ``"all"`` (see the module docstring).
        generator: optional ``torch.Generator``; default: torch's global RNG.
    """

    def __init__(self, kind: str = "paper", generator: torch.Generator | None = None):
        if kind not in _KINDS:
            raise ValueError(f"unknown mask sampler {kind!r}; expected one of {sorted(_KINDS)} or a callable")
        self.kind, self.generator = kind, generator
        self._draw = _KINDS[kind]

    def stacked(self, batch: MultimodalBatch) -> torch.Tensor:
        """The sampled S as a bool tensor ``(B, M)`` in batch order."""
        return self._draw(_stacked_present(batch), self.generator)

    def __call__(self, batch: MultimodalBatch) -> MaskDict:
        return _unstack(batch, self.stacked(batch))

    def __repr__(self) -> str:
        return f"MaskSampler({self.kind!r})"


def make_mask_sampler(spec: str | Callable[[MultimodalBatch], MaskDict] = "paper") -> Callable:
    """A mask sampler from a kind name, or a user callable ``batch -> {name: BoolTensor(B,)}``.

    User callables are wrapped so that their output is checked (bool ``(B,)`` per modality) and
    intersected with presence.
    """
    if isinstance(spec, str):
        return MaskSampler(spec)
    if not callable(spec):
        raise TypeError(f"mask_sampler must be a name or a callable batch -> masks, got {type(spec).__name__}")
    if isinstance(spec, MaskSampler):
        return spec
    return _CheckedSampler(spec)


class _CheckedSampler:
    def __init__(self, fn: Callable[[MultimodalBatch], MaskDict]):
        self.fn = fn

    def __call__(self, batch: MultimodalBatch) -> MaskDict:
        masks = self.fn(batch)
        if not isinstance(masks, dict):
            raise TypeError(f"a mask sampler must return a dict name -> BoolTensor(B,), got {type(masks).__name__}")
        # subset_mask validates dtype/shape, fills absent names with False and intersects with presence.
        return batch.subset_mask(masks)

    def __repr__(self) -> str:
        return f"MaskSampler({self.fn!r})"
