"""Helpers shared by the guide tests: building a guide over some of the modalities of
:func:`tests.common.small_modalities` (optionally with another guide's weights, loaded by modality
name), per-row subsets, permuted batches and comparisons of posteriors."""

from __future__ import annotations

import torch

from pyro_mmvae.data.batch import MultimodalBatch
from tests.common import small_batch, small_modalities

NAMES = ["a", "b", "c"]
SET = dict(feature_dim=8, hidden=(8,), width=8)
"""Small set-network settings for the SumPooling / SelfAttention guides."""


def modality_of_key(key: str) -> str | None:
    """The modality a state-dict key belongs to (``[private_]encoders.encoders.<name>.…``), else None."""
    parts = key.split(".")
    return parts[2] if parts[0] in ("encoders", "private_encoders") and parts[1] == "encoders" else None


def build_guide(builders: dict, kind: str, names=NAMES, like=None):
    """``builders[kind]`` applied to the modalities ``names`` (in that order).

    With ``like``, the guide takes the weights of ``like`` by modality name; the encoders of
    modalities this guide lacks are dropped.
    """
    mods = {m.name: m for m in small_modalities()}
    guide = builders[kind]([mods[n] for n in names])
    if like is not None:
        state = {k: v for k, v in like.state_dict().items() if modality_of_key(k) in (None, *names)}
        guide.load_state_dict(state)
    return guide


def guide_batch_and_subset(builders: dict, kind: str, b: int = 8):
    """The usual scene of a guide test: a fresh guide ``builders[kind]`` over :data:`NAMES`, ``small_batch(b)``
    and the per-row subset ``row_masks(b)``."""
    return build_guide(builders, kind), small_batch(b), row_masks(b)


def row_masks(b: int = 8, seed: int = 0) -> dict:
    """A random per-row subset ``{name: Bool(b,)}``: row 0 empty, row 1 full, row 2 only ``"b"``."""
    g = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(b, generator=g) > 0.5 for n in NAMES}
    for n in NAMES:
        masks[n][0], masks[n][1], masks[n][2] = False, True, n == "b"
    return masks


def permuted_batch(batch: MultimodalBatch, order) -> MultimodalBatch:
    """``batch`` with its modality dicts in the order ``order``."""
    return MultimodalBatch({n: batch.data[n] for n in order}, {n: batch.present[n] for n in order})


def assert_same_q(q1, q2, z=None, atol: float = 1e-5) -> None:
    """Same shapes, log-densities at ``z`` and means (default ``z``: 3 draws of ``q1`` and 2 standard normals)."""
    assert q1.batch_shape == q2.batch_shape and q1.event_shape == q2.event_shape
    if z is None:
        z = torch.cat([q1.sample((3,)), torch.randn(2, *q1.batch_shape, *q1.event_shape)])
    torch.testing.assert_close(q1.log_prob(z), q2.log_prob(z), atol=atol, rtol=1e-5)
    torch.testing.assert_close(q1.mean, q2.mean, atol=atol, rtol=1e-5)
