"""``fit_ensemble``: train several seeds (or same-shape configurations) as one vectorised model.

Small multimodal models spend most of a training step in Python: Pyro's traces, plates and
distribution objects cost the same whether the networks are tiny or not. ``fit_ensemble`` stacks
the parameters of M members of the same architecture (``(M, *shape)`` per parameter) and evaluates
the objective for all of them in one program run with ``torch.func.vmap``; the networks then run as
batched matrix products and the Python overhead is paid once per step instead of M times. ::

    members = [Member(build_model(), build_guide(), seed=s) for s in range(5)]   # each with its own modules
    result = fit_ensemble(members, data, MaskedELBO(), epochs=100, batch_size=128, lr=1e-3)
    result.members[2].history        # seed 2's epochs, as fit would report them

**Equivalence.** Member ``m`` trains exactly as ``fit(model_m, guide_m, data_m, objective, config,
seed=seed_m)`` would, up to floating-point reduction order: its batches come in the order of its
own seed, its random draws come from its own generator seeded like ``fit``'s global one
(:class:`~pyro_mmvae.train.member_randomness.MemberRandomness`), and every setting acts on it alone —
gradient clipping by its own norm, the optimizer element-wise on its slice (``adam``, ``adamw``,
``sgd``, ``rmsprop``), early stopping on its own validation loss, ``restore_best`` with its own best
epoch. A member whose loss becomes NaN/inf stops there, as its ``fit`` would raise
``NonFiniteLossError``: its parameters stay those of that moment, its error is recorded in
:attr:`EnsembleResult.errors`, and the others go on. At the end each member's weights are written
back into its own model and guide.

**What vectorises.** The objective must evaluate each member without Python decisions on tensor
values (``if x.any()``, ``.item()``, ``float(x)`` inside the model, guide or objective); the
library's objectives and guides are written so. Batches are validated per member before stacking,
and Pyro's distribution validation runs once on member 0's first batch before training (under a
forked RNG, so no member's draws change) — inside the vectorised step it is off. Members hold their
own modules (no parameter shared between members). A model written as a plain Pyro function
(:class:`~pyro_mmvae.models.FunctionModel`) keeps its networks outside the model object and cannot
be stacked: write it as an ``nn.Module``/``PyroModule`` (see ``tutorials/``) or train it with ``fit``.

**Run folders.** With ``run_dir``, ``<run_dir>/<stage>/ensemble.pt`` (every stacked tensor,
optimizer, scheduler, every member's generator, history, best epoch and status; weights-only
loadable) and ``log.csv`` (one row per member and epoch) are written atomically every
``checkpoint_every`` epochs; ``resume=True`` continues a killed run exactly where its last
checkpoint left it, ``overwrite=True`` starts over, otherwise an existing checkpoint is an error.
"""

from __future__ import annotations

import csv
import io
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch.func import functional_call, vmap
from tqdm import tqdm

from ..data.batch import MultimodalBatch
from ..data.validation import declared_modalities, mark_validated, prepare_batch
from ..errors import InputError, InputTypeError
from ..infer.elbo import BetaELBO
from ..models.function import FunctionModel, as_model
from ..utils import atomic_write, kill_point, resolve_device, to_jsonable
from .checkpoint import CHECKPOINT_FORMAT, CheckpointMismatchError, load_checkpoint, save_checkpoint
from .config import RUNTIME_FIELDS, FitConfig
from .data_source import DataSource
from .loop import clip_gradients
from .member_randomness import MemberRandomness
from .optim import build_optimizer, describe_optimizer
from .parameters import ModelGuidePair
from .schedules import build_lr_scheduler, lr_schedule_config
from .state import LOG_COLUMNS, FitResult

_functorch = torch._C._functorch
CHECKPOINT_NAME = "ensemble.pt"
_RUNNING, _STOPPED, _FAILED = "running", "stopped_early", "failed"


class VectorisationError(RuntimeError):
    """The objective cannot be evaluated for all members in one vectorised program run."""


@dataclass
class Member:
    """One member of an ensemble: its model and guide (its own modules), its seed and optionally its data.

    ``seed=None`` takes the config's ``seed``; ``train_data``/``val_data`` ``None`` take the data given
    to :func:`fit_ensemble` (members of one ensemble may train on different datasets of equal size,
    e.g. one simulated dataset per seed).
    """

    model: Any
    guide: torch.nn.Module
    seed: int | None = None
    train_data: Any = None
    val_data: Any = None


