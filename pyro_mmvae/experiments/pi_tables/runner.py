"""Train and evaluate table configurations: one run folder and one ``result.json`` per configuration.

A configuration is (table, section, row, objective, seed). :func:`run_configuration` trains it through
``fit`` in its own run folder (an interrupted run resumes from its last checkpoint) and stores its
metrics in ``<run>/result.json``; a later call with the same configuration returns that file instead of
recomputing. :func:`run_jobs` runs a plan in this process or in worker processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ...train import NonFiniteLossError, fit, load_stage
from ...train.checkpoint import CheckpointMismatchError
from ...train.run_files import StageFiles
from ...utils import atomic_write_json, set_seed, to_jsonable
from .builders import build_elbo, build_guide, build_model, make_data
from .evaluation import data_metrics, evaluate
from .report import build_report, format_number, write_outputs
from .settings import (
    ABSOLUTE_OF,
    FULL_COND_DRAWS,
    GENERATORS,
    LAYOUT,
    METRICS,
    SECONDARY_METRICS,
    VIEW_KEEP_PROB,
    Row,
    Section,
    TableSettings,
    find_row,
    find_section,
)

# Version of the metrics a result.json holds. A finished configuration whose stored metrics are older is
# evaluated again from its final checkpoint (no training). 2: one-pair MCC (+ all pairs), true-model LLH.
# 3: Tables 3-4 score the pair with the randomized dependence coefficient, as the published scripts
# (Pearson's score kept as mcc_pearson); weak_in kept as mcc_in. 4: Table 3's MCC from each modality alone.
EVALUATION_VERSION = 4
# Key fields added after results were first stored, with the value every older result was computed with.
KEY_DEFAULTS = {"poe_mean": "correct", "generator": "library", "view_keep_prob": None, "clip_on": "mean"}
# What the element-wise gradient clip ±clip applies to: "mean", the gradient of the loss averaged over the
# batch (the library's loss); "sum", the gradient of the loss SUMMED over the batch, as the published code
# (optax.clip on jnp.sum of the per-point losses), i.e. the library's gradient clipped at ±clip / B.
CLIP_ON = ("mean", "sum")
TRAIN_STAGE = "main"  # fit's default stage: <run folder>/main/ holds each configuration's checkpoints


@dataclass(frozen=True)
class RunOptions:
    """Options shared by every configuration of a run (``mask_sampler``, ``cond_draws``, ``generator``,
    ``view_keep_prob`` and ``clip_on`` are part of a configuration's key; a PoE row's mean is part of the row)."""

    mask_sampler: str = "uniform"  # how the training masks S are drawn ("uniform": each modality kept w.p. ½)
    cond_draws: int = FULL_COND_DRAWS  # Table 4 mixing-matrix conditioning reference draws
    generator: str = "library"  # "library" (default_rng) or "authors" (the published scripts' datasets, Tables 3-4)
    view_keep_prob: float | None = VIEW_KEEP_PROB  # Table 4, library generator: extra-view keep probability
    clip_on: str = "mean"  # see CLIP_ON: "sum" clips as the published code (±clip / B on the mean loss's gradient)
    device: str = "auto"
    threads: int = 1  # torch CPU threads per process
    workers: int = 1  # configurations trained in parallel processes
    progress: bool = False  # a progress bar per configuration (only shown with one worker)
    compile: bool = False  # fit(compile=True): each step one compiled graph (same draws, ~2x faster on CPU)


@dataclass(frozen=True)
class Job:
    """One configuration of a plan."""

    table: int
    section: Section
    row: Row
    objective: str
    seed: int
    settings: TableSettings

    @property
    def key(self) -> tuple:
        """The configuration's index in a run's results: (table, section name, row label, objective, seed)."""
        return (self.table, self.section.name, self.row.label, self.objective, self.seed)


def run_folder(
    runs_dir: str | Path, table: int, section: str, row: str, objective: str, seed: int, tag: str = ""
) -> Path:
    """``<runs_dir>/table<t>/<section>/<row>/<objective>/seed<s>`` (names made file-system safe).

    Data other than the library generator's default for the same seed, or training other than the
    default, get their own folder, ``<tag>-seed<s>`` (``tag`` from :func:`data_tag`, plus ``clipsum`` for
    ``clip_on="sum"``), so no run resumes a checkpoint trained on other data or with another optimizer.
    """
    leaf = f"seed{seed}" if not tag else f"{_slug(tag)}-seed{seed}"
    return Path(runs_dir) / f"table{table}" / _slug(section) / _slug(row) / objective / leaf


def data_tag(generator: str = "library", view_keep_prob: float | None = None) -> str:
    """``""`` for the library generator's default data, else e.g. ``"authors"`` or ``"keep0.33"``."""
    parts = [] if generator == "library" else [generator]
    if view_keep_prob is not None:
        parts.append(f"keep{view_keep_prob:g}")
    return "-".join(parts)


