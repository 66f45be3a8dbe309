"""``fit``: train a model/guide pair with any ELBO, with checkpoints, exact resume and multiple stages.

Run-folder layout (``run_dir`` given; one sub-folder per stage, so stages of one run never overwrite
each other — e.g. ``"joint"`` then ``"flows"`` for a two-stage model)::

    <run_dir>/
      <stage>/                  "main" unless fit(..., stage=...) names another
        config.json             settings, model/guide state-dict signatures (key -> shape), versions
        checkpoint.pt           the full training state at the last checkpointed epoch: model and
                                guide weights, optimizer and LR-scheduler state, early-stopping state
                                with the best weights so far, history, RNG states (torch, CUDA,
                                NumPy, Python), the config. Written every ``checkpoint_every``
                                epochs and at the end.
        best.pt                 model and guide weights of the best validation epoch (with val_data)
        log.csv                 one row per epoch: epoch, step, train_loss, val_loss, beta, lr, seconds
        tensorboard/            event files (tensorboard=True)

Every file is written atomically (temporary file in the same folder + ``os.replace``): an
interrupted or failed write never replaces a good file. ``.pt`` files hold only tensors and plain
Python values and load with ``torch.load(path, weights_only=True)``.

Reproducibility: a fresh run calls :func:`~pyro_mmvae.utils.set_seed` with ``seed``; datasets are
batched with :func:`~pyro_mmvae.data.dataset.iterate_batches`, whose epoch-``e`` order depends only
on ``(seed, e)``; checkpoints store every RNG state. So ``resume=True`` after an interruption
reproduces the parameters of an uninterrupted run exactly (same device and library versions).
This holds for datasets; an arbitrary iterable of batches (e.g. a shuffling ``DataLoader``) is
re-iterated every epoch as it is, and exact resume then depends on that iterable.

Multistage training: train stage 1, then later (same or new process) restore it with
:func:`load_stage` and train stage 2 on a subset of the parameters::

    fit(model, joint_guide, data, epochs=100, batch_size=128, run_dir=run, stage="joint")
    load_stage(run, "joint", model, joint_guide)
    # stage 2: only the flow experts train; model and joint encoder stay frozen, in eval mode
    fit(model, flow_guide, data, elbo=stage2_objective, epochs=50, batch_size=128, run_dir=run,
        stage="flows", params=flow_guide.experts, train_mode_modules=[flow_guide.experts])
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from tqdm import tqdm

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset, iterate_batches
from ..utils import atomic_write, atomic_write_json, resolve_device, set_seed
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointMismatchError,
    check_signature,
    clone_state,
    get_rng_state,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    set_rng_state,
    state_signature,
)
from .elbo import BetaELBO
from .schedules import (
    Schedule,
    as_beta_schedule,
    as_lr_schedule,
    build_lr_scheduler,
    lr_schedule_config,
    lr_schedule_depends_on_epochs,
)

LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "beta", "lr", "seconds")
CHECKPOINT_FILE, BEST_FILE, CONFIG_FILE, LOG_FILE, TENSORBOARD_DIR = (
    "checkpoint.pt",
    "best.pt",
    "config.json",
    "log.csv",
    "tensorboard",
)

# Settings that may differ between a run and its resumption without changing the result.
_RUNTIME_KEYS = ("checkpoint_every", "device", "progress", "tensorboard")


class NonFiniteLossError(FloatingPointError):
    """The training or validation loss became NaN or infinite."""


@dataclass
class FitResult:
    """What :func:`fit` returns (and :func:`load_stage` reads back).

    ``history`` has one dict per completed epoch with the keys of ``LOG_COLUMNS``; ``epoch`` counts
    completed epochs (1-based), ``val_loss`` is ``None`` without validation data. ``best_epoch``
    uses the same 1-based count. Paths are ``None`` when ``fit`` ran without ``run_dir``.
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


# ---------------------------------------------------------------------- small helpers


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _optional_positive(name: str, value) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0 or None, got {value}")
    return value


