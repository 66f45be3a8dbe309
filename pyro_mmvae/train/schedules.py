"""β schedules and learning-rate schedules for :func:`~pyro_mmvae.train.fit`.

β schedules are evaluated ONCE PER EPOCH, at the 0-based epoch index ``e``: every step of epoch
``e`` uses β(e). (Per-epoch values do not depend on the number of steps per epoch, which keeps
them well defined for iterables of batches of unknown length, and make the CSV log's ``beta``
column exact.) A schedule also has a ``final`` value, the β the schedule converges to; the
trainer computes the validation loss at ``final`` so that validation losses stay comparable
across epochs while β is still annealing.

Learning-rate schedules are stepped once per epoch too. They are given as ``None`` (constant),
``"cosine"`` / ``"step"`` (the defaults of :class:`CosineLR` / :class:`StepLR`), one of those
spec objects, or a callable ``optimizer -> torch.optim.lr_scheduler.LRScheduler`` (its
``state_dict`` must hold only tensors and plain Python values so checkpoints load with
``weights_only=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

# ---------------------------------------------------------------------- β schedules


def _positive(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}") from err
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(
            f"{name} must be a finite number > 0 (poutine.scale(0) is invalid; anneal from a small value), got {value}"
        )
    return value


class Schedule:
    """Base class of β schedules: ``value(epoch)`` for the 0-based epoch index, and ``final``."""

    final: float

    def value(self, epoch: int) -> float:
        raise NotImplementedError

    def __call__(self, epoch: int) -> float:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return self.value(int(epoch))

    def config(self) -> dict:
        """A JSON-able description (stored in the run's config and compared on resume)."""
        raise NotImplementedError


class Constant(Schedule):
    """β(e) = ``value`` for every epoch."""

    def __init__(self, value: float):
        self.final = _positive("beta", value)

    def value(self, epoch: int) -> float:
        return self.final

    def config(self) -> dict:
        return {"kind": "constant", "value": self.final}

    def __repr__(self) -> str:
        return f"Constant({self.final})"


class LinearAnnealing(Schedule):
    """β(e) = start + (end − start) · min(e / warmup_epochs, 1), e the 0-based epoch index.

    Epoch 0 uses ``start``; epochs ``warmup_epochs`` and later use ``end``. ``warmup_epochs = 0``
    means ``end`` from the first epoch. ``start`` and ``end`` must be > 0 (``poutine.scale(0)``
    is invalid); ``start > end`` anneals downwards.
    """

    def __init__(self, start: float, end: float, warmup_epochs: int):
        self.start = _positive("LinearAnnealing start", start)
        self.final = self.end = _positive("LinearAnnealing end", end)
        if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be a non-negative integer, got {warmup_epochs!r}")
        self.warmup_epochs = int(warmup_epochs)

    def value(self, epoch: int) -> float:
        if self.warmup_epochs == 0 or epoch >= self.warmup_epochs:
            return self.end
        return self.start + (self.end - self.start) * epoch / self.warmup_epochs

    def config(self) -> dict:
        return {"kind": "linear", "start": self.start, "end": self.end, "warmup_epochs": self.warmup_epochs}

    def __repr__(self) -> str:
        return f"LinearAnnealing(start={self.start}, end={self.end}, warmup_epochs={self.warmup_epochs})"


def as_beta_schedule(beta: float | Schedule) -> Schedule:
    """A number becomes :class:`Constant`; a :class:`Schedule` passes through (its ``final`` checked > 0)."""
    if isinstance(beta, Schedule):
        _positive("beta schedule final value", beta.final)
        return beta
    if callable(beta):
        raise TypeError(
            "beta must be a number or a pyro_mmvae.train.Schedule (subclass Schedule and implement "
            "value(epoch), final and config()), got a plain callable"
        )
    return Constant(beta)


# ---------------------------------------------------------------------- learning-rate schedules


class CosineLR:
    """Cosine decay from the optimiser's learning rate to ``final_lr`` over the run, stepped per epoch.

    Epoch e (0-based) of an ``epochs``-epoch run uses
    ``final_lr + (lr − final_lr) · (1 + cos(π · min(e, epochs) / epochs)) / 2``: the first epoch
    uses ``lr`` and the value reaches ``final_lr`` as the last epoch ends (so no epoch is spent at
    ``final_lr = 0``).
    """

    depends_on_epochs = True

    def __init__(self, final_lr: float = 0.0):
        final_lr = float(final_lr)
        if not (final_lr >= 0 and math.isfinite(final_lr)):
            raise ValueError(f"CosineLR final_lr must be a finite number >= 0, got {final_lr}")
        self.final_lr = final_lr

    def factor(self, epoch: int, lr: float, epochs: int) -> float:
        progress = min(epoch, epochs) / epochs
        return (self.final_lr + (lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))) / lr

    def build(self, optimizer: torch.optim.Optimizer, epochs: int) -> LRScheduler:
        lrs = [group["lr"] for group in optimizer.param_groups]
        return LambdaLR(optimizer, [lambda e, lr=lr: self.factor(e, lr, epochs) for lr in lrs])

    def config(self) -> dict:
        return {"kind": "cosine", "final_lr": self.final_lr}