def run_configuration(
    table: int,
    section: Section | str,
    row: Row | str,
    objective: str,
    seed: int,
    settings: TableSettings,
    options: RunOptions | None = None,
    runs_dir: str | Path = "runs/pi_tables",
) -> dict:
    """Train (or resume) and evaluate one configuration; cached in ``<run folder>/result.json``.

    ``section`` and ``row`` may be given by name/label (``run_configuration(3, "main", "SumPooling",
    "masked", 0, table_settings(3, quick=True))``). Returns the stored result: ``key``, ``status``
    (``"finished"``, ``"diverged"`` or ``"failed"``), ``metrics`` (NaN → None), ``metric_errors``,
    timings, ``evaluation`` (:data:`EVALUATION_VERSION`), and ``cached`` (whether it was read back
    instead of computed). A stored finished result with older metrics is evaluated again from the
    run's final checkpoint (``fit`` reloads it without training).
    """
    options = options or RunOptions()
    section = find_section(table, section)
    row = find_row(section, row)
    run_dir, key = configuration_key(table, section, row, objective, seed, settings, options, runs_dir)
    keep_prob = key["view_keep_prob"]
    result_file = run_dir / "result.json"
    started_at = time.time()
    cached = _read_result(result_file, key)
    if cached is not None:
        if _current(cached):
            return {**cached, "cached": True}
        started_at = cached.get("started_at") or started_at  # re-evaluation of stored weights
    cpu_log = TrainingCPU(run_dir / "train_cpu.json")
    tic, cpu = time.perf_counter(), time.process_time()
    model, guide, data, training = _build_and_train(
        table, section, row, objective, seed, settings, options, run_dir, keep_prob, cpu_log
    )
    if training["status"] != "finished":
        training["train_seconds"] = time.perf_counter() - tic
    train_cpu = cpu_log.before + (time.process_time() - cpu)
    tic, cpu = time.perf_counter(), time.process_time()
    if training["status"] == "finished":
        ev = evaluate(table, row, model, guide, data, settings, options.mask_sampler, seed)
    else:
        nan = {k: math.nan for k in (*METRICS[table], *SECONDARY_METRICS[table]) if k not in ABSOLUTE_OF}
        ev = {"metrics": {**nan, **data_metrics(table, data)}, "errors": {}}
    result = {
        "key": key,
        "evaluation": EVALUATION_VERSION,
        "status": training["status"],
        "error": training["error"],
        "final_train_loss": training["final_loss"],
        "metrics": ev["metrics"],
        "metric_errors": ev["errors"],
        "train_seconds": training["train_seconds"],
        "eval_seconds": time.perf_counter() - tic,
        "train_cpu_seconds": train_cpu,
        "eval_cpu_seconds": time.process_time() - cpu,
        "started_at": started_at,
        "finished_at": time.time(),
    }
    result = to_jsonable(result)
    atomic_write_json(result_file, result, indent=1)
    result["cached"] = False
    return result


def train_configuration(
    table: int,
    section: Section | str,
    row: Row | str,
    objective: str,
    seed: int,
    settings: TableSettings,
    options: RunOptions | None = None,
    runs_dir: str | Path = "runs/pi_tables",
    load_only: bool = False,
    callbacks: Sequence = (),
) -> tuple:
    """``(model, guide, data, training)`` of one configuration, trained in its run folder: a finished run's
    final weights are reloaded without training, an unfinished one resumes. ``training`` is
    ``{"status", "error", "final_loss", "train_seconds"}``. What :func:`run_configuration` evaluates, for
    looking at a trained table model directly (``model.decoders``, ``guide.posterior(batch)``).

    ``load_only``: never train, write nothing: the run folder must hold this configuration's stored
    result (same key: settings, options) with status "finished", and its final checkpoint;
    :class:`FileNotFoundError` otherwise (e.g. a committed ``result.json`` without its weights, or a
    result of other settings), ``RuntimeError`` when the stored run diverged or failed.
    ``callbacks``: more ``fit`` callbacks for the training (e.g. to continue a finished run with
    ``settings.epochs`` raised: ``fit`` resumes it from its final checkpoint).
    """
    options = options or RunOptions()
    section = find_section(table, section)
    row = find_row(section, row)
    run_dir, key = configuration_key(table, section, row, objective, seed, settings, options, runs_dir)
    if load_only:
        return _load_finished(table, section, row, seed, settings, options, run_dir, key)
    cpu_log = TrainingCPU(run_dir / "train_cpu.json")
    return _build_and_train(table, section, row, objective, seed, settings, options, run_dir, key["view_keep_prob"],
                            cpu_log, callbacks)  # fmt: skip


