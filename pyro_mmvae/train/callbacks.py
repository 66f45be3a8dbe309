"""Callbacks: what a training stage does besides taking optimizer steps.

A callback subclasses :class:`Callback` and overrides any of its hooks; each receives the
:class:`~pyro_mmvae.train.state.TrainingState`::

    class PrintEvery(Callback):
        def __init__(self, n):
            self.n = n

        def on_epoch_end(self, state, row):
            if row["epoch"] % self.n == 0:
                print(row["epoch"], row["train_loss"])

    fit(model, guide, data, BetaELBO(), config, callbacks=[PrintEvery(10)])

A plain function ``row -> None`` is accepted too (it becomes an :class:`EpochEndFunction`).
Callbacks run in increasing ``order`` (ties: the order given): stop decisions (``EarlyStopping``,
order 0) come first so that the checkpoint (order 20) records them; user callbacks (order 50) run
after the epoch's checkpoint, so an exception raised there leaves a resumable stage behind.

:func:`~pyro_mmvae.train.fit` adds the built-in callbacks its config asks for — ``EarlyStopping``
(``early_stopping_patience``), ``CSVLogger`` and ``Checkpoint`` (``run_dir``), ``TensorBoardLogger``
(``tensorboard``), ``ProgressBar`` (``progress``) — unless a callback of the same class is passed
(then that one is used instead). To remove one, turn its setting off (``progress=False``, ...).

A callback with state that must survive a resume implements ``state_dict()`` (plain values and
tensors only) and ``load_state_dict(state)``; the checkpoint stores it under the callback's
``state_key`` (its class name, numbered when a class occurs twice). Such a callback runs before the
checkpoint whatever its ``order`` (see :func:`run_order`), so the saved state includes the epoch.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from ..utils import atomic_write, atomic_write_json
from .checkpoint import CHECKPOINT_FORMAT, get_rng_state, save_checkpoint
from .state import LOG_COLUMNS, TrainingState


class Callback:
    """Base class: every hook does nothing. See the module docstring.

    Under data parallelism (:mod:`~pyro_mmvae.train.data_parallel`) a callback runs on rank 0 alone unless its
    class sets ``all_ranks = True``; a stop it requests on rank 0 is sent to every rank.
    """

    order = 50
    all_ranks = False

    def on_fit_start(self, state: TrainingState) -> None:
        """Before the first epoch of this call (after a resume: before the first remaining epoch)."""

    def on_step_end(self, state: TrainingState) -> None:
        """After each optimizer step (``state.step`` and ``state.running_loss`` are updated)."""

    def on_epoch_end(self, state: TrainingState, row: dict) -> None:
        """After each epoch; ``row`` is its history row (keys ``LOG_COLUMNS``)."""

    def on_fit_end(self, state: TrainingState) -> None:
        """Always, also when training fails: release files, writers, bars."""


class EpochEndFunction(Callback):
    """A function ``row -> None`` called with a copy of each epoch's history row."""

    def __init__(self, fn: Callable[[dict], None]):
        self.fn = fn

    def on_epoch_end(self, state: TrainingState, row: dict) -> None:
        self.fn(dict(row))