def _check_stage(stage: str) -> str:
    if not isinstance(stage, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stage):
        raise ValueError(
            f"stage must be a non-empty folder name of letters, digits, '_', '-', '.' (not starting with '.'), "
            f"got {stage!r}"
        )
    return stage


def _jsonable(x: Any) -> Any:
    """A JSON-able description of ``x``; objects without a plain form become ``"<TypeName>"``."""
    if x is None or isinstance(x, bool | str):
        return x
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else repr(x)
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return {"tensor": list(x.shape), "dtype": str(x.dtype)}
    return f"<{type(x).__qualname__}>"


def _normalised(x: Any) -> Any:
    """JSON round trip, so that a fresh config compares equal to one read back from a checkpoint."""
    return json.loads(json.dumps(_jsonable(x)))


class _Source:
    """Training or validation data: a dataset (batched by ``iterate_batches``) or an iterable of batches."""

    def __init__(self, data, what: str):
        self.what = what
        if isinstance(data, MultimodalBatch):
            data = MultimodalDataset(data.data, data.present, data.labels)
        if hasattr(data, "__getitems__") or (isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__")):
            self.kind = "dataset"
        elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            self.kind = "batches" if len(data) and isinstance(data[0], MultimodalBatch) else "dataset"
        elif hasattr(data, "__iter__"):
            if iter(data) is data:
                raise TypeError(
                    f"{what} is a one-shot iterator; it cannot be re-iterated every epoch. Pass a dataset "
                    "(with __len__ and __getitem__/__getitems__), a list of MultimodalBatch, or a DataLoader"
                )
            self.kind = "batches"
        else:
            raise TypeError(
                f"{what} must be a dataset (__len__ and __getitem__/__getitems__) or an iterable of MultimodalBatch, "
                f"got {type(data).__name__}"
            )
        self.data = data
        self.size = len(data) if hasattr(data, "__len__") else None
        if self.size == 0:
            raise ValueError(f"{what} is empty")

    def batches(self, batch_size: int, shuffle: bool, seed: int, epoch: int) -> Iterable[MultimodalBatch]:
        if self.kind == "dataset":
            return iterate_batches(self.data, batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
        return iter(self.data)

    def describe(self) -> dict:
        return {"kind": self.kind, "type": type(self.data).__qualname__, "size": self.size}


def _trained_parameters(model, guide, params) -> list[tuple[str, torch.nn.Parameter]]:
    """``(qualified name, parameter)`` of the parameters to train, named ``model.<key>`` / ``guide.<key>``."""
    names: dict[int, str] = {}
    for prefix, module in (("model", model), ("guide", guide)):
        for key, p in module.named_parameters():
            names.setdefault(id(p), f"{prefix}.{key}")
    if params is None:
        chosen = [p for p in chain(model.parameters(), guide.parameters()) if p.requires_grad]
    else:
        items = [params] if isinstance(params, torch.nn.Module | torch.Tensor) else list(params)
        chosen = []
        for item in items:
            if isinstance(item, torch.nn.Module):
                chosen.extend(item.parameters())
            elif isinstance(item, torch.Tensor):
                chosen.append(item)
            else:
                raise TypeError(f"params must hold nn.Parameters or nn.Modules, got {type(item).__name__}")
    out, seen = [], set()
    for p in chosen:
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) not in names:
            raise ValueError(
                f"a parameter of shape {tuple(p.shape)} passed in params belongs to neither the model nor the guide; "
                "trained parameters must live in them so that checkpoints include them"
            )
        out.append((names[id(p)], p))
    if not out:
        raise ValueError(
            "there are no parameters to train (params is empty or every parameter has requires_grad=False)"
        )
    return out


@contextmanager
def _only_these_require_grad(model, guide, trained):
    """Inside: exactly the trained parameters require grad (frozen ones cost no backward pass). Restored after."""
    every = {id(p): p for p in chain(model.parameters(), guide.parameters())}
    before = {k: p.requires_grad for k, p in every.items()}
    keep = {id(p) for _, p in trained}
    try:
        for k, p in every.items():
            p.requires_grad_(k in keep)
        yield
    finally:
        for k, p in every.items():
            p.requires_grad_(before[k])


@contextmanager
def _restored_modes(modules):
    """Restore every submodule's ``training`` flag on exit."""
    flags = [(m, m.training) for top in modules for m in top.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _set_train_mode(model, guide, train_mode_modules) -> None:
    if train_mode_modules is None:
        model.train()
        guide.train()
        return
    model.eval()
    guide.eval()
    for m in train_mode_modules:
        m.train()


class _StageFiles:
    def __init__(self, run_dir, stage: str):
        self.dir = Path(run_dir) / stage
        self.checkpoint = self.dir / CHECKPOINT_FILE
        self.best = self.dir / BEST_FILE
        self.config = self.dir / CONFIG_FILE
        self.log = self.dir / LOG_FILE
        self.tensorboard = self.dir / TENSORBOARD_DIR

    def clear(self) -> None:
        for f in (self.checkpoint, self.best, self.config, self.log):
            f.unlink(missing_ok=True)
        if self.tensorboard.is_dir():
            shutil.rmtree(self.tensorboard)


def _write_log(path: Path, rows: list[dict]) -> None:
    """Rewrite the CSV log (atomically) with ``rows``."""

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LOG_COLUMNS)
        for row in rows:
            w.writerow(_csv_row(row))

    atomic_write(path, write, binary=False)


def _csv_row(row: dict) -> list:
    return ["" if row[k] is None else (repr(row[k]) if isinstance(row[k], float) else row[k]) for k in LOG_COLUMNS]


def _append_log(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow(_csv_row(row))


def _tensorboard_writer(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "tensorboard=True needs the 'tensorboard' package: pip install tensorboard "
            "(or pip install 'pyro-mmvae[tensorboard]')"
        ) from err
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _describe_elbo(elbo) -> dict:
    attrs = {k: v for k, v in vars(elbo).items() if not k.startswith("_")} if hasattr(elbo, "__dict__") else {}
    return {"class": f"{type(elbo).__module__}.{type(elbo).__qualname__}", "attributes": _jsonable(attrs)}


def _result(stage, files, history, es, epoch, step, stopped_early, finished, resumed_from) -> FitResult:
    return FitResult(
        stage=stage,
        history=list(history),
        epochs_run=epoch,
        steps=step,
        best_val_loss=es["best_val"],
        best_epoch=es["best_epoch"],
        stopped_early=stopped_early,
        finished=finished,
        resumed_from=resumed_from,
        stage_dir=files.dir if files else None,
        checkpoint_path=files.checkpoint if files else None,
        best_path=(files.best if files and es["best_epoch"] is not None else None),
        log_path=files.log if files else None,
        config_path=files.config if files else None,
    )


def _check_resumable(saved: dict, config: dict, stage: str, path: Path, model, guide) -> None:
    """Clear errors when a checkpoint does not belong to this stage, model, guide or settings."""
    if saved.get("format") != CHECKPOINT_FORMAT or "config" not in saved:
        raise CheckpointMismatchError(f"{path} is not a pyro_mmvae fit checkpoint (format {saved.get('format')!r})")
    if saved.get("stage") != stage:
        raise CheckpointMismatchError(f"{path} belongs to stage {saved.get('stage')!r}, not {stage!r}")
    check_signature(saved["config"]["model"]["state"], model, "model", str(path))
    check_signature(saved["config"]["guide"]["state"], guide, "guide", str(path))
    old, new = saved["config"]["settings"], config["settings"]
    diff = sorted(k for k in set(old) | set(new) if k != "epochs" and old.get(k) != new.get(k))
    if diff:
        details = "; ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in diff)
        raise CheckpointMismatchError(
            f"cannot resume {path}: settings differ ({details}). Resume with the original settings, "
            "pass overwrite=True (and resume=False) to start the stage over, or use another stage name"
        )


# ---------------------------------------------------------------------- the trainer


def fit(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    train_data,
    *,
    elbo=None,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    beta: float | Schedule = 1.0,
    val_data=None,
    early_stopping_patience: int | None = None,
    early_stopping_min_delta: float = 0.0,
    restore_best: bool = True,
    lr_schedule=None,
    grad_clip: float | None = None,
    grad_clip_value: float | None = None,
    zero_nan_grads: bool = False,
    params=None,
    run_dir: str | os.PathLike | None = None,
    stage: str = "main",
    checkpoint_every: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    device: str | torch.device = "auto",
    tensorboard: bool = False,
    progress: bool = True,
    loss_kwargs: Mapping[str, Any] | None = None,
    train_mode_modules: Iterable[torch.nn.Module] | None = None,
    callbacks: Iterable[Callable[[dict], None]] | None = None,
) -> FitResult:
    """Train ``model`` and ``guide`` with Adam on ``elbo.differentiable_loss``.

    Each step computes ``elbo.differentiable_loss(model, guide, batch, beta=β, **loss_kwargs)``
    (a per-data-point MEAN, so learning rates do not depend on ``batch_size``), back-propagates,
    clips and takes an Adam step. Each epoch ends with a validation pass (``torch.no_grad``, every
    module in eval mode) when ``val_data`` is given, early stopping, the LR-scheduler step, a log
    row and (every ``checkpoint_every`` epochs and at the end) a checkpoint.

    Args:
        model, guide: ``nn.Module``s (``PyroModule``s) holding every parameter to train; they are
            moved to ``device``. Parameters must live in these modules (not in Pyro's global param
            store) so that the optimizer and the checkpoints see them.
        train_data: a dataset (``__len__`` plus ``__getitems__``/``__getitem__``, e.g.
            ``MultimodalDataset``, ``CirclesSquares``), batched with ``iterate_batches(dataset,
            batch_size, shuffle=True, seed=seed, epoch=e)``; or a ``MultimodalBatch`` (a small
            in-memory dataset); or a re-iterable of ``MultimodalBatch`` (list, ``DataLoader``) used
            as it is every epoch (then ``batch_size`` is unused, and exact resume is only as
            reproducible as that iterable).
        elbo: any object with ``differentiable_loss(model, guide, batch, beta=..., **loss_kwargs)``
            (every ``pyro.infer.ELBO`` of the library); default ``BetaELBO()``.
        epochs: number of epochs (>= 1).
        batch_size: rows per batch (>= 1), also for validation.
        lr: Adam's learning rate.
        beta: a number > 0 or a :class:`~pyro_mmvae.infer.schedules.Schedule` (e.g.
            ``LinearAnnealing(0.01, 1.0, 10)``), evaluated once per epoch at the 0-based epoch
            index. The validation loss uses the schedule's ``final`` β, so it is comparable across epochs.
        val_data: optional validation data (same forms as ``train_data``; not shuffled).
        early_stopping_patience: stop after this many epochs without a validation improvement of
            more than ``early_stopping_min_delta`` (needs ``val_data``).
        restore_best: with ``val_data``, load the best-validation weights into model and guide at the end.
        lr_schedule: ``None``, ``"cosine"``, ``"step"``, a ``CosineLR``/``StepLR`` spec, or a callable
            ``optimizer -> LRScheduler``; stepped once per epoch.
        grad_clip: clip the global gradient norm of the trained parameters to this value.
        grad_clip_value: clip every gradient element to ``[-v, v]`` (applied before ``grad_clip``).
        zero_nan_grads: replace NaN gradient elements by 0 (applied first).
        params: which parameters to train: ``None`` (every parameter of model and guide with
            ``requires_grad``), or parameters and/or modules of the model or guide (e.g. only the
            flow experts of a guide). The others are frozen during the call (``requires_grad``
            restored afterwards) and still saved in checkpoints.
        run_dir, stage: write checkpoints, config, log (and TensorBoard events) under
            ``<run_dir>/<stage>/`` (see the module docstring). ``None``: write nothing.
        checkpoint_every: checkpoint every this many epochs (and always after the last one).
        resume: continue from ``<run_dir>/<stage>/checkpoint.pt`` when it exists (otherwise start
            fresh); settings must match the checkpoint's, except that ``epochs`` may grow when the
            LR schedule does not depend on it. A finished stage returns at once, with its final
            weights loaded.
        overwrite: with ``resume=False``, delete an existing checkpoint of the stage and start over
            (otherwise an existing checkpoint is an error, to protect finished runs).
        seed: seeds Python, NumPy, torch and Pyro at the start of a fresh run, and the batch order.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, ...
        tensorboard: also log per-epoch scalars to TensorBoard (needs ``run_dir`` and the
            ``tensorboard`` package).
        progress: show a tqdm progress bar over epochs with the running loss.
        loss_kwargs: extra keyword arguments for ``differentiable_loss`` (not ``beta``).
        train_mode_modules: modules to put in train mode during training steps; ``None`` means
            model and guide. When given, model and guide are in eval mode except these (e.g. a
            frozen encoder keeps its normalisation statistics fixed).
        callbacks: called with each epoch's history row after its checkpoint; an exception raised
            there interrupts training (the stage can be resumed from its last checkpoint).

    Returns:
        :class:`FitResult`.

    Raises:
        ValueError: invalid arguments, empty data, a non-resumable checkpoint.
        NonFiniteLossError: the loss became NaN/inf (names epoch and step; the last checkpoint
            is left as it was).
        FileExistsError: the stage already has a checkpoint and neither ``resume`` nor ``overwrite`` is set.
    """
    # ------------------------------------------------------------ arguments
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
    lr = _optional_positive("lr", lr)
    if lr is None:
        raise ValueError("lr must be a finite number > 0, got None")
    grad_clip = _optional_positive("grad_clip", grad_clip)
    grad_clip_value = _optional_positive("grad_clip_value", grad_clip_value)
    if early_stopping_patience is not None:
        early_stopping_patience = _positive_int("early_stopping_patience", early_stopping_patience)
    early_stopping_min_delta = float(early_stopping_min_delta)
    if not (early_stopping_min_delta >= 0 and math.isfinite(early_stopping_min_delta)):
        raise ValueError(f"early_stopping_min_delta must be a finite number >= 0, got {early_stopping_min_delta}")
    stage = _check_stage(stage)
    schedule = as_beta_schedule(beta)
    lr_spec = as_lr_schedule(lr_schedule)
    loss_kwargs = dict(loss_kwargs or {})
    if "beta" in loss_kwargs:
        raise ValueError("pass beta through fit's beta argument, not through loss_kwargs")
    if elbo is None:
        elbo = BetaELBO()
    if not callable(getattr(elbo, "differentiable_loss", None)):
        raise TypeError(
            f"elbo must provide differentiable_loss(model, guide, batch, beta=...); {type(elbo).__name__} does not"
        )
    train = _Source(train_data, "train_data")
    val = None if val_data is None else _Source(val_data, "val_data")
    if early_stopping_patience is not None and val is None:
        raise ValueError("early_stopping_patience needs val_data")
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; choose one")
    if run_dir is None and (resume or tensorboard):
        raise ValueError(f"{'resume' if resume else 'tensorboard'}=True needs a run_dir")
    train_mode_modules = None if train_mode_modules is None else list(train_mode_modules)
    callbacks = list(callbacks or [])

    dev = resolve_device(device)
    model.to(dev)
    guide.to(dev)
    trained = _trained_parameters(model, guide, params)
    config = {
        "stage": stage,
        "format": CHECKPOINT_FORMAT,
        "settings": _normalised(
            {
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "beta": schedule.config(),
                "lr_schedule": lr_schedule_config(lr_spec),
                "grad_clip": grad_clip,
                "grad_clip_value": grad_clip_value,
                "zero_nan_grads": bool(zero_nan_grads),
                "early_stopping_patience": early_stopping_patience,
                "early_stopping_min_delta": early_stopping_min_delta,
                "restore_best": bool(restore_best),
                "seed": int(seed),
                "elbo": _describe_elbo(elbo),
                "loss_kwargs": loss_kwargs,
                "train_data": train.describe(),
                "val_data": None if val is None else val.describe(),
                "trained_parameters": [name for name, _ in trained],
            }
        ),
        "runtime": _normalised(
            {"checkpoint_every": checkpoint_every, "device": str(dev), "progress": progress, "tensorboard": tensorboard}
        ),
        "model": {"class": type(model).__qualname__, "state": state_signature(model)},
        "guide": {"class": type(guide).__qualname__, "state": state_signature(guide)},
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "pyro": str(pyro.__version__),
            "pyro_mmvae": _package_version(),
        },
    }
    config = _normalised(config)  # plain JSON types only: it goes into weights_only checkpoints

    # ------------------------------------------------------------ resume or start
    files = None if run_dir is None else _StageFiles(run_dir, stage)
    saved = None
    if files is not None and files.checkpoint.exists():
        if resume:
            saved = load_checkpoint(files.checkpoint)
            _check_resumable(saved, config, stage, files.checkpoint, model, guide)
        elif overwrite:
            files.clear()
        else:
            raise FileExistsError(
                f"{files.checkpoint} already exists; pass resume=True to continue it or overwrite=True to start over"
            )
    elif files is not None and overwrite:
        files.clear()

    es = {"best_val": None, "best_epoch": None, "bad_epochs": 0}
    history: list[dict] = []
    start_epoch, step, stopped_early, best_state = 0, 0, False, None
    if saved is not None:
        done, saved_epochs = int(saved["epoch"]), int(saved["config"]["settings"]["epochs"])
        if saved_epochs != epochs and not saved["stopped_early"]:
            if lr_schedule_depends_on_epochs(lr_spec):
                raise CheckpointMismatchError(
                    f"cannot resume {files.checkpoint} with epochs={epochs}: it was run with epochs={saved_epochs} "
                    f"and the learning-rate schedule {lr_schedule_config(lr_spec)} depends on the number of epochs"
                )
            if epochs < done:
                raise CheckpointMismatchError(
                    f"cannot resume {files.checkpoint} with epochs={epochs}: it has already run {done} epochs"
                )
        es, history = dict(saved["early_stopping"]), list(saved["history"])
        start_epoch, step, stopped_early = done, int(saved["step"]), bool(saved["stopped_early"])
        if saved["best"] is not None:
            best_state = {k: {n: t.to(dev) for n, t in sd.items()} for k, sd in saved["best"].items()}
        if stopped_early or start_epoch >= epochs:
            final = best_state if (restore_best and best_state is not None) else saved
            load_weights(model, final["model"], "model", str(files.checkpoint))
            load_weights(guide, final["guide"], "guide", str(files.checkpoint))
            return _result(stage, files, history, es, start_epoch, step, stopped_early, True, start_epoch)

    optimizer = torch.optim.Adam([p for _, p in trained], lr=lr)
    scheduler = build_lr_scheduler(lr_spec, optimizer, epochs)
    if saved is not None:
        load_weights(model, saved["model"], "model", str(files.checkpoint))
        load_weights(guide, saved["guide"], "guide", str(files.checkpoint))
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["lr_scheduler"])
        set_rng_state(saved["rng"])
    else:
        set_seed(int(seed))
    if files is not None:
        atomic_write_json(files.config, config)
        _write_log(files.log, history)
    writer = None
    if tensorboard:
        writer = _tensorboard_writer(files.tensorboard, purge_step=start_epoch + 1 if saved is not None else None)

    # ------------------------------------------------------------ the loop
    resumed_from = start_epoch if saved is not None else None
    trained_params = [p for _, p in trained]
    bar = tqdm(total=epochs, initial=start_epoch, desc=f"fit[{stage}]", unit="epoch", disable=not progress)
    epoch = start_epoch
    try:
        with (
            _restored_modes([model, guide, *(train_mode_modules or [])]),
            _only_these_require_grad(model, guide, trained),
        ):
            for e in range(start_epoch, epochs):
                tic = time.perf_counter()
                beta_e = schedule(e)
                lr_e = float(optimizer.param_groups[0]["lr"])
                _set_train_mode(model, guide, train_mode_modules)
                train_loss, step = _train_epoch(
                    model,
                    guide,
                    elbo,
                    train.batches(batch_size, shuffle=True, seed=seed, epoch=e),
                    optimizer,
                    trained_params,
                    dict(beta=beta_e, **loss_kwargs),
                    dict(zero_nan=zero_nan_grads, value=grad_clip_value, norm=grad_clip),
                    dev,
                    e,
                    step,
                    f"stage {stage!r}, training stopped, {_last_checkpoint(files)}",
                    bar if progress else None,
                )
                val_loss = None
                improved = False
                if val is not None:
                    for m in (model, guide, *(train_mode_modules or [])):
                        m.eval()
                    val_loss = _validate(model, guide, elbo, val, batch_size, seed, e, dev, schedule.final, loss_kwargs)
                    if not math.isfinite(val_loss):
                        raise NonFiniteLossError(
                            f"validation loss is {val_loss} after epoch {e + 1} of stage {stage!r}; training "
                            f"stopped, {_last_checkpoint(files)}"
                        )
                    if es["best_val"] is None or val_loss < es["best_val"] - early_stopping_min_delta:
                        es = {"best_val": val_loss, "best_epoch": e + 1, "bad_epochs": 0}
                        best_state = {"model": clone_state(model), "guide": clone_state(guide)}
                        improved = True
                    else:
                        es["bad_epochs"] += 1
                    stopped_early = early_stopping_patience is not None and es["bad_epochs"] >= early_stopping_patience
                if scheduler is not None:
                    scheduler.step()
                epoch = e + 1
                row = {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "beta": beta_e,
                    "lr": lr_e,
                    "seconds": time.perf_counter() - tic,
                }
                history.append(row)
                finished = stopped_early or epoch == epochs
                if files is not None:
                    _append_log(files.log, row)
                    if epoch % checkpoint_every == 0 or finished:
                        save_checkpoint(
                            {
                                "format": CHECKPOINT_FORMAT,
                                "stage": stage,
                                "epoch": epoch,
                                "step": step,
                                "finished": finished,
                                "stopped_early": stopped_early,
                                "model": model.state_dict(),
                                "guide": guide.state_dict(),
                                "optimizer": optimizer.state_dict(),
                                "lr_scheduler": None if scheduler is None else scheduler.state_dict(),
                                "early_stopping": dict(es),
                                "best": best_state,
                                "history": history,
                                "rng": get_rng_state(),
                                "config": config,
                            },
                            files.checkpoint,
                        )
                    if improved:
                        save_checkpoint(
                            {"epoch": epoch, "val_loss": val_loss, "config": config, **best_state}, files.best
                        )
                if writer is not None:
                    for key in ("train_loss", "val_loss", "beta", "lr"):
                        if row[key] is not None:
                            writer.add_scalar(f"{stage}/{key}", row[key], epoch)
                    writer.flush()
                postfix = {"loss": f"{train_loss:.4g}"}
                if val_loss is not None:
                    postfix["val"] = f"{val_loss:.4g}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                for callback in callbacks:
                    callback(dict(row))
                if stopped_early:
                    break
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    if restore_best and best_state is not None:
        model.load_state_dict(best_state["model"])
        guide.load_state_dict(best_state["guide"])
    return _result(stage, files, history, es, epoch, step, stopped_early, True, resumed_from)


