"""``fit``: train a model/guide pair with any objective, a :class:`FitConfig` and callbacks.

Each step computes ``objective.differentiable_loss(model, guide, batch, beta=β, **loss_kwargs)``
(the library's objectives return a per-data-point MEAN, so learning rates do not depend on the batch
size), back-propagates, clips and takes an optimizer step. Each epoch ends with a validation pass
(``torch.no_grad``, every module in eval mode) when validation data is given, the LR-scheduler step,
a history row and the callbacks (log, checkpoint, early stopping, progress bar, yours).

Reproducibility: a fresh run calls :func:`~pyro_mmvae.utils.set_seed` with the config's ``seed``;
datasets are batched with :func:`~pyro_mmvae.data.dataset.iterate_batches`, whose epoch-``e`` order
depends only on ``(seed, e)``; checkpoints store every RNG state. So ``resume=True`` after an
interruption reproduces the parameters of an uninterrupted run exactly (same device and library
versions). This holds for datasets; an arbitrary iterable of batches (e.g. a shuffling
``DataLoader``) is re-iterated every epoch as it is, and exact resume then depends on that iterable.

Multistage training: train stage 1, then later (same or new process) restore it with
:func:`~pyro_mmvae.train.load_stage` and train stage 2 on a subset of the parameters::

    fit(model, joint_guide, data, BetaELBO(), epochs=100, batch_size=128, run_dir=run, stage="joint")
    load_stage(run, "joint", model, joint_guide)
    # stage 2: only the flow experts train; model and joint encoder stay frozen, in eval mode
    fit(model, flow_guide, data, stage2_objective, epochs=50, batch_size=128, run_dir=run,
        stage="flows", params=flow_guide.experts, train_mode_modules=[flow_guide.experts])
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
import warnings
from collections.abc import Iterable
from typing import Any

import pyro
import torch

from .. import __version__
from ..data.validation import declared_modalities, prepare_batch
from ..distributed import DistributedError, broadcast_object, check_joined, on_main, rank_device, world
from ..errors import InputError
from ..infer.elbo import BetaELBO
from ..models.function import FunctionModel, as_model
from ..nn.shared_encodings import without_module_registration
from ..utils import kill_point, resolve_device, set_seed, to_jsonable
from .callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    as_callback,
    default_callbacks,
    load_callback_states,
    run_order,
)
from .checkpoint import CHECKPOINT_FORMAT, CheckpointMismatchError, load_weights, set_rng_state, state_signature
from .compiled_step import CompiledGradients, StepCompileError, is_nan_sampling_error
from .config import RUNTIME_FIELDS, FitConfig
from .data_parallel import DataParallel
from .data_source import DataSource
from .optim import build_optimizer, describe_optimizer
from .parameters import only_these_require_grad, restored_modes, set_train_mode, trained_parameters
from .run_files import StageFiles, check_resumable
from .schedules import build_lr_scheduler, lr_schedule_config, lr_schedule_depends_on_epochs
from .state import FitResult, NonFiniteLossError, TrainingState

# A checkpoint written before a setting existed used its default.
_SETTING_DEFAULTS = {"optimizer": {"name": "adam", "kwargs": {}}}


def fit(
    model: torch.nn.Module | None,
    guide: torch.nn.Module,
    train_data,
    objective=None,
    config: FitConfig | None = None,
    *,
    val_data=None,
    callbacks: Iterable[Callback] | None = None,
    params=None,
    train_mode_modules: Iterable[torch.nn.Module] | None = None,
    elbo=None,
    **settings: Any,
) -> FitResult:
    """Train ``model`` and ``guide`` on ``train_data`` with ``objective`` and the settings of ``config``.

    Args:
        model: the generative model: an ``nn.Module``/``PyroModule``, a plain Pyro function that declares
            its modalities (see :class:`~pyro_mmvae.models.FunctionModel`; the networks it registers with
            ``pyro.module`` are trained and checkpointed), or ``None`` for an objective that has none
            (e.g. :class:`~pyro_mmvae.infer.SharedInfoLoss` training projectors).
        guide: the module holding the encoders; model and guide are moved to the config's device
            and hold every trained parameter (not Pyro's global param store, which checkpoints miss).
        train_data: a dataset, a ``MultimodalBatch`` or a re-iterable of batches
            (see :class:`~pyro_mmvae.train.data_source.DataSource`).
        objective: anything with ``differentiable_loss(model, guide, batch, beta=..., **loss_kwargs)``
            (every ``pyro.infer.ELBO`` of the library, Pyro's own ``Trace_ELBO``); default ``BetaELBO()``.
        config: a :class:`~pyro_mmvae.train.FitConfig`; keyword ``settings`` (its field names:
            ``epochs=``, ``batch_size=``, ``lr=``, ``run_dir=``, ...) override its fields, or build it
            when ``config`` is None.
        val_data: optional validation data (same forms as ``train_data``; not shuffled).
        callbacks: :class:`~pyro_mmvae.train.callbacks.Callback` objects or functions ``row -> None``,
            added to (or, per class, replacing) the built-in ones the config asks for.
        params: which parameters to train: ``None`` (every parameter of model and guide with
            ``requires_grad``), or parameters and/or modules of the model or guide. The others are
            frozen during the call (``requires_grad`` restored afterwards) and still checkpointed.
        train_mode_modules: modules in train mode during training steps; ``None`` means model and
            guide. When given, everything else is in eval mode (a frozen encoder keeps its
            normalisation statistics).
        elbo: the earlier name of ``objective`` (give one of the two).

    Returns:
        :class:`~pyro_mmvae.train.FitResult`.

    Raises:
        ValueError / TypeError: invalid settings or data (naming the setting), a non-resumable checkpoint.
        NonFiniteLossError: the loss became NaN/inf (names epoch and step; the last checkpoint
            is left as it was).
        FileExistsError: the stage already has a checkpoint and neither ``resume`` nor ``overwrite`` is set.
    """
    config = FitConfig.from_settings(config, settings)
    objective = _objective(objective, elbo)
    train = DataSource(train_data, "train_data")
    val = None if val_data is None else DataSource(val_data, "val_data")
    given = [as_callback(c) for c in (callbacks or ())]
    if val is None and (config.early_stopping_patience is not None or any(isinstance(c, EarlyStopping) for c in given)):
        raise ValueError("early_stopping_patience needs val_data")
    if config.run_dir is None and any(isinstance(c, Checkpoint) for c in given):
        raise ValueError("a Checkpoint callback needs a run_dir")
    train_mode_modules = None if train_mode_modules is None else list(train_mode_modules)
    model = torch.nn.Module() if model is None else as_model(model, guide)  # empty: checkpoints hold the guide
    for source in (train, val):  # bad data fails here, naming modality and dataset rows, before any step
        if source is not None:
            source.check(declared_modalities(model, guide))
    if isinstance(model, FunctionModel) and not model.bound:  # adopt the networks its program registers
        model.bind(next(iter(train.batches(config.batch_size, shuffle=False, seed=config.seed, epoch=0))))

    check_joined()
    w = world()
    if config.compile and w.distributed:
        raise InputError("compile=True supports single-process training only; run without torch.distributed")
    dev = rank_device(resolve_device(config.device), w)
    model.to(dev)
    guide.to(dev)
    trained = trained_parameters(model, guide, params)
    state = TrainingState(
        model=model,
        guide=guide,
        objective=objective,
        config=config,
        record=_record(config, objective, train, val, trained, model, guide, dev),
        device=dev,
        trained=trained,
        files=None if config.run_dir is None else StageFiles(config.run_dir, config.stage),
    )
    if w.distributed:
        state.parallel = DataParallel(w, dev, lambda: _where(state, state.epoch_start_step))
    saved = _open_stage(state)
    if saved is not None and state.finished:
        return _load_finished(state, saved)
    state.run_start_step = state.step

    state.optimizer = build_optimizer(config.optimizer, [p for _, p in trained], config.lr, config.optimizer_kwargs)
    if config.compile:
        state.compiled = CompiledGradients(
            objective, model, guide, [p for _, p in trained], zero_nan_grads=config.zero_nan_grads,
            grad_clip_value=config.grad_clip_value,
        )  # fmt: skip
    state.scheduler = build_lr_scheduler(config.lr_schedule, state.optimizer, config.epochs)
    if not state.is_main:  # other ranks: only what decides stopping; rank 0's decision is sent to them
        given = [cb for cb in given if getattr(cb, "all_ranks", False)]
    every = run_order(default_callbacks(state, given) + given)
    for cb in every:
        if isinstance(cb, Checkpoint):
            cb.callbacks = every
    if saved is not None:
        _restore(state, saved, every)
    else:
        set_seed(config.seed)
    if state.parallel is not None:
        state.parallel.broadcast_parameters([model, guide])
    _run(state, train, val, every, train_mode_modules)
    if state.compiled is not None and not state.compiled.graphs and state.step - state.run_start_step > 1:
        warnings.warn(
            "compile=True compiled no training step: every step after the first ran eagerly (a β schedule that "
            "never reached its final value, or batches with a modality observed in no row)",
            stacklevel=2,
        )
    if config.restore_best and state.best.weights is not None:
        model.load_state_dict(state.best.weights["model"])
        guide.load_state_dict(state.best.weights["guide"])
    return state.result()


def _objective(objective, elbo):
    if objective is not None and elbo is not None:
        raise TypeError("give the objective once: as objective or as elbo, not both")
    objective = objective if objective is not None else elbo
    if objective is None:
        objective = BetaELBO()
    if not callable(getattr(objective, "differentiable_loss", None)):
        raise TypeError(
            f"the objective (elbo) must provide differentiable_loss(model, guide, batch, beta=...); "
            f"{type(objective).__name__} does not"
        )
    return objective


def _describe(objective) -> dict:
    attrs = {k: v for k, v in getattr(objective, "__dict__", {}).items() if not k.startswith("_")}
    kind = type(objective)
    return {"class": f"{kind.__module__}.{kind.__qualname__}", "attributes": to_jsonable(attrs, non_finite="repr")}


def _record(config: FitConfig, objective, train, val, trained, model, guide, dev) -> dict:
    """The stage's ``config.json``: compared settings, runtime settings, state signatures, versions."""
    settings = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "beta": config.beta_schedule.config(),
        "lr_schedule": lr_schedule_config(config.lr_schedule),
        "optimizer": describe_optimizer(config.optimizer, config.optimizer_kwargs),
        "grad_clip": config.grad_clip,
        "grad_clip_value": config.grad_clip_value,
        "zero_nan_grads": bool(config.zero_nan_grads),
        "early_stopping_patience": config.early_stopping_patience,
        "early_stopping_min_delta": config.early_stopping_min_delta,
        "restore_best": bool(config.restore_best),
        "seed": config.seed,
        "elbo": _describe(objective),
        "loss_kwargs": config.loss_kwargs,
        "train_data": train.describe(),
        "val_data": None if val is None else val.describe(),
        "trained_parameters": [name for name, _ in trained],
    }
    runtime = {name: getattr(config, name) for name in RUNTIME_FIELDS} | {"device": str(dev)}
    record = {
        "stage": config.stage,
        "format": CHECKPOINT_FORMAT,
        "settings": settings,
        "runtime": runtime,
        "model": {"class": type(model).__qualname__, "state": state_signature(model)},
        "guide": {"class": type(guide).__qualname__, "state": state_signature(guide)},
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "pyro": str(pyro.__version__),
            "pyro_mmvae": __version__,
        },
    }
    return to_jsonable(record, non_finite="repr")  # plain JSON types only: it goes into weights_only checkpoints


