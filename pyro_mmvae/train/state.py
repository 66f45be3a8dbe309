"""What a training stage knows while it runs (``TrainingState``) and what it returns (``FitResult``).

Callbacks receive the ``TrainingState``: they read the model, the guide, the optimizer, the history
and the best validation epoch so far, and may ask the loop to stop by setting ``stop_requested``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import clone_state
from .config import FitConfig
from .run_files import StageFiles

LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "beta", "lr", "seconds")


class NonFiniteLossError(FloatingPointError):
    """The training or validation loss became NaN or infinite."""


@dataclass
class FitResult:
    """What :func:`~pyro_mmvae.train.fit` returns (and :func:`~pyro_mmvae.train.load_stage` reads back).

    ``history`` has one dict per completed epoch with the keys of ``LOG_COLUMNS``; ``epoch`` counts
    completed epochs (1-based), ``val_loss`` is ``None`` without validation data. ``best_epoch``
    uses the same 1-based count. Paths are ``None`` when the stage ran without ``run_dir``.
    """

    stage: str
    history: list[dict] = field(default_factory=list)
    epochs_run: int = 0
    steps: int = 0
    best_val_loss: float | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    finished: bool = False
    resumed_from: int | None = None
    stage_dir: Path | None = None
    checkpoint_path: Path | None = None
    best_path: Path | None = None
    log_path: Path | None = None
    config_path: Path | None = None

    @property
    def train_loss(self) -> list[float]:
        return [row["train_loss"] for row in self.history]

    @property
    def val_loss(self) -> list[float | None]:
        return [row["val_loss"] for row in self.history]


@dataclass
class BestSoFar:
    """The best validation epoch so far and its weights.

    An epoch improves when its validation loss is lower than ``best_val − min_delta``; ``bad_epochs``
    counts the epochs since the last improvement (what early stopping reads). ``weights`` holds
    ``{"model": state_dict, "guide": state_dict}`` copies of the best epoch (``None`` before one).
    """

    best_val: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    weights: dict[str, dict[str, torch.Tensor]] | None = None

    def update(self, val_loss: float, epoch: int, min_delta: float, model, guide) -> bool:
        """Record epoch ``epoch`` (1-based) with ``val_loss``; True when it is the new best."""
        if self.best_val is None or val_loss < self.best_val - min_delta:
            self.best_val, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            self.weights = {"model": clone_state(model), "guide": clone_state(guide)}
            return True
        self.bad_epochs += 1
        return False

    def counters(self) -> dict:
        """The checkpoint's ``"early_stopping"`` entry."""
        return {"best_val": self.best_val, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    @classmethod
    def from_checkpoint(cls, saved: dict, device: torch.device) -> BestSoFar:
        es = saved["early_stopping"]
        weights = None
        if saved["best"] is not None:
            weights = {k: {n: t.to(device) for n, t in sd.items()} for k, sd in saved["best"].items()}
        return cls(es["best_val"], es["best_epoch"], int(es["bad_epochs"]), weights)


@dataclass
class TrainingState:
    """The live state of one stage, shared by the loop and its callbacks.

    ``epoch`` is the number of completed epochs, ``step`` the number of optimizer steps; ``improved``
    tells whether the epoch that just ended is the new best; ``record`` is the content of the stage's
    ``config.json`` (settings, state-dict signatures, versions). ``running_loss`` is the mean training
    loss per data point of the epoch in progress.
    """

    model: torch.nn.Module
    guide: torch.nn.Module
    objective: Any
    config: FitConfig
    record: dict
    device: torch.device
    trained: list[tuple[str, torch.nn.Parameter]]
    files: StageFiles | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    history: list[dict] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    best: BestSoFar = field(default_factory=BestSoFar)
    improved: bool = False
    stop_requested: bool = False
    resumed_from: int | None = None
    loss_sum: float = 0.0
    loss_count: int = 0
    epoch_start_step: int = 0  # ``step`` when the epoch in progress began (for messages)
    run_start_step: int = 0  # ``step`` when this run of fit began (fresh: 0; resumed: the checkpoint's)
    parallel: Any = None  # a DataParallel under torch.distributed with > 1 process, else None
    compiled: Any = None  # the CompiledGradients of fit(compile=True), else None

    @property
    def is_main(self) -> bool:
        """True in the process that writes files and shows progress (always, without data parallelism)."""
        return self.parallel is None or self.parallel.world.is_main

    @property
    def stage(self) -> str:
        return self.config.stage

    @property
    def finished(self) -> bool:
        """True once the last epoch ran or a callback stopped the stage."""
        return self.stop_requested or self.epoch >= self.config.epochs

    @property
    def running_loss(self) -> float:
        return self.loss_sum / max(self.loss_count, 1)

    def result(self) -> FitResult:
        files = self.files
        return FitResult(
            stage=self.stage,
            history=list(self.history),
            epochs_run=self.epoch,
            steps=self.step,
            best_val_loss=self.best.best_val,
            best_epoch=self.best.best_epoch,
            stopped_early=self.stop_requested,
            finished=True,
            resumed_from=self.resumed_from,
            stage_dir=files.dir if files else None,
            checkpoint_path=files.checkpoint if files else None,
            best_path=(files.best if files and self.best.best_epoch is not None else None),
            log_path=files.log if files else None,
            config_path=files.config if files else None,
        )
