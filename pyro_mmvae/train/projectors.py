"""The projector stage of JNF-Shared: train projectors g_j with DCCA or contrastive learning, then freeze them."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..infer.shared_info import SharedInfoLoss, check_objective, check_projector_names
from ..nn.projectors import freeze
from .loop import fit


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
    *,
    run_dir=None,
    stage: str = "projectors",
    resume: bool = False,
    device=None,
    callbacks=None,
) -> list[float]:
    """Train projectors g_j jointly with DCCA or contrastive learning (one ``fit`` stage), then freeze them.

    Args:
        projectors: name → module ``(B, *shape) → (B, k)`` for at least two modalities of ``dataset``
            (an ``nn.ModuleDict``, or a dict of modules: trained in place either way).
        dataset: a :class:`~pyro_mmvae.data.MultimodalDataset` (anything :func:`~pyro_mmvae.train.fit`
            accepts as ``train_data`` and that has ``names``).
        objective: ``"dcca"`` or ``"contrastive"`` (see :class:`~pyro_mmvae.infer.SharedInfoLoss`).
        epochs, batch_size, lr: the Adam training schedule (``fit``'s batching: every row is used
            each epoch, the last batch may be smaller).
        weight_decay: Adam's (coupled, L2) weight decay of the projector parameters.
        seed: ``fit``'s seed: the batch order of every epoch, and the global RNGs at the start of a
            fresh run.
        progress: show ``fit``'s progress bar.
        top_k, ridge: DCCA options (see :func:`~pyro_mmvae.infer.dcca_loss`); temperature: InfoNCE τ.
        run_dir, stage: checkpoint the stage under ``<run_dir>/<stage>/`` (``None``: write nothing).
        resume: continue ``<run_dir>/<stage>`` from its checkpoint; a finished stage is loaded, not retrained.
        device: where to train; default: the device of the projectors' parameters.
        callbacks: extra ``fit`` callbacks (e.g. a tracker).

    Returns:
        the mean training loss of each epoch (``fit``'s ``train_loss`` history: ``epochs`` floats,
        also on the resume of a finished stage). The projectors end frozen (eval mode,
        ``requires_grad=False``).
    """
    check_objective(objective)
    names = list(projectors)
    check_projector_names(names, dataset.names, "dataset")
    module = projectors if isinstance(projectors, nn.ModuleDict) else nn.ModuleDict(dict(projectors))
    first = next(module.parameters(), None)
    if first is None:
        raise ValueError("the projectors have no parameters to train")
    if not float(weight_decay) >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    result = fit(
        None,  # the objective has no generative model
        module,
        dataset,
        SharedInfoLoss(objective, top_k=top_k, ridge=ridge, temperature=temperature),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer_kwargs={"weight_decay": float(weight_decay)} if weight_decay else {},
        params=module,
        train_mode_modules=[module],
        run_dir=run_dir,
        stage=stage,
        resume=resume,
        seed=seed,
        device=first.device if device is None else device,
        progress=progress,
        callbacks=callbacks,
    )
    for n in names:
        freeze(module[n])
    return result.train_loss