def _open_stage(state: TrainingState) -> dict | None:
    """Load the checkpoint to resume (checking it fits), or prepare a fresh stage; fills the state's counters.

    Under data parallelism rank 0 alone touches the files and sends the checkpoint (or its error) to
    the other ranks.
    """
    saved = None if state.files is None else on_main(_read_stage, state)
    if saved is not None:
        _adopt_checkpoint(state, saved)
    return saved


def _read_stage(state: TrainingState) -> dict | None:
    config, files = state.config, state.files
    saved = files.open_for(config.resume, config.overwrite)
    if saved is None:
        return None
    check_resumable(saved, state.record, files.checkpoint, state.model, state.guide, _SETTING_DEFAULTS)
    files.repair_best(saved)  # best.pt follows the checkpoint after a kill between their writes
    return saved


def _adopt_checkpoint(state: TrainingState, saved: dict) -> None:
    config, files = state.config, state.files
    done, saved_epochs = int(saved["epoch"]), int(saved["config"]["settings"]["epochs"])
    if saved_epochs != config.epochs and not saved["stopped_early"]:
        if lr_schedule_depends_on_epochs(config.lr_schedule):
            raise CheckpointMismatchError(
                f"cannot resume {files.checkpoint} with epochs={config.epochs}: it was run with epochs={saved_epochs} "
                f"and the learning-rate schedule {lr_schedule_config(config.lr_schedule)} depends on the number of "
                "epochs"
            )
        if config.epochs < done:
            raise CheckpointMismatchError(
                f"cannot resume {files.checkpoint} with epochs={config.epochs}: it has already run {done} epochs"
            )
    state.history = list(saved["history"])
    state.epoch, state.step = done, int(saved["step"])
    state.stop_requested = bool(saved["stopped_early"])
    state.best = type(state.best).from_checkpoint(saved, state.device)
    state.resumed_from = done


