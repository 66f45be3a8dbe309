"""Helpers shared by the tests: tiny modalities and batches."""

from __future__ import annotations

from pathlib import Path

import torch

from pyro_mmvae.data import Modality, MultimodalBatch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def small_modalities():
    """Three modalities of different families and shapes."""
    return [
        Modality("a", (5,), likelihood="normal", scale=0.5),
        Modality("b", (1, 4, 4), likelihood="bernoulli"),
        Modality("c", (), likelihood="categorical", num_classes=3),
    ]


def small_batch(batch_size: int = 6, seed: int = 0, present: dict | None = None) -> MultimodalBatch:
    g = torch.Generator().manual_seed(seed)
    data = {
        "a": torch.randn(batch_size, 5, generator=g),
        "b": (torch.rand(batch_size, 1, 4, 4, generator=g) > 0.5).float(),
        "c": torch.randint(0, 3, (batch_size,), generator=g),
    }
    return MultimodalBatch(data, dict(present or {}))


def assert_finite_nonzero_grads(params) -> None:
    """Some of ``params`` received a gradient, every gradient is finite and not all of them are zero."""
    grads = [p.grad for p in params if p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)


class Interrupt(Exception):
    """Raised by :func:`interrupt_after`: a training run stopped from outside, mid-way."""


def interrupt_after(epoch):
    """An epoch-end callback that raises :class:`Interrupt` after epoch ``epoch``."""

    def callback(row):
        if row["epoch"] == epoch:
            raise Interrupt

    return callback
