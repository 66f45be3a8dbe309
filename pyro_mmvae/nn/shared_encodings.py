"""Encode each modality once per objective evaluation, however many subsets the objective looks at.

The subset objectives (:mod:`pyro_mmvae.infer.masked`) run an aggregation guide three times per step:
q(·|x_S) for z_S, q(·|x_M) for z_M, and q(·|x_S) again for log q(z_M|x_S). The set networks and
products of experts ignore every modality outside the subset (:mod:`pyro_mmvae.nn.set_aggregators`:
entries outside S are excluded with ``torch.where`` and masked attention), so a modality's features
may be computed once, from its inputs zeroed where the modality is missing, and reused for every
subset. Inside ``with shared_encodings():`` :class:`~pyro_mmvae.guides.aggregation.ModalityEncoders`
does exactly that; outside it every call encodes afresh. The cache lives for the ``with`` block only
(one loss evaluation, during which the parameters do not change), and gradients flow through the one
shared computation to every use of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

# None: no block; a dict: the cache of the active block; False: sharing switched off (no_shared_encodings)
_cache: ContextVar[dict | bool | None] = ContextVar("pyro_mmvae_shared_encodings", default=None)


@contextmanager
def shared_encodings() -> Iterator[None]:
    """Within the block, :func:`cached` computes each key once (nested blocks share the outer cache)."""
    if _cache.get() is not None:  # an outer block, or sharing switched off
        yield
        return
    token = _cache.set({})
    try:
        yield
    finally:
        _cache.reset(token)


@contextmanager
def no_shared_encodings() -> Iterator[None]:
    """Switch sharing off inside the block: every guide run encodes its own zeroed inputs.

    For comparisons (``benchmarks/train_step.py``) and for encoders whose output for a row depends
    on other rows of the batch (batch normalisation in training mode), where sharing would change
    the batch statistics.
    """
    token = _cache.set(False)
    try:
        yield
    finally:
        _cache.reset(token)


def in_shared_block() -> bool:
    """Whether a :func:`shared_encodings` block is active (and sharing not switched off)."""
    return isinstance(_cache.get(), dict)


def tensor_key(t: torch.Tensor) -> tuple:
    """Identity and in-place version of a tensor: a tensor changed in place is a new key."""
    return (id(t), t._version)


def cached(key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` — once per ``key`` inside :func:`shared_encodings`, every time outside it."""
    store = _cache.get()
    if not isinstance(store, dict):
        return compute()
    if key not in store:
        store[key] = compute()
    return store[key]
