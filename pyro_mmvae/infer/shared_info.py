"""Objectives that teach projectors g_j the information modalities share (JNF-Shared, stage 0).

Two objectives (appendix B of "Bridging the inference gap in Multimodal Variational Autoencoders"), both
summed over all pairs of modalities when M > 2:

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
with fewer than two such rows (``min_rows``) is skipped.

Training is one checkpointed, resumable stage of :func:`~pyro_mmvae.train.fit`:
:class:`SharedInfoLoss` is the objective as a trainer loss, with the projectors (a name → module
``nn.ModuleDict``) as the trained "guide" and no generative model::

    fit(None, projectors, data, SharedInfoLoss("dcca"), epochs=5, batch_size=256,
        optimizer_kwargs={"weight_decay": 1e-4}, run_dir=run, stage="projectors", resume=True)

:func:`pyro_mmvae.train.train_projectors` is that call plus input checks and
:func:`~pyro_mmvae.nn.projectors.freeze` of the projectors afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..data.batch import MultimodalBatch
from .elbo import LossELBO

OBJECTIVES = ("dcca", "contrastive")


def _check_pair(h1: torch.Tensor, h2: torch.Tensor) -> None:
    if h1.dim() != 2 or h2.dim() != 2:
        raise ValueError(f"features must be (n, k) matrices, got shapes {tuple(h1.shape)} and {tuple(h2.shape)}")
    if h1.shape[0] != h2.shape[0]:
        raise ValueError(f"the two views have different numbers of rows: {h1.shape[0]} vs {h2.shape[0]}")
    if h1.shape[0] < 2:
        raise ValueError(f"need at least 2 rows to compare two views, got {h1.shape[0]}")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")


def _check_min_rows(min_rows: int) -> None:
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 2:
        raise ValueError(f"min_rows must be an integer >= 2, got {min_rows!r}")


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def check_projector_names(names: list, available, source: str) -> None:
    """At least two projectors, each for a modality that ``source`` (the batch or dataset, with ``available``) has."""
    if len(names) < 2:
        raise ValueError(f"need projectors for at least two modalities, got {names}")
    missing = [n for n in names if n not in available]
    if missing:
        raise KeyError(f"projectors given for modalities {missing} that the {source} lacks ({available})")


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
        _check_top_k(top_k)
        corr = corr[: int(top_k)]
    return -corr.sum().to(h1.dtype)


def info_nce_loss(h1: torch.Tensor, h2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarity (mean over rows and over the two directions)."""
    _check_pair(h1, h2)
    _check_temperature(temperature)
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
    min_rows: int = 2,
) -> torch.Tensor | None:
    """Sum over pairs of modalities of the objective on the rows where both are present.

    Args:
        features: name → ``(n, k)`` projections.
        present: optional name → bool ``(n,)``; default: every row present.
        objective: ``"dcca"`` or ``"contrastive"``.
        min_rows: a pair with fewer common rows is skipped (>= 2: neither objective is defined on one row).

    Returns the summed loss, or ``None`` when no pair has ``min_rows`` common rows.
    """
    check_objective(objective)
    _check_min_rows(min_rows)
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
        if ha.shape[0] < min_rows:
            continue
        if objective == "dcca":
            term = dcca_loss(ha, hb, top_k, ridge, eps)
        else:
            term = info_nce_loss(ha, hb, temperature)
        total = term if total is None else total + term
    return total


def _as_projectors(guide) -> dict[str, nn.Module]:
    if isinstance(guide, nn.ModuleDict | Mapping):
        return dict(guide.items())
    raise TypeError(
        "SharedInfoLoss trains projectors: pass them as the guide, a name → module mapping (nn.ModuleDict), "
        f"got {type(guide).__name__}"
    )


class SharedInfoLoss(LossELBO):
    """The projector objective of JNF-Shared (stage 0) as a trainer loss.

    Per batch: Σ over pairs (a, b) of the projectors' modalities of the DCCA or InfoNCE loss of
    ``(g_a(x_a), g_b(x_b))`` on the rows where both are present (:func:`pairwise_loss`). It is a
    batch-level objective (covariances, negatives), not a mean of per-data-point terms; a trainer's
    batch-size-weighted epoch mean of it is still a fair progress measure.

    Design (as :class:`~pyro_mmvae.infer.jnf.JNFLoss`): the trainer calls
    ``differentiable_loss(model, guide, batch, beta=...)`` with the module being trained as
    ``guide``; here that is the projectors themselves, a name → module mapping (``nn.ModuleDict``)
    with modules ``(B, *shape) → (B, k)``. ``model`` and ``beta`` do not enter the objective (give
    ``fit`` ``None`` as the model). Weight decay is a setting of the optimizer, not of this loss. The
    loss holds no modules, so the projectors have one owner and checkpoints hold them once.

    A batch in which no pair has ``min_rows`` common rows contributes the empty sum 0, returned as
    a fresh leaf tensor that requires grad: back-propagating it gives no parameter a gradient, so
    the optimizer skips the step (Adam leaves parameters without gradient untouched).

    Args:
        objective: ``"dcca"`` or ``"contrastive"``.
        top_k, ridge, eps: DCCA options (see :func:`dcca_loss`).
        temperature: InfoNCE τ (see :func:`info_nce_loss`).
        min_rows: skip a pair with fewer common rows in the batch (>= 2).
    """

    def __init__(
        self,
        objective: str = "dcca",
        top_k: int | None = None,
        ridge: float = 1e-3,
        eps: float = 1e-9,
        temperature: float = 0.1,
        min_rows: int = 2,
    ):
        check_objective(objective)
        _check_top_k(top_k)
        _check_temperature(temperature)
        _check_min_rows(min_rows)
        super().__init__(num_particles=1)
        self.objective = objective
        self.top_k = None if top_k is None else int(top_k)
        self.ridge, self.eps, self.temperature = float(ridge), float(eps), float(temperature)
        self.min_rows = min_rows

    @staticmethod
    def features(projectors, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        """name → ``(B, k)`` projections ``g_j(x_j)`` of every row (missing rows too; the loss masks them)."""
        projectors = _as_projectors(projectors)
        check_projector_names(list(projectors), list(batch.data), "batch")
        return {n: g(batch.data[n]) for n, g in projectors.items()}

    def differentiable_loss(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, **unused) -> torch.Tensor:
        """The summed pairwise loss of ``batch``, a scalar with gradients into the projectors ``guide``.

        ``model`` is never used; ``beta`` and other trainer keywords do not enter the objective.
        """
        projectors = _as_projectors(guide)
        feats = self.features(projectors, batch)
        loss = pairwise_loss(
            feats,
            {n: batch.present[n] for n in feats},
            self.objective,
            self.top_k,
            self.ridge,
            self.eps,
            self.temperature,
            self.min_rows,
        )
        if loss is None:  # no pair shares min_rows rows: the empty sum, with no path to any parameter
            return torch.zeros((), device=batch.device, requires_grad=True)
        return loss