def _where(epoch: int, step: int, first_step: int, context: str) -> str:
    """Where training stopped, for error messages (formatted only when one is raised)."""
    return f"at epoch {epoch + 1}, step {step - first_step + 1} of that epoch (global step {step + 1}); {context}"


def _train_epoch(
    model, guide, elbo, batches, optimizer, params, loss_kwargs, clip, dev, epoch, step, context, bar
) -> tuple[float, int]:
    """One pass over ``batches``: returns the mean loss per data point and the new global step count.

    ``context`` ends the message of a non-finite loss (which stage, what happened to the checkpoint).
    """
    total, count, first_step = 0.0, 0, step
    last_refresh = time.perf_counter()
    for batch in batches:
        batch = batch.to(dev)
        optimizer.zero_grad(set_to_none=True)
        try:
            loss = elbo.differentiable_loss(model, guide, batch, **loss_kwargs)
        except ValueError as err:
            # with validation on, a NaN produced by the networks surfaces as a distribution's
            # ValueError ("found invalid values") before any loss exists: report it as what it is
            msg = str(err)
            non_finite = "nan" in msg or "inf" in msg or not all(bool(torch.isfinite(p).all()) for p in params)
            if "invalid values" in msg and non_finite:
                where = _where(epoch, step, first_step, context)
                raise NonFiniteLossError(
                    f"a distribution rejected NaN/inf arguments computed from the trained parameters {where}. "
                    "Try a smaller lr, grad_clip, or check the data"
                ) from err
            raise
        value = float(loss.detach())  # one host sync per step, needed for the check and the running mean
        if not math.isfinite(value):
            where = _where(epoch, step, first_step, context)
            raise NonFiniteLossError(
                f"training loss is {value} {where}. Try a smaller lr, grad_clip, or check the data"
            )
        if not loss.requires_grad:
            raise RuntimeError("the loss does not depend on any trained parameter (check params)")
        loss.backward()
        _clip(params, **clip)
        optimizer.step()
        step += 1
        total += value * batch.batch_size
        count += batch.batch_size
        if bar is not None and time.perf_counter() - last_refresh > 0.5:
            bar.set_postfix(loss=f"{total / count:.4g}", refresh=True)
            last_refresh = time.perf_counter()
    if count == 0:
        raise ValueError(
            f"train_data yielded no batches in epoch {epoch + 1} (an exhausted iterator?); pass a dataset "
            "or a re-iterable collection of batches"
        )
    return total / count, step


