"""``FitConfig``: every setting of one training stage in one validated dataclass.

A config is plain data (numbers, strings, schedules): it is written to the stage's ``config.json``,
compared with the checkpoint's on resume, and can be built once and reused with
:func:`dataclasses.replace`. What is not plain data — the model, the guide, the objective, the data,
the callbacks and which parameters train — is passed to :func:`~pyro_mmvae.train.fit` itself::

    config = FitConfig(epochs=100, batch_size=128, lr=1e-3, beta=LinearAnnealing(0.01, 1.0, 20),
                       run_dir="runs/demo", stage="joint")
    fit(model, guide, data, BetaELBO(), config)
    fit(model, guide, data, BetaELBO(), config, epochs=200, resume=True)   # keyword overrides

Fields are validated when the config is made (and again by ``dataclasses.replace``); a bad value
raises ``ValueError``/``TypeError`` naming the field, the expected and the received value.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import InputError, InputTypeError
from .optim import OptimizerSpec, check_optimizer
from .schedules import Schedule, as_beta_schedule, as_lr_schedule

# Settings that may differ between a run and its resumption without changing the result.
RUNTIME_FIELDS = ("checkpoint_every", "device", "progress", "tensorboard", "validate_distributions", "compile")
# when Pyro's validation (distribution arguments and supports, NaN/inf warnings) runs during training steps
VALIDATE_DISTRIBUTIONS = ("first_step", "always")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _optional_positive(name: str, value) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise InputError(f"{name} must be a finite number > 0 or None, got {value}")
    return value


def check_stage(stage: str) -> str:
    """``stage`` if it is a usable folder name, else ``ValueError``."""
    if not isinstance(stage, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stage):
        raise InputError(
            f"stage must be a non-empty folder name of letters, digits, '_', '-', '.' (not starting with '.'), "
            f"got {stage!r}"
        )
    return stage


@dataclass
class FitConfig:
    """Settings of one :func:`~pyro_mmvae.train.fit` stage.

    Args:
        epochs: number of epochs (>= 1).
        batch_size: rows per batch (>= 1), also for validation.
        lr: the optimizer's learning rate (> 0).
        beta: a number > 0 or a :class:`~pyro_mmvae.train.schedules.Schedule` (e.g.
            ``LinearAnnealing(0.01, 1.0, 10)``), evaluated once per epoch at the 0-based epoch index.
            The validation loss uses the schedule's ``final`` β, so it is comparable across epochs.
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"rmsprop"``, or a callable
            ``(params, lr) -> torch.optim.Optimizer``.
        optimizer_kwargs: extra keyword arguments of a named optimizer, e.g. ``{"weight_decay": 1e-4}``
            or ``{"betas": (0.9, 0.999)}``; plain values only (they go into ``config.json``).
        lr_schedule: ``None``, ``"cosine"``, ``"step"``, a ``CosineLR``/``StepLR`` spec, or a callable
            ``optimizer -> LRScheduler``; stepped once per epoch.
        grad_clip: clip the global gradient norm of the trained parameters to this value.
        grad_clip_value: clip every gradient element to ``[-v, v]`` (applied before ``grad_clip``).
        zero_nan_grads: replace NaN gradient elements by 0 (applied first).
        early_stopping_patience: stop after this many epochs without a validation improvement
            (needs validation data; adds an :class:`~pyro_mmvae.train.callbacks.EarlyStopping` callback).
        early_stopping_min_delta: an epoch improves on the best one when its validation loss is
            lower by more than this (>= 0); also decides which weights are "best".
        restore_best: with validation data, load the best-validation weights into model and guide at the end.
        loss_kwargs: extra keyword arguments of the objective's ``differentiable_loss`` (not ``beta``).
        seed: seeds Python, NumPy, torch and Pyro at the start of a fresh run, and the batch order.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, ...
        run_dir, stage: write checkpoints, config, log (and TensorBoard events) under
            ``<run_dir>/<stage>/``; ``run_dir=None`` writes nothing.
        resume: continue from ``<run_dir>/<stage>/checkpoint.pt`` when it exists (otherwise start
            fresh); settings must match the checkpoint's, except that ``epochs`` may grow when the
            LR schedule does not depend on it. A finished stage returns at once, its weights loaded.
        overwrite: with ``resume=False``, delete an existing checkpoint of the stage and start over
            (otherwise an existing checkpoint is an error, to protect finished runs).
        checkpoint_every: checkpoint every this many epochs (and always after the last one).
        progress: show a tqdm progress bar (adds a :class:`~pyro_mmvae.train.callbacks.ProgressBar`).
        tensorboard: also log per-epoch scalars to TensorBoard (needs ``run_dir`` and the
            ``tensorboard`` package; adds a :class:`~pyro_mmvae.train.callbacks.TensorBoardLogger`).
        validate_distributions: ``"first_step"`` (default): Pyro's validation (distribution arguments
            and supports, NaN/inf warnings of log-densities) checks the first training step of every
            run of ``fit``, where a model's mistakes show, and is off for the steps after it, where
            the trainer's own check of every step's loss reports non-finite values (it costs ~10 %
            of a small model's step). ``"always"``: Pyro's global setting for every step. Batches
            are always validated; Pyro's validation switched off globally stays off.
        compile: run each training step after a run's first as one compiled graph of the loss and its
            gradients (:mod:`~pyro_mmvae.train.compiled_step`): the same objective, drawing the same
            random numbers, 1.4-4x faster for small models on one CPU thread once compiled (seconds to
            a minute per batch shape; with a β schedule, from its final β on). Needs a model and guide
            whose parameters are module attributes and whose Python code reads no tensor values (the
            library's models, guides and objectives); otherwise ``fit`` warns once, saying why, and
            trains eagerly. Single-process training only.
    """

    epochs: int
    batch_size: int
    lr: float = 1e-3
    beta: float | Schedule = 1.0
    optimizer: OptimizerSpec = "adam"
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    lr_schedule: Any = None
    grad_clip: float | None = None
    grad_clip_value: float | None = None
    zero_nan_grads: bool = False
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    restore_best: bool = True
    loss_kwargs: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: Any = "auto"
    run_dir: str | os.PathLike | None = None
    stage: str = "main"
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 1
    progress: bool = True
    tensorboard: bool = False
    validate_distributions: str = "first_step"
    compile: bool = False

    def __post_init__(self) -> None:
        self.epochs = _positive_int("epochs", self.epochs)
        self.batch_size = _positive_int("batch_size", self.batch_size)
        self.checkpoint_every = _positive_int("checkpoint_every", self.checkpoint_every)
        lr = _optional_positive("lr", self.lr)
        if lr is None:
            raise InputError("lr must be a finite number > 0, got None")
        self.lr = lr
        self.grad_clip = _optional_positive("grad_clip", self.grad_clip)
        self.grad_clip_value = _optional_positive("grad_clip_value", self.grad_clip_value)
        if self.early_stopping_patience is not None:
            self.early_stopping_patience = _positive_int("early_stopping_patience", self.early_stopping_patience)
        self.early_stopping_min_delta = float(self.early_stopping_min_delta)
        if not (self.early_stopping_min_delta >= 0 and math.isfinite(self.early_stopping_min_delta)):
            raise InputError(
                f"early_stopping_min_delta must be a finite number >= 0, got {self.early_stopping_min_delta}"
            )
        if self.validate_distributions not in VALIDATE_DISTRIBUTIONS:
            raise InputError(
                f"validate_distributions must be one of {VALIDATE_DISTRIBUTIONS}, got {self.validate_distributions!r}"
            )
        if not isinstance(self.compile, bool | np.bool_):
            raise InputTypeError(f"compile must be True or False, got {self.compile!r}")
        self.compile = bool(self.compile)
        check_stage(self.stage)
        as_beta_schedule(self.beta)  # validates
        as_lr_schedule(self.lr_schedule)
        self.optimizer_kwargs = dict(self.optimizer_kwargs or {})
        check_optimizer(self.optimizer, self.optimizer_kwargs)
        self.loss_kwargs = dict(self.loss_kwargs or {})
        if "beta" in self.loss_kwargs:
            raise InputError("pass beta through fit's beta argument, not through loss_kwargs")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise InputTypeError(f"seed must be an integer, got {self.seed!r}")
        self.seed = int(self.seed)
        if self.compile and self.validate_distributions == "always":
            raise InputError(
                "compile=True and validate_distributions='always' contradict each other: a compiled step runs "
                "without Pyro's validation (it checks a run's first step); choose one"
            )
        if self.resume and self.overwrite:
            raise InputError("resume=True and overwrite=True contradict each other; choose one")
        if self.run_dir is None and (self.resume or self.tensorboard):
            raise InputError(f"{'resume' if self.resume else 'tensorboard'}=True needs a run_dir")

    @property
    def beta_schedule(self) -> Schedule:
        """``beta`` as a :class:`~pyro_mmvae.train.schedules.Schedule`."""
        return as_beta_schedule(self.beta)

    @classmethod
    def from_settings(cls, config: FitConfig | None, settings: Mapping[str, Any]) -> FitConfig:
        """``config`` with ``settings`` (field name → value) replacing its fields; a new config when ``config`` is None.

        Unknown names raise ``TypeError`` listing the valid ones.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise InputTypeError(f"unknown fit setting(s) {unknown}; FitConfig fields are {sorted(names)}")
        if config is None:
            missing = [n for n in ("epochs", "batch_size") if n not in settings]
            if missing:
                raise InputTypeError(f"fit needs {' and '.join(missing)} (as keywords or in a FitConfig)")
            return cls(**settings)
        if not isinstance(config, cls):
            raise InputTypeError(f"config must be a FitConfig, got {type(config).__name__}")
        values = {f.name: getattr(config, f.name) for f in fields(cls)} | dict(settings)
        return cls(**values)
