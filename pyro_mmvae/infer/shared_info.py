"""Objectives that teach projectors g_j the information modalities share (JNF-Shared, stage 0).

Two objectives (paper 000, Appendix B), both summed over all pairs of modalities when M > 2:

**DCCA** (B.1) — maximise the total canonical correlation of the projections. For a pair of
feature batches H1 ``(n, k1)``, H2 ``(n, k2)``::

    Σ11 = cov(H1) + r I,   Σ22 = cov(H2) + r I,   Σ12 = cov(H1, H2)       (centred, /(n−1), r = 1e-3)
    T   = Σ11^{-1/2} Σ12 Σ22^{-1/2}                                        (inverse square roots by
                                                                          eigendecomposition, eigen-
                                                                          values < 1e-9 dropped)
    loss = − Σ top-k singular values of T        (all of them: − trace √(TᵀT), the total correlation)

The singular values of T are the sample canonical correlations. They are computed with
``torch.linalg.svdvals`` (stable gradients even for repeated values) in float64.

**Contrastive** (B.2) — symmetric InfoNCE on cosine similarity with temperature τ (default 0.1):
with u_i = H1_i/‖H1_i‖, v_i = H2_i/‖H2_i‖ and s_ij = u_i·v_j / τ, the positive pair of row i is
(u_i, v_i) and the other rows of the batch are its negatives::

    loss = ½ [ mean_i −log softmax_j(s_ij)[i]  +  mean_i −log softmax_j(s_ji)[i] ]

(the mean of the two directions; the paper's sum of the two only doubles it).

Missing modalities: a pair's loss uses only the rows where both modalities are present; a pair
with fewer than two such rows is skipped. :func:`train_projectors` trains the projectors with
either objective and then freezes them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..data.dataset import iterate_batches, num_batches
from ..nn.projectors import freeze

OBJECTIVES = ("dcca", "contrastive")


def _check_pair(h1: torch.Tensor, h2: torch.Tensor) -> None:
    if h1.dim() != 2 or h2.dim() != 2:
        raise ValueError(f"features must be (n, k) matrices, got shapes {tuple(h1.shape)} and {tuple(h2.shape)}")
    if h1.shape[0] != h2.shape[0]:
        raise ValueError(f"the two views have different numbers of rows: {h1.shape[0]} vs {h2.shape[0]}")
    if h1.shape[0] < 2:
        raise ValueError(f"need at least 2 rows to compare two views, got {h1.shape[0]}")


def inverse_sqrt(cov: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Σ^{-1/2} of a symmetric PSD matrix by eigendecomposition; eigenvalues < ``eps`` are dropped."""
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > eps
    inv_sqrt = torch.where(keep, evals.clamp_min(eps).rsqrt(), torch.zeros_like(evals))
    return (evecs * inv_sqrt) @ evecs.transpose(-1, -2)


def cca_matrix(h1: torch.Tensor, h2: torch.Tensor, ridge: float = 1e-3, eps: float = 1e-9) -> torch.Tensor:
    """T = Σ11^{-1/2} Σ12 Σ22^{-1/2} ``(k1, k2)`` of two views ``(n, k1)``, ``(n, k2)``, in float64."""
    _check_pair(h1, h2)
    h1, h2 = h1.double(), h2.double()
    n = h1.shape[0]
    c1, c2 = h1 - h1.mean(0), h2 - h2.mean(0)
    s11 = c1.T @ c1 / (n - 1) + ridge * torch.eye(h1.shape[1], dtype=h1.dtype, device=h1.device)
    s22 = c2.T @ c2 / (n - 1) + ridge * torch.eye(h2.shape[1], dtype=h2.dtype, device=h2.device)
    s12 = c1.T @ c2 / (n - 1)
    return inverse_sqrt(s11, eps) @ s12 @ inverse_sqrt(s22, eps)


def canonical_correlations(h1: torch.Tensor, h2: torch.Tensor, ridge: float = 1e-3, eps: float = 1e-9):
    """Sample canonical correlations of two views, descending: ``(min(k1, k2),)`` (float64)."""
    return torch.linalg.svdvals(cca_matrix(h1, h2, ridge, eps))


def dcca_loss(
    h1: torch.Tensor, h2: torch.Tensor, top_k: int | None = None, ridge: float = 1e-3, eps: float = 1e-9
) -> torch.Tensor:
    """−(sum of the ``top_k`` largest canonical correlations); ``top_k=None``: all of them (−trace √(TᵀT))."""
    corr = canonical_correlations(h1, h2, ridge, eps)
    if top_k is not None:
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        corr = corr[: int(top_k)]
    return -corr.sum().to(h1.dtype)


