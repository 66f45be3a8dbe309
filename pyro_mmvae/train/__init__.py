"""Training: ``fit`` with one validated :class:`FitConfig`, callbacks, run folders, checkpoints and schedules.

- :mod:`~pyro_mmvae.train.loop` — :func:`fit`, the loop itself;
- :mod:`~pyro_mmvae.train.config` — :class:`FitConfig`, every setting of a stage;
- :mod:`~pyro_mmvae.train.callbacks` — progress bar, CSV log, TensorBoard, early stopping, checkpoints, yours;
- :mod:`~pyro_mmvae.train.optim` — optimizers by name or factory;
- :mod:`~pyro_mmvae.train.schedules` — β and learning-rate schedules;
- :mod:`~pyro_mmvae.train.run_files`, :mod:`~pyro_mmvae.train.checkpoint`, :mod:`~pyro_mmvae.train.stages` —
  the run folder, atomic ``weights_only`` checkpoints with RNG states, multistage runs;
- :mod:`~pyro_mmvae.train.projectors` — the JNF-Shared projector stage;
- :mod:`~pyro_mmvae.train.ensemble` — :func:`fit_ensemble`, several seeds of one architecture trained in one
  vectorised loop (``torch.func.vmap``), each member equal to its own ``fit``;
- :mod:`~pyro_mmvae.train.compiled_step` — ``fit(compile=True)``: the loss and its gradients traced into one
  graph and compiled (:class:`CompiledGradients`, :class:`StepCompileError`);
- :mod:`~pyro_mmvae.train.data_parallel` — the same ``fit`` over N processes started by ``torchrun``;
- :mod:`~pyro_mmvae.train.tracking` — MLflow and Weights & Biases loggers (optional extras).
"""

from .callbacks import (
    Callback,
    Checkpoint,
    CSVLogger,
    EarlyStopping,
    EpochEndFunction,
    ProgressBar,
    TensorBoardLogger,
)
from .checkpoint import CheckpointError, CheckpointMismatchError
from .compiled_step import CompiledGradients, StepCompileError
from .config import FitConfig
from .ensemble import EnsembleResult, Member, VectorisationError, fit_ensemble, members_from
from .loop import fit
from .projectors import train_projectors
from .schedules import Constant, CosineLR, LinearAnnealing, Schedule, StepLR
from .stages import load_stage
from .state import FitResult, NonFiniteLossError, TrainingState

__all__ = [
    "fit",
    "fit_ensemble",
    "Member",
    "members_from",
    "EnsembleResult",
    "VectorisationError",
    "FitConfig",
    "CompiledGradients",
    "StepCompileError",
    "FitResult",
    "NonFiniteLossError",
    "TrainingState",
    "load_stage",
    "train_projectors",
    "Callback",
    "EpochEndFunction",
    "EarlyStopping",
    "CSVLogger",
    "Checkpoint",
    "TensorBoardLogger",
    "ProgressBar",
    "Schedule",
    "Constant",
    "LinearAnnealing",
    "CosineLR",
    "StepLR",
    "CheckpointError",
    "CheckpointMismatchError",
]
