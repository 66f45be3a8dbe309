"""Run folders: one sub-folder per training stage, and the files each stage keeps.

Layout (``run_dir`` given; stages of one run never overwrite each other — e.g. ``"joint"`` then
``"flows"`` for a two-stage model)::

    <run_dir>/
      <stage>/                  "main" unless the config names another stage
        config.json             settings, model/guide state-dict signatures (key -> shape), versions
        checkpoint.pt           the full training state at the last checkpointed epoch: model and
                                guide weights, optimizer and LR-scheduler state, best-epoch counters
                                and best weights so far, history, RNG states (torch, CUDA, NumPy,
                                Python), callback states, the config
        best.pt                 model and guide weights of the best validation epoch
        log.csv                 one row per epoch: epoch, step, train_loss, val_loss, beta, lr, seconds
        tensorboard/            event files (with a TensorBoardLogger)

Every file is written atomically (temporary file in the same folder + ``os.replace``): an
interrupted or failed write never replaces a good file. ``.pt`` files hold only tensors and plain
Python values and load with ``torch.load(path, weights_only=True)``.

After a kill (SIGKILL, power cut): opening the stage again (:meth:`StageFiles.open_for`, which every
``fit`` with a ``run_dir`` calls) sweeps the temporary files the killed process left
(:func:`~pyro_mmvae.tempfiles.sweep_temporary_files`). ``checkpoint.pt`` is the authority:
``best.pt`` is written before it in each epoch and, when a stage is resumed, rewritten from the
checkpoint's best weights if its epoch differs (:meth:`StageFiles.repair_best`), so after a resume
the two always agree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..tempfiles import sweep_temporary_files
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointMismatchError,
    check_signature,
    load_checkpoint,
    save_checkpoint,
)

CHECKPOINT_FILE, BEST_FILE, CONFIG_FILE, LOG_FILE, TENSORBOARD_DIR = (
    "checkpoint.pt",
    "best.pt",
    "config.json",
    "log.csv",
    "tensorboard",
)


class StageFiles:
    """The paths of stage ``stage`` of the run in ``run_dir`` (nothing is created until written)."""

    def __init__(self, run_dir: str | os.PathLike, stage: str):
        self.dir = Path(run_dir) / stage
        self.checkpoint = self.dir / CHECKPOINT_FILE
        self.best = self.dir / BEST_FILE
        self.config = self.dir / CONFIG_FILE
        self.log = self.dir / LOG_FILE
        self.tensorboard = self.dir / TENSORBOARD_DIR

    def clear(self) -> None:
        """Delete the stage's files (its folder and other contents stay)."""
        for f in (self.checkpoint, self.best, self.config, self.log):
            f.unlink(missing_ok=True)
        if self.tensorboard.is_dir():
            shutil.rmtree(self.tensorboard)

    def last_checkpoint_note(self) -> str:
        """What happened to the checkpoint, for the end of an error message."""
        if self.checkpoint.exists():
            return f"the last checkpoint {self.checkpoint} is left as it was"
        return "no checkpoint had been written yet"

    def open_for(self, resume: bool, overwrite: bool) -> dict | None:
        """The checkpoint to resume from (``None``: start fresh), after clearing the stage if ``overwrite``.

        First sweeps the stage folder of temporary files left by a killed writer (only the library's
        own naming, only files no live process holds; see :mod:`pyro_mmvae.tempfiles`).

        Raises ``FileExistsError`` when a checkpoint exists and neither ``resume`` nor ``overwrite`` is set.
        """
        sweep_temporary_files(self.dir)
        if self.checkpoint.exists():
            if resume:
                return load_checkpoint(self.checkpoint)
            if not overwrite:
                raise FileExistsError(
                    f"{self.checkpoint} already exists; pass resume=True to continue it or overwrite=True to start over"
                )
        if overwrite:
            self.clear()
        return None

    def best_epoch_on_disk(self) -> int | None:
        """The ``epoch`` recorded in ``best.pt`` (``None``: no file, or one that cannot be read)."""
        if not self.best.is_file():
            return None
        try:
            saved = torch.load(self.best, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # torch raises several types for unreadable files: treat as absent
            return None
        epoch = saved.get("epoch") if isinstance(saved, dict) else None
        return int(epoch) if isinstance(epoch, int) else None

    def repair_best(self, saved: dict) -> bool:
        """Make ``best.pt`` agree with checkpoint ``saved`` (the authority); True when it was rewritten.

        The checkpoint holds the best epoch so far (``saved["early_stopping"]["best_epoch"]``,
        ``best_val``) and its weights (``saved["best"]``). A ``best.pt`` with another epoch (a kill
        between the two writes of an epoch, or a checkpoint interval > 1) is rewritten from them,
        exactly as the ``Checkpoint`` callback would have written it; without a best epoch (no
        validation data) a ``best.pt`` is deleted.
        """
        counters, weights = saved.get("early_stopping") or {}, saved.get("best")
        epoch = counters.get("best_epoch")
        if epoch is None or weights is None:
            if self.best.exists():
                self.best.unlink()
                return True
            return False
        if self.best_epoch_on_disk() == int(epoch):
            return False
        if "config" not in saved:
            raise CheckpointError(f"{self.checkpoint} has best weights but no config; cannot rewrite {self.best}")
        save_checkpoint(
            {"epoch": int(epoch), "val_loss": counters["best_val"], "config": saved["config"], **weights}, self.best
        )
        return True


def check_resumable(
    saved: dict, record: dict, path: Path, model: torch.nn.Module, guide: torch.nn.Module, defaults: dict
) -> None:
    """Clear errors when checkpoint ``saved`` does not belong to this stage, model, guide or settings.

    ``record`` is the new run's ``config.json`` content; ``defaults`` gives the value of a setting that
    a checkpoint written before the setting existed implicitly used.
    """
    stage = record["stage"]
    if saved.get("format") != CHECKPOINT_FORMAT or "config" not in saved:
        raise CheckpointMismatchError(f"{path} is not a pyro_mmvae fit checkpoint (format {saved.get('format')!r})")
    if saved.get("stage") != stage:
        raise CheckpointMismatchError(f"{path} belongs to stage {saved.get('stage')!r}, not {stage!r}")
    check_signature(saved["config"]["model"]["state"], model, "model", str(path))
    check_signature(saved["config"]["guide"]["state"], guide, "guide", str(path))
    old, new = saved["config"]["settings"], record["settings"]
    old = {**{k: v for k, v in defaults.items() if k in new}, **old}
    diff = sorted(k for k in set(old) | set(new) if k != "epochs" and old.get(k) != new.get(k))
    if diff:
        details = "; ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in diff)
        raise CheckpointMismatchError(
            f"cannot resume {path}: settings differ ({details}). Resume with the original settings, "
            "pass overwrite=True (and resume=False) to start the stage over, or use another stage name"
        )