def _load_finished(state: TrainingState, saved: dict) -> FitResult:
    """A finished stage: load its final weights (the best ones with ``restore_best``) and report it."""
    best = state.best.weights
    final = best if (state.config.restore_best and best is not None) else saved
    load_weights(state.model, final["model"], "model", str(state.files.checkpoint))
    load_weights(state.guide, final["guide"], "guide", str(state.files.checkpoint))
    return state.result()


def _restore(state: TrainingState, saved: dict, callbacks: list[Callback]) -> None:
    source = str(state.files.checkpoint)
    load_weights(state.model, saved["model"], "model", source)
    load_weights(state.guide, saved["guide"], "guide", source)
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.scheduler is not None:
        state.scheduler.load_state_dict(saved["lr_scheduler"])
    load_callback_states(callbacks, saved.get("callbacks", {}), source)
    if state.parallel is None:  # data parallelism re-seeds each rank at every epoch instead
        set_rng_state(saved["rng"])


def _run(state: TrainingState, train: DataSource, val: DataSource | None, callbacks, train_mode_modules) -> None:
    """The epochs still to do, with every callback hook; ``on_fit_end`` runs even when training fails."""
    config = state.config
    schedule = config.beta_schedule
    step_hooks = [cb for cb in callbacks if type(cb).on_step_end is not Callback.on_step_end]
    context = [state.model, state.guide, *(train_mode_modules or [])]
    try:
        for cb in callbacks:
            cb.on_fit_start(state)
        with restored_modes(context), only_these_require_grad(state.model, state.guide, state.trained):
            for e in range(state.epoch, config.epochs):
                tic = time.perf_counter()
                beta_e = schedule(e)
                lr_e = float(state.optimizer.param_groups[0]["lr"])
                set_train_mode(state.model, state.guide, train_mode_modules)
                if state.parallel is not None:
                    state.parallel.seed_epoch(config.seed, e)
                train_loss = _train_epoch(state, _shares(state, train, e, shuffle=True), beta_e, step_hooks)
                val_loss = None
                state.improved = False
                if val is not None:
                    for m in context:
                        m.eval()
                    val_loss = _validate(state, val, e, schedule.final)
                    state.improved = state.best.update(
                        val_loss, e + 1, config.early_stopping_min_delta, state.model, state.guide
                    )
                if state.scheduler is not None:
                    state.scheduler.step()
                state.epoch = e + 1
                row = {
                    "epoch": state.epoch,
                    "step": state.step,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "beta": beta_e,
                    "lr": lr_e,
                    "seconds": time.perf_counter() - tic,
                }
                state.history.append(row)
                for cb in callbacks:
                    cb.on_epoch_end(state, row)
                if state.parallel is not None:
                    state.stop_requested = bool(broadcast_object(state.stop_requested, where=state.parallel.where))
                if state.stop_requested:
                    break
    finally:
        for cb in callbacks:
            cb.on_fit_end(state)