def _load_finished(table, section, row, seed, settings, options, run_dir: Path, key: dict) -> tuple:
    stored = _read_result(run_dir / "result.json", key)
    if stored is None:
        raise FileNotFoundError(
            f"{run_dir / 'result.json'} holds no result of this configuration with these settings "
            f"(epochs {settings.epochs}, seed {seed}); train it with run_configuration first"
        )
    if stored["status"] != "finished":
        raise RuntimeError(f"the stored run in {run_dir} {stored['status']}: {stored.get('error')}")
    checkpoint = StageFiles(run_dir, TRAIN_STAGE).checkpoint
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no trained weights for this configuration: {checkpoint} does not exist")
    data = _data(table, section, seed, settings, options, key["view_keep_prob"])
    model, guide = build_model(table, row, data.modalities), build_guide(table, row, data.modalities)
    res = load_stage(run_dir, TRAIN_STAGE, model, guide)
    if res.epochs_run != settings.epochs and not res.stopped_early:
        raise CheckpointMismatchError(f"{checkpoint} ran {res.epochs_run} epochs, the settings {settings.epochs}")
    training = {"status": "finished", "error": None,
                "final_loss": res.history[-1]["train_loss"] if res.history else None,
                "train_seconds": sum(r["seconds"] for r in res.history)}  # fmt: skip
    return model, guide, data, training


def _data(table, section, seed, settings, options, keep_prob):
    return make_data(
        table, section.name, seed, settings.num_train, settings.num_test, options.cond_draws, options.generator,
        keep_prob,
    )  # fmt: skip


def _build_and_train(table, section, row, objective, seed, settings, options, run_dir, keep_prob, cpu_log,
                     callbacks=()):  # fmt: skip
    data = _data(table, section, seed, settings, options, keep_prob)
    set_seed(seed)  # initial weights depend on the seed only
    model = build_model(table, row, data.modalities)
    guide = build_guide(table, row, data.modalities)
    training = _train(model, guide, data, objective, seed, settings, options, run_dir, cpu_log, callbacks)
    return model, guide, data, training


def configuration_key(
    table: int, section: Section, row: Row, objective: str, seed: int, settings: TableSettings, options: RunOptions,
    runs_dir: str | Path,
) -> tuple[Path, dict]:  # fmt: skip
    """``(run folder, key)`` of a configuration: the key is what its ``result.json`` must hold to be reused."""
    if options.generator not in GENERATORS:
        raise ValueError(f"unknown generator {options.generator!r}; expected one of {GENERATORS}")
    _check_clip_on(options.clip_on)
    # the keep probability shapes Table 4's partially observed data only (the authors' generator has its own)
    keep_prob = options.view_keep_prob if table == 4 and section.eta and options.generator == "library" else None
    training_tag = "clipsum" if options.clip_on == "sum" else ""
    tag = "-".join(t for t in (data_tag(options.generator, keep_prob), training_tag) if t)
    run_dir = run_folder(runs_dir, table, section.name, row.label, objective, seed, tag)
    key = {
        "table": table,
        "section": section.name,
        "row": row.label,
        "objective": objective,
        "seed": seed,
        "settings": asdict(settings),
        "mask_sampler": options.mask_sampler,
        "poe_mean": row.poe_mean,
        "cond_draws": options.cond_draws,
        "generator": options.generator,
        "view_keep_prob": keep_prob,
        "clip_on": options.clip_on,
    }
    return run_dir, key


def _check_clip_on(clip_on: str) -> None:
    if clip_on not in CLIP_ON:
        raise ValueError(f"unknown clip_on {clip_on!r}; expected one of {CLIP_ON}")


def gradient_clip_value(settings: TableSettings, clip_on: str = "mean") -> float:
    """The element-wise clip ``fit`` applies to the gradient of its batch-MEAN loss (see :data:`CLIP_ON`)."""
    _check_clip_on(clip_on)
    return settings.clip if clip_on == "mean" else settings.clip / settings.batch_size