@dataclass
class EnsembleResult:
    """What :func:`fit_ensemble` returns: per member a :class:`~pyro_mmvae.train.FitResult` and an error or None."""

    seeds: list[int]
    members: list[FitResult]
    errors: list[str | None]
    stage_dir: Path | None = None
    checkpoint_path: Path | None = None

    @property
    def failed(self) -> list[int]:
        """Indices of the members whose loss became non-finite (see :attr:`errors`)."""
        return [i for i, e in enumerate(self.errors) if e is not None]


class _BatchedParamsPassThrough(Messenger):
    """``pyro.param`` of a member's (batched) tensor returns it untouched: Pyro's global store never sees it."""

    def _pyro_param(self, msg):
        init = msg["args"][1] if len(msg["args"]) > 1 else None
        if isinstance(init, torch.Tensor) and _functorch.is_batchedtensor(init):
            msg["value"], msg["done"] = init, True


@dataclass
class _MemberState:
    seed: int
    status: str = _RUNNING
    error: str | None = None
    steps: int = 0
    history: list[dict] = field(default_factory=list)
    best_val: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_weights: dict[str, torch.Tensor] | None = None  # name -> this member's slice
    frozen: dict[str, torch.Tensor] | None = None  # the slice kept while the others train

    def plain(self) -> dict:
        out = {k: getattr(self, k) for k in ("seed", "status", "error", "steps", "best_val", "best_epoch")}
        return out | {"bad_epochs": self.bad_epochs, "history": self.history}


class _Ensemble:
    """The stacked members, their optimizer and the vectorised objective."""

    def __init__(self, pairs: list[ModelGuidePair], device: torch.device):
        self.pairs, self.base, self.device = pairs, pairs[0], device
        named = [dict(p.named_parameters()) for p in pairs]
        buffers = [dict(p.named_buffers()) for p in pairs]
        _check_same_architecture(named, buffers)
        self.trained_names = [n for n, t in named[0].items() if t.requires_grad]
        self.params = {
            n: torch.stack([d[n].detach() for d in named]).requires_grad_(named[0][n].requires_grad) for n in named[0]
        }
        self.buffers = {n: torch.stack([d[n].detach() for d in buffers]) for n in buffers[0]}
        self.modalities = declared_modalities(pairs[0].model, pairs[0].guide)

    @property
    def size(self) -> int:
        return len(self.pairs)

    def trained(self) -> list[torch.Tensor]:
        return [self.params[n] for n in self.trained_names]

    def member_slice(self, m: int) -> dict[str, torch.Tensor]:
        return {n: t[m].detach().clone() for n, t in {**self.params, **self.buffers}.items()}

    @torch.no_grad()
    def set_member(self, m: int, values: dict[str, torch.Tensor]) -> None:
        for n, t in {**self.params, **self.buffers}.items():
            t[m].copy_(values[n])

    def losses(self, batches: list[MultimodalBatch], loss_kwargs: dict, randomness: MemberRandomness) -> torch.Tensor:
        """``(M,)``: member m's objective on ``batches[m]``, its draws from its own generator."""
        data, present, labels = _stack_batches(batches)
        keys = {n: m for n, m in (self.modalities or {}).items() if n in data}

        def one(params, buffers, data, present, labels):
            batch = MultimodalBatch(data, present, labels)
            mark_validated(batch, keys)  # every member's rows were validated before stacking
            level = _functorch.maybe_current_level()
            with randomness.at_level(level), _BatchedParamsPassThrough(), pyro.validation_enabled(False):
                with warnings.catch_warnings():
                    # pyro.module skips (and warns about) parameters it sees as not requiring grad: the
                    # batched stand-ins of the members' parameters look so inside vmap
                    warnings.filterwarnings("ignore", message=".*was not registered in the param store.*")
                    return functional_call(self.base, {**params, **buffers}, (batch, loss_kwargs))

        try:
            with randomness:
                out = vmap(one, randomness="error")(self.params, self.buffers, data, present, labels)
        except (RuntimeError, NotImplementedError) as err:
            if _is_vectorisation_failure(err):
                raise VectorisationError(
                    f"the objective {type(self.base.objective).__name__} on this model and guide cannot run vectorised "
                    f"over the ensemble's members: {err}. Usual causes: Python decisions on tensor values (if x.any(), "
                    ".item(), float(x)) inside the model, guide or objective, or a random operation torch does not "
                    "expose to Python; train the members one by one with fit"
                ) from err
            raise
        finally:
            randomness.level = None
        if out.shape != (self.size,):
            raise InputError(
                f"the objective must return one scalar loss per call; got shape {tuple(out.shape[1:])} per member"
            )
        return out

    @torch.no_grad()
    def write_back(self, m: int, values: dict[str, torch.Tensor]) -> None:
        """Load ``values`` (one member's slice) into member m's own modules."""
        pair = self.pairs[m]
        for n, t in {**dict(pair.named_parameters()), **dict(pair.named_buffers())}.items():
            t.copy_(values[n])