def _where(state: TrainingState, first_step: int) -> str:
    """Where training stopped, for error messages (formatted only when one is raised)."""
    note = "no checkpoint is kept without run_dir" if state.files is None else state.files.last_checkpoint_note()
    return (
        f"at epoch {state.epoch + 1}, step {state.step - first_step + 1} of that epoch (global step {state.step + 1}); "
        f"stage {state.stage!r}, training stopped, {note}"
    )


def _shares(state: TrainingState, source: DataSource, epoch: int, shuffle: bool):
    """``(rows of this process or None, rows of the whole batch)`` for every batch of the epoch."""
    config, dp = state.config, state.parallel
    if dp is None:
        for batch in source.batches(config.batch_size, shuffle=shuffle, seed=config.seed, epoch=epoch):
            yield batch, None
    else:
        w = dp.world
        yield from source.shards(config.batch_size, shuffle, config.seed, epoch, w.rank, w.size)


def _loss(state: TrainingState, batch, loss_kwargs: dict, first_step: int) -> torch.Tensor:
    """The objective on ``batch``; a distribution rejecting NaN arguments is reported as a non-finite loss."""
    try:
        with without_module_registration():  # the optimizer holds the parameters: no param sites needed
            return state.objective.differentiable_loss(state.model, state.guide, batch, **loss_kwargs)
    except (ValueError, RuntimeError) as err:
        # a NaN produced by the networks surfaces before any loss exists: with validation on as a
        # distribution's ValueError ("found invalid values"), with it off as a sampler's RuntimeError
        # (a categorical draw from NaN probabilities): report it as what it is
        msg = str(err)
        params = [p for _, p in state.trained]
        finite_params = all(bool(torch.isfinite(p).all()) for p in params)
        rejected = "invalid values" in msg and ("nan" in msg or "inf" in msg or not finite_params)
        if rejected or (isinstance(err, RuntimeError) and "probability tensor contains" in msg and not finite_params):
            raise NonFiniteLossError(
                f"a distribution rejected NaN/inf arguments computed from the trained parameters "
                f"{_where(state, first_step)}. Try a smaller lr, grad_clip, or check the data"
            ) from err
        raise