def info_nce_loss(h1: torch.Tensor, h2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarity (mean over rows and over the two directions)."""
    _check_pair(h1, h2)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if h1.shape[1] != h2.shape[1]:
        raise ValueError(f"cosine similarity needs projections of equal size, got {h1.shape[1]} and {h2.shape[1]}")
    logits = F.normalize(h1, dim=-1) @ F.normalize(h2, dim=-1).T / temperature
    labels = torch.arange(h1.shape[0], device=h1.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def pairwise_loss(
    features: Mapping[str, torch.Tensor],
    present: Mapping[str, torch.Tensor] | None = None,
    objective: str = "dcca",
    top_k: int | None = None,
    ridge: float = 1e-3,
    eps: float = 1e-9,
    temperature: float = 0.1,
) -> torch.Tensor | None:
    """Sum over pairs of modalities of the objective on the rows where both are present.

    Args:
        features: name → ``(n, k)`` projections.
        present: optional name → bool ``(n,)``; default: every row present.
        objective: ``"dcca"`` or ``"contrastive"``.

    Returns the summed loss, or ``None`` when no pair has two common rows.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    names = list(features)
    if len(names) < 2:
        raise ValueError(f"need at least two modalities to share information, got {names}")
    total = None
    for a, b in itertools.combinations(names, 2):
        ha, hb = features[a], features[b]
        if present is not None:
            both = present[a] & present[b]
            if not bool(both.all()):
                ha, hb = ha[both], hb[both]
        if ha.shape[0] < 2:
            continue
        if objective == "dcca":
            term = dcca_loss(ha, hb, top_k, ridge, eps)
        else:
            term = info_nce_loss(ha, hb, temperature)
        total = term if total is None else total + term
    return total


def train_projectors(
    projectors: Mapping[str, nn.Module],
    dataset,
    objective: str = "dcca",
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    top_k: int | None = None,
    ridge: float = 1e-3,
    temperature: float = 0.1,
    weight_decay: float = 0.0,
) -> list[float]:
    """Train projectors g_j jointly with DCCA or contrastive learning, then freeze them.

    Args:
        projectors: name → module ``(B, *shape) → (B, k)`` for at least two modalities of ``dataset``.
        dataset: a :class:`~pyro_mmvae.data.MultimodalDataset` (or anything ``iterate_batches`` reads).
        objective: ``"dcca"`` or ``"contrastive"``.
        epochs, batch_size, lr, weight_decay: Adam training schedule. The last incomplete batch is
            dropped when the dataset holds at least one full batch (DCCA needs many rows per batch).
        seed: fixes the batch order of every epoch.
        progress: show a tqdm bar.
        top_k, ridge: DCCA options (see :func:`dcca_loss`); temperature: InfoNCE τ.

    Returns:
        the mean training loss of each epoch (``epochs`` floats). The projectors end frozen
        (eval mode, ``requires_grad=False``).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    names = list(projectors)
    if len(names) < 2:
        raise ValueError(f"need projectors for at least two modalities, got {names}")
    missing = [n for n in names if n not in dataset.names]
    if missing:
        raise KeyError(f"projectors given for modalities {missing} that the dataset lacks ({dataset.names})")
    params = list({id(p): p for n in names for p in projectors[n].parameters()}.values())
    if not params:
        raise ValueError("the projectors have no parameters to train")
    for n in names:
        projectors[n].requires_grad_(True)
        projectors[n].train(True)
    device = params[0].device
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    drop_last = len(dataset) >= batch_size
    steps = num_batches(dataset, batch_size, drop_last)
    history: list[float] = []
    with tqdm(total=epochs * steps, desc=f"projectors ({objective})", disable=not progress) as bar:
        for epoch in range(epochs):
            total, count = 0.0, 0
            for batch in iterate_batches(
                dataset, batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=drop_last
            ):
                batch = batch.to(device)
                feats = {n: projectors[n](batch.data[n]) for n in names}
                loss = pairwise_loss(
                    feats, {n: batch.present[n] for n in names}, objective, top_k, ridge, temperature=temperature
                )
                bar.update(1)
                if loss is None:  # no pair shares two rows in this batch
                    continue
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, count = total + loss.item(), count + 1
                bar.set_postfix(loss=f"{loss.item():.4f}")
            history.append(total / count if count else float("nan"))
    for n in names:
        freeze(projectors[n])
    return history