def fit_ensemble(
    members: Sequence[Member],
    train_data=None,
    objective=None,
    config: FitConfig | None = None,
    *,
    val_data=None,
    **settings: Any,
) -> EnsembleResult:
    """Train ``members`` as one vectorised model; member m ends as ``fit`` with its seed would leave it.

    Args:
        members: :class:`Member` objects (or ``(model, guide)`` / ``(model, guide, seed)`` tuples) of one
            architecture: same model and guide classes, same parameter names and shapes.
        train_data: the data of members without their own ``train_data`` (a dataset or a
            ``MultimodalBatch``; a list of batches is re-used in its order by every member).
        objective: as for :func:`~pyro_mmvae.train.fit` (default ``BetaELBO()``).
        config: a :class:`~pyro_mmvae.train.FitConfig`; keyword ``settings`` override its fields.
            Every setting of ``fit`` applies per member except ``tensorboard`` and ``compile`` (not
            supported) and ``seed`` (the default seed of members without one).
        val_data: validation data of members without their own (all members have validation data or none).

    Returns:
        :class:`EnsembleResult` (per member: history, steps, best epoch, early stop, error).

    Raises:
        InputError / InputTypeError: members of different architectures, shared parameters, unequal
            batch counts, bad settings (naming the member and the setting).
        VectorisationError: the objective cannot run vectorised on these members.
        FileExistsError / CheckpointMismatchError: as ``fit`` for an existing run folder.
    """
    config = FitConfig.from_settings(config, settings)
    if config.tensorboard:
        raise InputError("fit_ensemble does not write TensorBoard events (tensorboard=True); use log.csv")
    if config.compile:
        raise InputError("fit_ensemble does not compile its vectorised step (compile=True); use fit(compile=True)")
    objective = objective if objective is not None else BetaELBO()
    members = [_as_member(m, i) for i, m in enumerate(members)]
    if not members:
        raise InputError("fit_ensemble needs at least one member")
    seeds = [config.seed if m.seed is None else _check_seed(m.seed, i) for i, m in enumerate(members)]
    train = [
        DataSource(m.train_data if m.train_data is not None else _need(train_data, i), f"train_data of member {i}")
        for i, m in enumerate(members)
    ]
    vals = [m.val_data if m.val_data is not None else val_data for m in members]
    if any(v is None for v in vals) and any(v is not None for v in vals):
        raise InputError("either every member has validation data or none has (give val_data, or each member's)")
    val = None if vals[0] is None else [DataSource(v, f"val_data of member {i}") for i, v in enumerate(vals)]
    if val is None and config.early_stopping_patience is not None:
        raise InputError("early_stopping_patience needs val_data")

    pairs = []
    for i, (m, source) in enumerate(zip(members, train)):
        model = torch.nn.Module() if m.model is None else as_model(m.model, m.guide)
        if isinstance(model, FunctionModel):
            raise InputTypeError(
                f"member {i}: a model written as a plain Pyro function keeps its networks outside the model, so its "
                "parameters cannot be stacked; write it as an nn.Module/PyroModule or train it with fit"
            )
        source.check(declared_modalities(model, m.guide))
        if val is not None:
            val[i].check(declared_modalities(model, m.guide))
        pairs.append(ModelGuidePair(model, m.guide, objective))
    device = resolve_device(config.device)
    for p in pairs:
        p.to(device)
    ens = _Ensemble(pairs, device)
    states = [_MemberState(seed=s) for s in seeds]
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    optimizer = build_optimizer(config.optimizer, ens.trained(), config.lr, config.optimizer_kwargs)
    scheduler = build_lr_scheduler(config.lr_schedule, optimizer, config.epochs)
    record = _record(config, objective, seeds, ens)
    folder = None if config.run_dir is None else Path(config.run_dir) / config.stage
    start, resumed = 0, None
    saved = _open(folder, config)
    if saved is not None:
        _check_record(saved["record"], record, folder / CHECKPOINT_NAME)
        start = resumed = int(saved["epoch"])
        if config.epochs < start:
            raise CheckpointMismatchError(
                f"cannot resume {folder / CHECKPOINT_NAME} with epochs={config.epochs}: it "
                f"has already run {start} epochs"
            )
        _restore(saved, ens, optimizer, scheduler, generators, states)
    run = _Run(ens, states, generators, optimizer, scheduler, config, train, val, folder, record)
    if start < config.epochs and run.running():
        run.check_first_step()
        run.epochs(start)
    return run.finish(resumed)