def _global_loss(state: TrainingState, local, first_step: int, compute) -> tuple[torch.Tensor | None, float]:
    """This rank's loss tensor and the mean loss over the whole batch, or an error raised on every rank."""
    loss, error, n = None, None, 0 if local is None else local.batch_size
    try:
        if local is not None:
            loss = compute(local)
    except Exception as err:  # every rank must learn of it, or the others would wait forever
        error = err
    value = 0.0 if loss is None else float(loss.detach())
    total, count, failed = state.parallel.sum_values([value * n, float(n), float(error is not None)])
    if error is not None:
        raise error
    if failed:
        raise DistributedError(
            f"rank {state.parallel.world.rank}: another rank stopped with an error {_where(state, first_step)}; "
            "see that rank's message"
        )
    return loss, total / max(count, 1.0)


def _validates_distributions(state: TrainingState) -> bool:
    """Whether this step runs with Pyro's validation as set globally: a run's first step (or always)."""
    return state.config.validate_distributions == "always" or state.step == state.run_start_step


def _distribution_validation(state: TrainingState):
    """Pyro's validation for this step: as set globally on a run's first step (or always), else off."""
    return contextlib.nullcontext() if _validates_distributions(state) else pyro.validation_enabled(False)


def _finite_loss(value: float, state: TrainingState, first_step: int) -> float:
    """``value``, or a :class:`NonFiniteLossError` naming where training stopped."""
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"training loss is {value} {_where(state, first_step)}. Try a smaller lr, grad_clip, or check the data"
        )
    return value


def _compiled_step(state: TrainingState, local, beta: float, loss_kwargs: dict, first_step: int):
    """The step's gradients from the compiled graph: ``(rows, mean loss)``, or None where it runs eagerly.

    A run's first step and the epochs of a β schedule before its final β run eagerly (β is a constant of
    a graph); a step that cannot be compiled faithfully makes the rest of the run eager, with a warning.
    """
    if state.compiled is None or _validates_distributions(state) or beta != state.config.beta_schedule.final:
        return None
    batch = prepare_batch(local, state.device, state.model, state.guide, what="train_data")
    try:
        loss = state.compiled(batch, loss_kwargs)  # writes the gradients; None: run this one eagerly
    except StepCompileError as err:  # an optimisation only: say why, and train on eagerly
        warnings.warn(f"{err}; fit trains this run eagerly (as with compile=False)", stacklevel=5)
        state.compiled = None
        return None
    except RuntimeError as err:
        if not is_nan_sampling_error(err):
            raise
        raise NonFiniteLossError(  # as _loss reports a categorical draw from NaN probabilities
            f"a distribution was built from NaN/inf values computed from the trained parameters "
            f"{_where(state, first_step)}. Try a smaller lr, grad_clip, or check the data"
        ) from err
    return None if loss is None else (batch.batch_size, _finite_loss(float(loss), state, first_step))