class StepLR:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    ``step_size=None`` means ``max(1, epochs // 3)`` (three decays over the run).
    """

    def __init__(self, step_size: int | None = None, gamma: float = 0.1):
        if step_size is not None and (isinstance(step_size, bool) or int(step_size) != step_size or step_size < 1):
            raise ValueError(f"StepLR step_size must be a positive integer or None, got {step_size!r}")
        gamma = float(gamma)
        if not (gamma > 0 and math.isfinite(gamma)):
            raise ValueError(f"StepLR gamma must be a finite number > 0, got {gamma}")
        self.step_size, self.gamma = (None if step_size is None else int(step_size)), gamma

    @property
    def depends_on_epochs(self) -> bool:
        return self.step_size is None

    def build(self, optimizer: torch.optim.Optimizer, epochs: int) -> LRScheduler:
        size = self.step_size or max(1, epochs // 3)
        return LambdaLR(optimizer, lambda e: self.gamma ** (e // size))

    def config(self) -> dict:
        return {"kind": "step", "step_size": self.step_size, "gamma": self.gamma}


LRScheduleSpec = None | str | CosineLR | StepLR | Callable[[torch.optim.Optimizer], LRScheduler]


def as_lr_schedule(spec: LRScheduleSpec):
    """Normalise ``None``/``"cosine"``/``"step"``/a spec object/a callable (returned unchanged)."""
    if spec is None or isinstance(spec, CosineLR | StepLR):
        return spec
    if isinstance(spec, str):
        kinds = {"cosine": CosineLR, "step": StepLR}
        if spec.lower() not in kinds:
            raise ValueError(f"unknown lr_schedule {spec!r}; expected None, 'cosine', 'step', a spec or a callable")
        return kinds[spec.lower()]()
    if callable(spec):
        return spec
    raise TypeError(f"lr_schedule must be None, 'cosine', 'step', CosineLR, StepLR or a callable, got {spec!r}")


def build_lr_scheduler(spec: LRScheduleSpec, optimizer: torch.optim.Optimizer, epochs: int) -> LRScheduler | None:
    """The scheduler object for ``spec`` (``None`` for a constant learning rate)."""
    spec = as_lr_schedule(spec)
    if spec is None:
        return None
    if isinstance(spec, CosineLR | StepLR):
        return spec.build(optimizer, epochs)
    scheduler = spec(optimizer)
    if not (hasattr(scheduler, "step") and hasattr(scheduler, "state_dict") and hasattr(scheduler, "load_state_dict")):
        raise TypeError(
            "a callable lr_schedule must return a torch LR scheduler (with step, state_dict and load_state_dict), "
            f"got {type(scheduler).__name__}"
        )
    return scheduler


def lr_schedule_config(spec: LRScheduleSpec) -> dict | str | None:
    """JSON-able description of an LR schedule (a callable is described by its qualified name)."""
    spec = as_lr_schedule(spec)
    if spec is None:
        return None
    if isinstance(spec, CosineLR | StepLR):
        return spec.config()
    return {
        "kind": "callable",
        "name": f"{getattr(spec, '__module__', '?')}.{getattr(spec, '__qualname__', repr(spec))}",
    }


def lr_schedule_depends_on_epochs(spec: LRScheduleSpec) -> bool:
    """Whether the schedule's values change with the total number of epochs (callables: assumed yes)."""
    spec = as_lr_schedule(spec)
    if spec is None:
        return False
    return bool(getattr(spec, "depends_on_epochs", True))
