"""Multistage runs: read a finished stage back (its weights into modules, its history into a ``FitResult``)."""

from __future__ import annotations

import os

import torch

from .checkpoint import CHECKPOINT_FORMAT, CheckpointMismatchError, load_checkpoint, load_weights
from .config import check_stage
from .run_files import StageFiles
from .state import FitResult


def load_stage(
    run_dir: str | os.PathLike,
    stage: str,
    model: torch.nn.Module | None = None,
    guide: torch.nn.Module | None = None,
    *,
    best: bool = True,
    require_finished: bool = True,
) -> FitResult:
    """Load the final weights of a trained stage into ``model`` and/or ``guide`` (for the next stage).

    Args:
        run_dir, stage: the stage folder ``<run_dir>/<stage>/``.
        model, guide: modules to fill (either may be ``None`` to skip it); their state-dict keys and
            shapes must match the checkpoint's, else :class:`CheckpointMismatchError`.
        best: load the best-validation weights when the stage had validation data (what ``fit``
            leaves in the modules with ``restore_best=True``); otherwise the last epoch's.
        require_finished: raise if the stage did not finish (interrupted runs should be resumed).

    Returns:
        the stage's :class:`~pyro_mmvae.train.FitResult` (history, best epoch, paths).
    """
    stage = check_stage(stage)
    files = StageFiles(run_dir, stage)
    saved = load_checkpoint(files.checkpoint)
    if saved.get("format") != CHECKPOINT_FORMAT or saved.get("stage") != stage:
        raise CheckpointMismatchError(f"{files.checkpoint} is not a checkpoint of stage {stage!r}")
    if require_finished and not saved["finished"]:
        raise RuntimeError(
            f"stage {stage!r} in {run_dir} stopped after epoch {saved['epoch']} of "
            f"{saved['config']['settings']['epochs']}; resume it with fit(..., resume=True), "
            "or pass require_finished=False to load it anyway"
        )
    weights = saved["best"] if (best and saved["best"] is not None) else saved
    for name, module in (("model", model), ("guide", guide)):
        if module is not None:
            load_weights(module, weights[name], name, str(files.checkpoint))
    es = saved["early_stopping"]
    return FitResult(
        stage=stage,
        history=list(saved["history"]),
        epochs_run=int(saved["epoch"]),
        steps=int(saved["step"]),
        best_val_loss=es["best_val"],
        best_epoch=es["best_epoch"],
        stopped_early=bool(saved["stopped_early"]),
        finished=bool(saved["finished"]),
        resumed_from=None,
        stage_dir=files.dir,
        checkpoint_path=files.checkpoint,
        best_path=files.best if es["best_epoch"] is not None else None,
        log_path=files.log,
        config_path=files.config,
    )