def _eager_step(state: TrainingState, local, rows, compute, first_step: int) -> tuple[int, float]:
    """Loss and backward of one step, eagerly; ``(rows of the whole batch, mean loss over them)``."""
    dp = state.parallel
    with _distribution_validation(state):
        if dp is None:
            loss = compute(local)
            rows = local.batch_size  # compute() checked that it is a MultimodalBatch
            value = float(loss.detach())  # one host sync per step, needed for the check and the running mean
        else:
            loss, value = _global_loss(state, local, first_step, compute)
        _finite_loss(value, state, first_step)
        if loss is not None:
            if not loss.requires_grad:
                raise RuntimeError("the loss does not depend on any trained parameter (check params)")
            (loss if dp is None else loss * (local.batch_size / rows)).backward()
    return rows, value


def _train_epoch(state: TrainingState, batches, beta: float, step_hooks: list[Callback]) -> float:
    """One pass over ``batches`` (``(rows, whole-batch rows)`` pairs): the mean loss per data point.

    ``state.step`` counts the steps. Under data parallelism each rank's loss is weighted by its share
    of the batch's rows and the weighted gradients are summed over the ranks: the gradient of the mean
    over the whole batch.
    """
    config, optimizer, dp = state.config, state.optimizer, state.parallel
    params = [p for _, p in state.trained]
    loss_kwargs = dict(beta=beta, **config.loss_kwargs)
    first_step = state.epoch_start_step = state.step
    state.loss_sum, state.loss_count = 0.0, 0

    def compute(batch):
        batch = prepare_batch(batch, state.device, state.model, state.guide, what="train_data")
        return _loss(state, batch, loss_kwargs, first_step)

    for local, rows in batches:
        optimizer.zero_grad(set_to_none=True)
        compiled = _compiled_step(state, local, beta, loss_kwargs, first_step)  # (rows, loss) or None
        rows, value = compiled if compiled is not None else _eager_step(state, local, rows, compute, first_step)
        if dp is not None:
            dp.average_gradients(params)
        if compiled is None:
            clip_gradients(params, config.zero_nan_grads, config.grad_clip_value, config.grad_clip)
        else:  # the graph has zeroed NaNs and clamped the elements already
            clip_gradients(params, False, None, config.grad_clip)
        optimizer.step()
        state.step += 1
        kill_point("fit_step", state.stage)  # test hook: no-op unless PYRO_MMVAE_KILL_AT is set
        state.loss_sum += value * rows
        state.loss_count += rows
        for cb in step_hooks:
            cb.on_step_end(state)
    if state.loss_count == 0:
        raise ValueError(
            f"train_data yielded no batches in epoch {state.epoch + 1} (an exhausted iterator?); pass a dataset "
            "or a re-iterable collection of batches"
        )
    return state.loss_sum / state.loss_count


def clip_gradients(params: list[torch.Tensor], zero_nan: bool, value: float | None, norm: float | None) -> None:
    """Zero NaN gradient elements (``zero_nan``), clamp elements to ``[-value, value]``, clip the global norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if zero_nan:
        for g in grads:  # NaN -> 0, infinities kept (the clamp below bounds them)
            torch.nan_to_num_(g, nan=0.0, posinf=math.inf, neginf=-math.inf)
    if value is not None:
        torch.nn.utils.clip_grad_value_(params, value)  # one fused clamp over all gradients
    if norm is not None:
        torch.nn.utils.clip_grad_norm_(params, norm)


@torch.no_grad()
def _validate(state: TrainingState, val: DataSource, epoch: int, beta: float) -> float:
    """Mean validation loss per data point (the caller puts every module in eval mode)."""
    config = state.config

    def compute(batch):
        batch = prepare_batch(batch, state.device, state.model, state.guide, what="val_data")
        with without_module_registration():
            return state.objective.differentiable_loss(state.model, state.guide, batch, beta=beta, **config.loss_kwargs)

    total, count = 0.0, 0
    for local, rows in _shares(state, val, epoch, shuffle=False):
        if state.parallel is None:
            value, rows = float(compute(local)), local.batch_size
        else:
            _, value = _global_loss(state, local, state.step, compute)
        total += value * rows
        count += rows
    if count == 0:
        raise ValueError("val_data yielded no batches (an exhausted iterator?)")
    value = total / count
    if not math.isfinite(value):
        note = "no checkpoint is kept without run_dir" if state.files is None else state.files.last_checkpoint_note()
        raise NonFiniteLossError(
            f"validation loss is {value} after epoch {epoch + 1} of stage {state.stage!r}; training stopped, {note}"
        )
    return value