def _last_checkpoint(files: _StageFiles | None) -> str:
    if files is None:
        return "no checkpoint is kept without run_dir"
    if files.checkpoint.exists():
        return f"the last checkpoint {files.checkpoint} is left as it was"
    return "no checkpoint had been written yet"


def _clip(params: list[torch.Tensor], zero_nan: bool, value: float | None, norm: float | None) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if zero_nan:
        for g in grads:
            g.masked_fill_(torch.isnan(g), 0.0)
    if value is not None:
        for g in grads:
            g.clamp_(-value, value)
    if norm is not None:
        torch.nn.utils.clip_grad_norm_(params, norm)


@torch.no_grad()
def _validate(model, guide, elbo, val: _Source, batch_size, seed, epoch, dev, beta, loss_kwargs) -> float:
    """Mean validation loss per data point (the caller puts every module in eval mode)."""
    total, count = 0.0, 0
    for batch in val.batches(batch_size, shuffle=False, seed=seed, epoch=epoch):
        batch = batch.to(dev)
        total += float(elbo.differentiable_loss(model, guide, batch, beta=beta, **loss_kwargs)) * batch.batch_size
        count += batch.batch_size
    if count == 0:
        raise ValueError("val_data yielded no batches (an exhausted iterator?)")
    return total / count


def _package_version() -> str:
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------- stages


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
        the stage's :class:`FitResult` (history, best epoch, paths).
    """
    stage = _check_stage(stage)
    files = _StageFiles(run_dir, stage)
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
    return _result(
        stage,
        files,
        saved["history"],
        es,
        int(saved["epoch"]),
        int(saved["step"]),
        bool(saved["stopped_early"]),
        bool(saved["finished"]),
        None,
    )
