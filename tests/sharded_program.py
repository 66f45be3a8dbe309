"""Sharded subset-posterior sampling and coherence: run in one process by the tests, and by the
``torchrun`` processes of ``tests/ddp_program.py`` after their training."""

from __future__ import annotations

import torch

from pyro_mmvae.data import MultimodalBatch
from pyro_mmvae.infer.mcmc.sharded import sample_sharded
from pyro_mmvae.infer.subset_posterior import SubsetPosterior
from pyro_mmvae.metrics.coherence import subset_coherence

N, D = 11, 3  # 11 points in chunks of 3: 4 chunks, the last one shorter


def gaussian_experts():
    g = torch.Generator().manual_seed(0)
    locs = torch.randn(2, N, D, generator=g)
    scales = 0.3 + torch.rand(2, N, D, generator=g)
    return locs, scales


def draws(seed=5):
    locs, scales = gaussian_experts()
    run = sample_sharded(
        lambda a, b: SubsetPosterior.from_gaussians(0.0, 1.0, locs[:, a:b], scales[:, a:b]),
        N,
        num_samples=15,
        warmup_steps=20,
        chunk_size=3,
        num_chains=2,
        seed=seed,
    )
    return run


def coherence(seed=7):
    """A random generator: its counts depend on the random stream of each (subset, batch) unit."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(3):
        x = {m: torch.randn(8, 2, generator=g) for m in ("a", "b", "c")}
        batches.append(MultimodalBatch(x, labels={"digit": torch.randint(0, 3, (8,), generator=g)}))

    def generate(batch, given, targets):
        return {m: torch.randn(batch.batch_size, 2) for m in targets}

    classifiers = {m: (lambda x: (x[:, 0] > 0).long() + (x[:, 1] > 0).long()) for m in ("a", "b", "c")}
    report = subset_coherence(generate, classifiers, batches, progress=False, seed=seed)
    return dict(report.correct), dict(report.count)