def as_callback(obj) -> Callback:
    """``obj`` itself when it is a :class:`Callback`, an :class:`EpochEndFunction` when it is a function."""
    if isinstance(obj, Callback):
        return obj
    if callable(obj):
        return EpochEndFunction(obj)
    raise TypeError(f"a callback must be a Callback or a function row -> None, got {type(obj).__name__}")


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a validation improvement (needs validation data).

    Runs on every rank under data parallelism (``all_ranks``): the validation loss is the same everywhere.

    Improvement is decided by the config's ``early_stopping_min_delta`` (the same rule picks the
    best weights); the counters live in ``state.best`` and are checkpointed with it.
    """

    order = 0
    all_ranks = True

    def __init__(self, patience: int):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"early_stopping_patience must be an integer >= 1, got {patience!r}")
        self.patience = patience

    def on_epoch_end(self, state: TrainingState, row: dict) -> None:
        if row["val_loss"] is not None and state.best.bad_epochs >= self.patience:
            state.stop_requested = True


def _csv_row(row: dict) -> list:
    return ["" if row[k] is None else (repr(row[k]) if isinstance(row[k], float) else row[k]) for k in LOG_COLUMNS]


class CSVLogger(Callback):
    """``<stage>/log.csv``: rewritten with the history so far at the start, one row appended per epoch."""

    order = 10

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_fit_start(self, state: TrainingState) -> None:
        def write(f):
            w = csv.writer(f, lineterminator="\n")
            w.writerow(LOG_COLUMNS)
            for row in state.history:
                w.writerow(_csv_row(row))

        atomic_write(self.path, write, binary=False)

    def on_epoch_end(self, state: TrainingState, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow(_csv_row(row))


class Checkpoint(Callback):
    """``config.json`` at the start; ``best.pt`` whenever validation improves, then ``checkpoint.pt``
    every ``every`` epochs and at the end. Holds the full state needed for a bit-exact resume."""

    order = 20

    def __init__(self, every: int = 1):
        self.every = every
        self.callbacks: list[Callback] = []  # set by fit: whose states go into the checkpoint

    def on_fit_start(self, state: TrainingState) -> None:
        atomic_write_json(state.files.config, state.record)

    def on_epoch_end(self, state: TrainingState, row: dict) -> None:
        files = state.files
        # best.pt first, then checkpoint.pt: a kill between the two leaves best.pt one epoch ahead of
        # a checkpoint that deterministically re-runs that epoch; resuming rewrites best.pt from the
        # checkpoint (StageFiles.repair_best), so the two agree after any kill.
        if state.improved:
            save_checkpoint(
                {"epoch": state.epoch, "val_loss": row["val_loss"], "config": state.record, **state.best.weights},
                files.best,
            )
        if state.epoch % self.every == 0 or state.finished:
            save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "stage": state.stage,
                    "epoch": state.epoch,
                    "step": state.step,
                    "finished": state.finished,
                    "stopped_early": state.stop_requested,
                    "model": state.model.state_dict(),
                    "guide": state.guide.state_dict(),
                    "optimizer": state.optimizer.state_dict(),
                    "lr_scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
                    "early_stopping": state.best.counters(),
                    "best": state.best.weights,
                    "history": state.history,
                    "rng": get_rng_state(),
                    "callbacks": callback_states(self.callbacks),
                    "config": state.record,
                },
                files.checkpoint,
            )


class TensorBoardLogger(Callback):
    """Per-epoch scalars ``<stage>/train_loss``, ``val_loss``, ``beta``, ``lr`` under ``<stage>/tensorboard/``.

    Needs the optional ``tensorboard`` package. On resume, events after the resumed epoch are purged
    so the curves have no duplicate points.
    """

    order = 30

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_fit_start(self, state: TrainingState) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency
        except ImportError as err:
            raise ImportError(
                "tensorboard=True needs the 'tensorboard' package: pip install tensorboard "
                "(or pip install 'pyro-mmvae[tensorboard]')"
            ) from err
        purge = state.epoch + 1 if state.resumed_from is not None else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def on_epoch_end(self, state: TrainingState, row: dict) -> None:
        for key in ("train_loss", "val_loss", "beta", "lr"):
            if row[key] is not None:
                self.writer.add_scalar(f"{state.stage}/{key}", row[key], row["epoch"])
        self.writer.flush()

    def on_fit_end(self, state: TrainingState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(Callback):
    """A tqdm bar over epochs with the running training loss (refreshed at most every ``refresh_s``)."""

    order = 40

    def __init__(self, refresh_s: float = 0.5):
        self.refresh_s = refresh_s
        self.bar = None
        self._last = 0.0

    def on_fit_start(self, state: TrainingState) -> None:
        self.bar = tqdm(total=state.config.epochs, initial=state.epoch, desc=f"fit[{state.stage}]", unit="epoch")
        self._last = time.perf_counter()

    def on_step_end(self, state: TrainingState) -> None:
        now = time.perf_counter()
        if now - self._last > self.refresh_s:
            self.bar.set_postfix(loss=f"{state.running_loss:.4g}", refresh=True)
            self._last = now

    def on_epoch_end(self, state: TrainingState, row: dict) -> None:
        postfix = {"loss": f"{row['train_loss']:.4g}"}
        if row["val_loss"] is not None:
            postfix["val"] = f"{row['val_loss']:.4g}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def on_fit_end(self, state: TrainingState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _stateful(cb: Callback) -> bool:
    return callable(getattr(cb, "state_dict", None))


def run_order(callbacks: list[Callback]) -> list[Callback]:
    """``callbacks`` sorted by ``order`` (stable), a stateful callback no later than just before ``Checkpoint``."""

    def key(cb: Callback) -> float:
        return min(cb.order, Checkpoint.order - 1) if _stateful(cb) else cb.order

    return sorted(callbacks, key=key)


def state_keys(callbacks: list[Callback]) -> list[str]:
    """One checkpoint key per callback: its class name, numbered from the second of a class on."""
    keys, seen = [], {}
    for cb in callbacks:
        name = type(cb).__qualname__
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def callback_states(callbacks: list[Callback]) -> dict:
    """``state_key -> state_dict()`` of the callbacks that have a ``state_dict`` method."""
    pairs = zip(state_keys(callbacks), callbacks)
    return {key: cb.state_dict() for key, cb in pairs if _stateful(cb)}


def load_callback_states(callbacks: list[Callback], states: dict, source: str) -> None:
    """Give each stateful callback its saved state; a stateful callback without one is an error."""
    for key, cb in zip(state_keys(callbacks), callbacks):
        if callable(getattr(cb, "load_state_dict", None)):
            if key not in states:
                raise ValueError(f"{source} holds no state for callback {key}; it was not used when the stage started")
            cb.load_state_dict(states[key])


def default_callbacks(state: TrainingState, given: list[Callback]) -> list[Callback]:
    """The built-in callbacks the config asks for, skipping classes the user passed an instance of."""
    config, files = state.config, state.files
    wanted: list[Callback] = []
    if config.early_stopping_patience is not None:
        wanted.append(EarlyStopping(config.early_stopping_patience))
    if state.is_main:  # under data parallelism the other ranks write nothing and show no progress
        if files is not None:
            wanted += [CSVLogger(files.log), Checkpoint(config.checkpoint_every)]
        if config.tensorboard:
            wanted.append(TensorBoardLogger(files.tensorboard))
        if config.progress:
            wanted.append(ProgressBar())
    given_types = {type(cb) for cb in given}
    return [cb for cb in wanted if type(cb) not in given_types]
