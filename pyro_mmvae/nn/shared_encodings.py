"""Encode each modality once per objective evaluation, however many subsets the objective looks at.

The subset objectives (:mod:`pyro_mmvae.infer.masked`) run an aggregation guide for several subsets
per step: q(·|x_M) for z_M and q(·|x_S) for z_S and log q(z_M|x_S) (the masked bound; the TC bound
and the mixture baselines run q(·|x_S) again on replayed values). The set networks and
products of experts ignore every modality outside the subset (:mod:`pyro_mmvae.nn.set_aggregators`:
entries outside S are excluded with ``torch.where`` and masked attention), so a modality's features
may be computed once, from its inputs zeroed where the modality is missing, and reused for every
subset. Inside ``with shared_encodings():`` three things are computed once per block:

- each modality's features (:class:`~pyro_mmvae.guides.aggregation.ModalityEncoders`), and their
  stacked ``(B, M, E)`` tensor;
- per-element set-network outputs that do not depend on the subset (sum pooling's χ(h_s));
- a guide's q(·|x_S) for one batch and subset object (:func:`cached_for`): a replayed run of q(·|x_S)
  (the TC bound's log q(z_M|x_S)) reuses the distribution of the first.

Outside a block every call computes afresh. The cache lives for the ``with`` block only (one loss
evaluation, during which the parameters do not change), and gradients flow through the one shared
computation to every use of it. Cached values keep the objects their keys name alive, so an ``id``
in a key cannot be reused by another object within the block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from pyro.nn import PyroModule

# None: no block; a dict: the cache of the active block; False: sharing switched off (no_shared_encodings)
_cache: ContextVar[dict | bool | None] = ContextVar("pyro_mmvae_shared_encodings", default=None)
# False inside without_module_registration(): the library's networks emit no pyro.module statements
_register: ContextVar[bool] = ContextVar("pyro_mmvae_register_modules", default=True)


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


def cached(key: tuple, compute: Callable[[], object], keep: tuple = ()) -> object:
    """``compute()`` — once per ``key`` inside :func:`shared_encodings`, every time outside it.

    ``keep``: objects whose ``id`` appears in ``key``; the cache holds them for the block's lifetime.
    """
    store = _cache.get()
    if not isinstance(store, dict):
        return compute()
    if key not in store:
        store[key] = (compute(), keep)
    return store[key][0]


def subset_key(subset) -> tuple:
    """A cache key for a guide's ``subset`` argument (None, a name, names or per-row masks).

    Masks are keyed by identity and in-place version, so an edited mask is a new subset.
    """
    if subset is None or isinstance(subset, str):
        return ("subset", subset)
    if isinstance(subset, Mapping):
        return ("masks", id(subset), *((n, *tensor_key(m)) if isinstance(m, torch.Tensor) else (n, id(m))
                                       for n, m in subset.items()))  # fmt: skip
    return ("names", id(subset), tuple(subset))


def cached_for(owner: object, what: str, batch: object, subset, compute: Callable[[], object]) -> object:
    """``compute()`` once per ``(owner, what, batch object, subset)`` inside :func:`shared_encodings`.

    For what a guide derives from a batch and a subset alone (its q(·|x_S)); ``batch`` and ``subset``
    are the very objects the guide was called with.
    """
    if not in_shared_block():
        return compute()
    return cached((id(owner), what, id(batch), subset_key(subset)), compute, keep=(owner, batch, subset))


@contextmanager
def without_module_registration() -> Iterator[None]:
    """Inside the block, the library's models and guides read their networks without ``pyro.module``.

    For trainers whose optimizer holds the modules' parameters itself (``fit`` and ``fit_ensemble``
    take them from ``model.parameters()`` and ``guide.parameters()``): there the registration — one
    ``pyro.param`` message per parameter per network read, and the param store kept in step — is pure
    overhead (about 9 % of a small model's training step). Not for ``pyro.infer.SVI``, whose optimizer
    finds the parameters through those ``param`` sites. A user's own ``pyro.module`` and ``pyro.param``
    statements, and the parameters of ``PyroModule`` networks, are registered as always.
    """
    token = _register.set(False)
    try:
        yield
    finally:
        _register.reset(token)


class RegisterModulesOnce:
    """Mixin for a ``PyroModule`` whose plain ``nn.Module`` attributes are read in every run of a program.

    Each such read re-registers all of the module's parameters with ``pyro.module`` (one ``pyro.param``
    message per parameter). Inside :func:`shared_encodings` the first read of an attribute registers
    it and later reads in the block return it directly: an objective that runs the program several
    times registers every network once per evaluation, which is all that ``pyro.infer.SVI``'s parameter
    capture (a trace around the whole loss) needs. Inside :func:`without_module_registration` no read
    registers. Otherwise nothing changes.
    """

    def __getattr__(self, name: str):
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules and not isinstance(modules[name], PyroModule):
            if not _register.get():
                return modules[name]
            if in_shared_block():
                read = super().__getattr__
                return cached((id(self), "module", name), lambda: read(name), keep=(self,))
        return super().__getattr__(name)