class _Run:
    """The epochs of one call of :func:`fit_ensemble`."""

    def __init__(self, ens, states, generators, optimizer, scheduler, config, train, val, folder, record):
        self.ens, self.states, self.generators = ens, states, generators
        self.optimizer, self.scheduler, self.config = optimizer, scheduler, config
        self.train, self.val, self.folder, self.record = train, val, folder, record
        self.randomness = MemberRandomness(generators)
        self.epoch = 0

    def running(self) -> list[int]:
        return [i for i, s in enumerate(self.states) if s.status == _RUNNING]

    def check_first_step(self) -> None:
        """Member 0's objective on its first batch with Pyro's validation on, off every member's random stream."""
        pair = self.ens.base
        batch = next(iter(self.train[0].batches(self.config.batch_size, True, self.states[0].seed, 0)))
        batch = prepare_batch(batch, self.ens.device, pair.model, pair.guide, what="train_data of member 0")
        devices = [self.ens.device.index or 0] if self.ens.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            pair(batch, dict(beta=self.config.beta_schedule(0), **self.config.loss_kwargs))

    def epochs(self, start: int) -> None:
        config = self.config
        bar = tqdm(
            total=config.epochs,
            initial=start,
            desc=f"fit_ensemble[{config.stage}]",
            unit="epoch",
            disable=not config.progress,
        )
        try:
            for e in range(start, config.epochs):
                if not self.running():
                    break
                tic = time.perf_counter()
                beta, lr = config.beta_schedule(e), float(self.optimizer.param_groups[0]["lr"])
                train_loss = self._train_epoch(e, dict(beta=beta, **config.loss_kwargs))
                val_loss = self._validate(e) if self.val is not None else [None] * self.ens.size
                if self.scheduler is not None:
                    self.scheduler.step()
                seconds = time.perf_counter() - tic
                for i in self.running():
                    s = self.states[i]
                    s.history.append(
                        {
                            "epoch": e + 1,
                            "step": s.steps,
                            "train_loss": train_loss[i],
                            "val_loss": val_loss[i],
                            "beta": beta,
                            "lr": lr,
                            "seconds": seconds,
                        }
                    )
                    patience = config.early_stopping_patience
                    if patience is not None and s.bad_epochs >= patience:
                        self._freeze(i, _STOPPED)
                self.epoch = e + 1
                last = self.epoch == config.epochs or not self.running()
                if self.folder is not None and (self.epoch % config.checkpoint_every == 0 or last):
                    self._save(finished=last)
                live = [train_loss[i] for i in self.running()]
                bar.set_postfix(
                    running=f"{len(live)}/{self.ens.size}", loss=f"{sum(live) / len(live):.4g}" if live else "-"
                )
                bar.update(1)
        finally:
            bar.close()

    def _lockstep(self, sources: list[DataSource], epoch: int, shuffle: bool, what: str):
        iters = [s.batches(self.config.batch_size, shuffle, st.seed, epoch) for s, st in zip(sources, self.states)]
        try:
            for k, batches in enumerate(zip(*iters, strict=True)):
                sizes = {b.batch_size for b in batches}
                if len(sizes) > 1:
                    raise InputError(
                        f"{what}: batch {k + 1} of epoch {epoch + 1} has different sizes over the members "
                        f"{sorted(sizes)}; give members data of equal size"
                    )
                yield [
                    prepare_batch(b, self.ens.device, p.model, p.guide, what=f"{what} of member {i}")
                    for i, (b, p) in enumerate(zip(batches, self.ens.pairs))
                ]
        except ValueError as err:
            if "zip()" not in str(err):
                raise
            raise InputError(
                f"{what}: the members have different numbers of batches per epoch ({err}); give "
                "members data of equal size"
            ) from None

    def _train_epoch(self, epoch: int, loss_kwargs: dict) -> list[float | None]:
        ens, config = self.ens, self.config
        ens.base.train()
        sums, counts = [0.0] * ens.size, [0] * ens.size
        trained = ens.trained()
        for batches in self._lockstep(self.train, epoch, True, "train_data"):
            self.optimizer.zero_grad(set_to_none=True)
            losses = ens.losses(batches, loss_kwargs, self.randomness)
            values = losses.detach().tolist()  # one host sync per step, as in fit
            for i in self.running():
                if not math.isfinite(values[i]):
                    s = self.states[i]
                    self._freeze(
                        i,
                        _FAILED,
                        f"training loss is {values[i]} at epoch {epoch + 1} (global step "
                        f"{s.steps + 1}); member {i} (seed {s.seed}) stopped there. Try a "
                        "smaller lr, grad_clip, or check the data",
                    )
            live = self.running()
            if not live:
                break
            total = losses[torch.tensor(live, device=losses.device)].sum()
            if not total.requires_grad:
                raise RuntimeError("the loss does not depend on any trained parameter")
            total.backward()
            with torch.no_grad():
                frozen = [i for i in range(ens.size) if i not in live]
                for g in (p.grad for p in trained if p.grad is not None):
                    g[frozen] = 0.0
            _clip_per_member(trained, config.zero_nan_grads, config.grad_clip_value, config.grad_clip)
            self.optimizer.step()
            self._hold_frozen()
            rows = batches[0].batch_size
            for i in live:
                self.states[i].steps += 1
                sums[i] += values[i] * rows
                counts[i] += rows
            kill_point("ensemble_step", config.stage)
        return [sums[i] / counts[i] if counts[i] else None for i in range(ens.size)]

    @torch.no_grad()
    def _validate(self, epoch: int) -> list[float | None]:
        ens, config = self.ens, self.config
        ens.base.eval()
        kwargs = dict(beta=config.beta_schedule.final, **config.loss_kwargs)
        sums, count = [0.0] * ens.size, 0
        for batches in self._lockstep(self.val, epoch, False, "val_data"):
            values = ens.losses(batches, kwargs, self.randomness).tolist()
            rows = batches[0].batch_size
            sums = [a + v * rows for a, v in zip(sums, values)]
            count += rows
        out: list[float | None] = [None] * ens.size
        for i in self.running():
            s, value = self.states[i], sums[i] / count
            if not math.isfinite(value):
                self._freeze(
                    i,
                    _FAILED,
                    f"validation loss is {value} after epoch {epoch + 1}; member {i} (seed {s.seed}) stopped",
                )
                continue
            out[i] = value
            if s.best_val is None or value < s.best_val - config.early_stopping_min_delta:
                s.best_val, s.best_epoch, s.bad_epochs = value, epoch + 1, 0
                s.best_weights = ens.member_slice(i)
            else:
                s.bad_epochs += 1
        return out

    def _freeze(self, i: int, status: str, error: str | None = None) -> None:
        s = self.states[i]
        s.status, s.error = status, error
        s.frozen = self.ens.member_slice(i)

    def _hold_frozen(self) -> None:
        for s_i, s in enumerate(self.states):
            if s.frozen is not None:
                self.ens.set_member(s_i, s.frozen)

    # ------------------------------------------------------------------ files
    def _save(self, finished: bool) -> None:
        ens = self.ens
        best = {str(i): s.best_weights for i, s in enumerate(self.states) if s.best_weights is not None}
        frozen = {str(i): s.frozen for i, s in enumerate(self.states) if s.frozen is not None}
        saved = {
            "format": CHECKPOINT_FORMAT,
            "record": self.record,
            "epoch": self.epoch,
            "finished": bool(finished),
            "params": {n: t.detach() for n, t in ens.params.items()},
            "buffers": dict(ens.buffers),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "members": [to_jsonable(s.plain(), non_finite="repr") for s in self.states],
            "best": best,
            "frozen": frozen,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(saved, self.folder / CHECKPOINT_NAME)
        atomic_write(self.folder / "log.csv", lambda f: f.write(_log_csv(self.states)), binary=False)

    def finish(self, resumed: int | None) -> EnsembleResult:
        ens, config = self.ens, self.config
        results = []
        for i, s in enumerate(self.states):
            use_best = config.restore_best and s.best_weights is not None and s.status != _FAILED
            ens.write_back(i, s.best_weights if use_best else ens.member_slice(i))
            results.append(
                FitResult(
                    stage=config.stage,
                    history=list(s.history),
                    epochs_run=len(s.history),
                    steps=s.steps,
                    best_val_loss=s.best_val,
                    best_epoch=s.best_epoch,
                    stopped_early=s.status == _STOPPED,
                    finished=s.status != _FAILED,
                    resumed_from=resumed,
                    stage_dir=self.folder,
                    checkpoint_path=None if self.folder is None else self.folder / CHECKPOINT_NAME,
                    log_path=None if self.folder is None else self.folder / "log.csv",
                )
            )
        return EnsembleResult(
            seeds=[s.seed for s in self.states],
            members=results,
            errors=[s.error for s in self.states],
            stage_dir=self.folder,
            checkpoint_path=None if self.folder is None else self.folder / CHECKPOINT_NAME,
        )


# ---------------------------------------------------------------------- helpers


def _as_member(m, i: int) -> Member:
    if isinstance(m, Member):
        return m
    if isinstance(m, tuple) and len(m) in (2, 3):
        return Member(*m)
    raise InputTypeError(f"member {i}: expected a Member or a (model, guide[, seed]) tuple, got {type(m).__name__}")


def _check_seed(seed, i: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise InputError(f"member {i}: seed must be an int in [0, 2**32), got {seed!r}")
    return int(seed)


def _need(data, i: int):
    if data is None:
        raise InputError(f"member {i} has no train_data: give train_data to fit_ensemble or to the member")
    return data


def _check_same_architecture(named: list[dict], buffers: list[dict]) -> None:
    ref, ref_buf = named[0], buffers[0]
    seen = {id(t): (0, n) for n, t in ref.items()}
    for i, (d, b) in enumerate(zip(named[1:], buffers[1:]), start=1):
        for what, mine, base in (("parameters", d, ref), ("buffers", b, ref_buf)):
            if list(mine) != list(base):
                diff = sorted(set(mine) ^ set(base))[:6]
                raise InputError(
                    f"member {i} has other {what} than member 0 (differing names {diff}): members of an "
                    "ensemble need one architecture"
                )
            for n, t in mine.items():
                if t.shape != base[n].shape or t.dtype != base[n].dtype:
                    raise InputError(
                        f"member {i}: {n} is {tuple(t.shape)} {t.dtype}, member 0's is "
                        f"{tuple(base[n].shape)} {base[n].dtype}"
                    )
                if what == "parameters" and t.requires_grad != base[n].requires_grad:
                    raise InputError(
                        f"member {i}: {n} has requires_grad={t.requires_grad}, member 0's has {base[n].requires_grad}"
                    )
        for n, t in d.items():
            if id(t) in seen:
                j, other = seen[id(t)]
                raise InputError(
                    f"member {i}'s parameter {n} is member {j}'s {other} (the same tensor): build each "
                    "member's model and guide separately"
                )
            seen[id(t)] = (i, n)


def _stack_batches(batches: list[MultimodalBatch]) -> tuple[dict, dict, dict]:
    ref = batches[0]
    for i, b in enumerate(batches[1:], start=1):
        if b.names != ref.names or set(b.labels) != set(ref.labels):
            raise InputError(
                f"member {i}'s batch has modalities {b.names} and labels {sorted(b.labels)}; member 0's "
                f"{ref.names} and {sorted(ref.labels)}"
            )
        for name in ref.names:
            if b.data[name].shape != ref.data[name].shape:
                raise InputError(
                    f"modality {name!r}: member {i}'s batch is {tuple(b.data[name].shape)}, member 0's "
                    f"{tuple(ref.data[name].shape)}"
                )

    def stack(group: str) -> dict:
        return {k: torch.stack([getattr(b, group)[k] for b in batches]) for k in getattr(ref, group)}

    return stack("data"), stack("present"), stack("labels")


def _is_vectorisation_failure(err: BaseException) -> bool:
    msg = str(err)
    return any(
        s in msg
        for s in ("vmap", "Batching rule", "data pointer", "BatchedTensor", "randomness", "data-dependent", "item()")
    )


def _clip_per_member(params: list[torch.Tensor], zero_nan: bool, value: float | None, norm: float | None) -> None:
    """``fit``'s clipping with each member's gradient norm computed over its own slices."""
    clip_gradients(params, zero_nan, value, None)  # element-wise: the same per member
    if norm is None:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    per_member = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # (M,)
    coef = (norm / (per_member + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


def _record(config: FitConfig, objective, seeds: list[int], ens: _Ensemble) -> dict:
    from .loop import _describe

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
        "loss_kwargs": config.loss_kwargs,
        "elbo": _describe(objective),
        "seeds": list(seeds),
        "parameters": {n: list(t.shape) for n, t in ens.params.items()},
    }
    runtime = {name: getattr(config, name) for name in RUNTIME_FIELDS}
    return to_jsonable({"format": CHECKPOINT_FORMAT, "settings": settings, "runtime": runtime}, non_finite="repr")


def _open(folder: Path | None, config: FitConfig) -> dict | None:
    if folder is None:
        return None
    path = folder / CHECKPOINT_NAME
    if not path.exists():
        return None
    if config.resume:
        return load_checkpoint(path)
    if config.overwrite:
        path.unlink()
        return None
    raise FileExistsError(f"{path} exists: pass resume=True to continue that run or overwrite=True to start over")


def _check_record(saved: dict, current: dict, path: Path) -> None:
    old, new = saved["settings"], current["settings"]
    differ = sorted(k for k in set(old) | set(new) if k != "epochs" and old.get(k) != new.get(k))
    if differ:
        detail = "; ".join(f"{k}: checkpoint {old.get(k)!r}, now {new.get(k)!r}" for k in differ[:4])
        raise CheckpointMismatchError(f"cannot resume {path}: settings differ ({detail})")


def _restore(saved: dict, ens: _Ensemble, optimizer, scheduler, generators, states) -> None:
    with torch.no_grad():
        for n, t in ens.params.items():
            t.copy_(saved["params"][n])
        for n, t in ens.buffers.items():
            t.copy_(saved["buffers"][n])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved["lr_scheduler"] is not None:
        scheduler.load_state_dict(saved["lr_scheduler"])
    for g, state in zip(generators, saved["generators"]):
        g.set_state(state)
    device = ens.device
    for i, (s, plain) in enumerate(zip(states, saved["members"])):
        s.status, s.error, s.steps = plain["status"], plain["error"], int(plain["steps"])
        s.best_val, s.best_epoch, s.bad_epochs = plain["best_val"], plain["best_epoch"], int(plain["bad_epochs"])
        s.history = list(plain["history"])
        best, frozen = saved["best"].get(str(i)), saved["frozen"].get(str(i))
        s.best_weights = None if best is None else {n: t.to(device) for n, t in best.items()}
        s.frozen = None if frozen is None else {n: t.to(device) for n, t in frozen.items()}


def _log_csv(states: list[_MemberState]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["member", "seed", *LOG_COLUMNS])
    for i, s in enumerate(states):
        for row in s.history:
            w.writerow([i, s.seed, *("" if row[k] is None else row[k] for k in LOG_COLUMNS)])
    return out.getvalue()


def members_from(build, seeds: Iterable[int]) -> list[Member]:
    """``[Member(*build(seed), seed=seed) for seed in seeds]`` with torch seeded by ``seed`` before each build.

    ``build(seed) -> (model, guide)`` constructs one member; seeding first gives each member the
    initial weights that ``set_seed(seed); build(seed)`` gives a lone run.
    """
    from ..utils import set_seed

    out = []
    for seed in seeds:
        set_seed(seed)
        model, guide = build(seed)
        out.append(Member(model, guide, seed=seed))
    return out