def stored_result(job: Job, options: RunOptions, runs_dir: str | Path, current_only: bool = True) -> dict | None:
    """The job's stored ``result.json`` when it holds this configuration (with current metrics, unless
    ``current_only`` is False), else None."""
    run_dir, key = configuration_key(job.table, job.section, job.row, job.objective, job.seed, job.settings, options,
                                     runs_dir)  # fmt: skip
    stored = _read_result(run_dir / "result.json", key)
    return {**stored, "cached": True} if stored is not None and (_current(stored) or not current_only) else None


def _read_result(result_file: Path, key: dict) -> dict | None:
    """The stored result of the configuration ``key``, or None (no file, or another configuration's)."""
    if not result_file.exists():
        return None
    stored = json.loads(result_file.read_text())
    return stored if _same_configuration(stored.get("key"), key) else None


def _current(stored: dict) -> bool:
    """Whether a stored result needs no re-evaluation (metrics of this version, or a run that did not finish)."""
    return stored.get("evaluation", 1) == EVALUATION_VERSION or stored["status"] != "finished"


def _train(model, guide, data, objective, seed, settings: TableSettings, options: RunOptions, run_dir, cpu_log,
           callbacks=()):  # fmt: skip
    """Fit one configuration; ``{"status", "error", "final_loss", "train_seconds"}`` (seconds of every epoch)."""
    try:
        res = fit(
            model,
            guide,
            data.train,
            objective=build_elbo(objective, options.mask_sampler),
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            grad_clip_value=gradient_clip_value(settings, options.clip_on),
            zero_nan_grads=True,
            run_dir=run_dir,
            resume=True,
            checkpoint_every=min(50, max(5, settings.epochs // 10)),
            seed=seed,
            device=options.device,
            progress=options.progress and options.workers == 1,
            callbacks=[cpu_log, *callbacks],
            compile=options.compile,
        )
    except NonFiniteLossError as err:
        return {"status": "diverged", "error": str(err)[:500], "final_loss": None, "train_seconds": None}
    except ValueError as err:
        # A distribution built from non-finite encoder outputs fails Pyro's argument validation
        # (e.g. an overflowing PoE precision); the run has diverged as well. Any other ValueError
        # is recorded as a failure with its message, so nothing is hidden.
        status = "diverged" if "invalid values" in str(err) else "failed"
        return {"status": status, "error": f"{type(err).__name__}: {str(err)[:500]}", "final_loss": None,
                "train_seconds": None}  # fmt: skip
    return {
        "status": "finished",
        "error": None,
        "final_loss": res.history[-1]["train_loss"] if res.history else None,
        "train_seconds": sum(row["seconds"] for row in res.history),  # also the epochs of earlier invocations
    }


class TrainingCPU:
    """fit callback keeping the CPU seconds spent on a configuration's training across invocations.

    ``before`` is what earlier (interrupted) invocations spent; after every epoch the running total is
    written to ``path``, so a resumed run adds to it (epochs redone after a resume count twice: they
    were computed twice).
    """

    def __init__(self, path: Path):
        self.path = path
        self.before = json.loads(path.read_text())["cpu_seconds"] if path.exists() else 0.0
        self.start = time.process_time()

    def __call__(self, row: dict) -> None:
        total = self.before + time.process_time() - self.start
        atomic_write_json(self.path, {"cpu_seconds": total, "epoch": row["epoch"]}, indent=None)


def _same_configuration(saved: dict | None, key: dict) -> bool:
    """Whether a stored result belongs to this configuration (the table's seed LIST does not matter; a key
    field added later counts with its :data:`KEY_DEFAULTS` value when a stored key lacks it)."""

    def strip(k):
        k = {**KEY_DEFAULTS, **to_jsonable(k)}  # plain JSON already: comparable with what a result file holds
        k.get("settings", {}).pop("seeds", None)
        return k

    return saved is not None and strip(saved) == strip(key)


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in s).strip("_")


# ---------------------------------------------------------------------------------------------- plans
def make_plan(
    tables: Iterable[int],
    settings: dict[int, TableSettings],
    objectives: Iterable[str],
    sections: set[str] | None = None,
    rows: set[str] | None = None,
    poe_means: Iterable[str] | None = None,
) -> list[Job]:
    """Every configuration of ``tables`` (optionally only some sections, rows by label or aggregator, and
    PoE rows by their mean: ``poe_means`` ⊆ {"correct", "paper"}, default both).

    Seed-major order: every table gets its first seed before any table gets its second, so a long
    run has results for all tables early; consecutive jobs share a (table, section, seed) dataset.
    """
    plan = []
    for t in tables:
        s = settings[t]
        for sec in LAYOUT[t]:
            if sections is not None and sec.name not in sections:
                continue
            for row in sec.rows:
                if rows is not None and row.label not in rows and row.aggregator not in rows:
                    continue
                if poe_means is not None and row.aggregator == "PoE" and row.poe_mean not in set(poe_means):
                    continue
                for obj in objectives:
                    for seed in s.seeds:
                        plan.append(Job(t, sec, row, obj, seed, s))
    plan.sort(
        key=lambda j: (j.settings.seeds.index(j.seed), j.table, [x.name for x in LAYOUT[j.table]].index(j.section.name))
    )
    return plan


def run_job(job: Job, options: RunOptions, runs_dir: Path) -> dict:
    """:func:`run_configuration` of one job."""
    return run_configuration(job.table, job.section, job.row, job.objective, job.seed, job.settings, options, runs_dir)


def _worker(job: Job, options: RunOptions, runs_dir: Path) -> dict:
    torch.set_num_threads(options.threads)
    return run_job(job, options, runs_dir)


def run_jobs(
    plan: list[Job],
    options: RunOptions,
    runs_dir: str | Path,
    on_result: Callable[[Job, dict], None] = lambda job, result: None,
    on_start: Callable[[Job], None] = lambda job: None,
) -> dict[tuple, dict]:
    """Run every job (in ``options.workers`` processes); ``on_result(job, result)`` after each one.

    Returns ``{job.key: result}``. With one worker the jobs run here in plan order (``on_start`` is
    called before each); with more they run in spawned processes (forking a process that already ran
    torch ops can hang in OpenMP), each with ``options.threads`` torch threads.
    """
    runs_dir = Path(runs_dir)
    results: dict[tuple, dict] = {}
    if options.workers == 1:
        for job in plan:
            on_start(job)
            results[job.key] = res = run_job(job, options, runs_dir)
            on_result(job, res)
        return results
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(options.workers, mp_context=ctx) as pool:
        futures = {pool.submit(_worker, job, options, runs_dir): job for job in plan}
        for fut in as_completed(futures):
            job = futures[fut]
            results[job.key] = res = fut.result()
            on_result(job, res)
    return results


def run_tables(
    plan: list[Job],
    settings: dict[int, TableSettings],
    options: RunOptions,
    runs_dir: str | Path,
    out: str | Path,
    name: str,
    command: str,
    progress: bool = True,
    report_only: bool = False,
) -> dict:
    """Run ``plan`` and keep ``<out>.json`` / ``<out>.md`` up to date after every finished configuration.

    ``report_only``: train nothing; the report holds the configurations whose ``result.json`` is stored.

    Configurations finished by an earlier call are read back from their ``result.json``, unfinished
    ones resume from their last checkpoint, so the same call both continues a run and rebuilds its
    report. Returns the final report (see :func:`report.build_report`).
    """
    start = time.perf_counter()
    results: dict[tuple, dict] = {}
    bar = tqdm(total=len(plan), desc="pi tables", unit="config", disable=not progress)

    def on_start(job: Job) -> None:
        bar.set_postfix_str(f"T{job.table} {job.section.name} {job.row.label} {job.objective} seed {job.seed}")

    def on_result(job: Job, res: dict) -> None:
        results[job.key] = res
        line = ", ".join(f"{k}={format_number(v)}" for k, v in res["metrics"].items())
        tqdm.write(
            f"[T{job.table} {job.section.name} | {job.row.label} | {job.objective} | seed {job.seed}] {res['status']}"
            f"{' (cached)' if res['cached'] else ''}: {line}  "
            f"(train {res['train_seconds']:.0f} s, eval {res['eval_seconds']:.0f} s)"
        )
        bar.update(1)
        elapsed = time.perf_counter() - start
        write_outputs(build_report(name, settings, results, plan, command, elapsed, options), out)

    if report_only:
        for job in plan:
            stored = stored_result(job, options, runs_dir)
            if stored is not None:
                results[job.key] = stored
    else:
        run_jobs(plan, options, runs_dir, on_result, on_start)
    bar.close()
    report = build_report(name, settings, results, plan, command, time.perf_counter() - start, options)
    write_outputs(report, out)
    return report
