"""Experiment tracking: MLflow and Weights & Biases as trainer callbacks (optional extras).

Each logger sends the stage's settings, one set of metrics per epoch (``<stage>/train_loss``,
``<stage>/val_loss``, ``beta``, ``lr``, ``step``, ``seconds``, at step = epoch) and, on request, PNG
figures. One pyro_mmvae run folder is ONE tracked run: the tracked run's id is kept in
``<run_dir>/tracking.json``, so every stage, every resume and every new process that trains in the
folder logs into the same MLflow run / W&B run::

    from pyro_mmvae.train import fit
    from pyro_mmvae.train.tracking import tracker

    log = tracker("mlflow", "runs/demo", tracking_uri="runs/mlruns")  # or tracker("wandb", "runs/demo")
    fit(model, guide, data, BetaELBO(), epochs=100, run_dir="runs/demo", stage="joint", callbacks=[log])
    fit(model, flows, data, objective2, epochs=50, run_dir="runs/demo", stage="flows", callbacks=[log])
    log.log_artifacts("runs/demo/figures")  # every PNG below the folder

``tracking.json`` also records the last epoch sent per stage: after a resume only later epochs are
sent (the epochs re-run after the checkpoint reproduce the values already sent). A stage that starts
from epoch 0 again (no checkpoint, or ``overwrite=True``) sends its epochs again. The packages are
imported when a logger is built, never when this module is imported.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..utils import atomic_write_json, read_json
from .callbacks import Callback
from .state import LOG_COLUMNS, TrainingState

TRACKING_FILE = "tracking.json"
METRIC_COLUMNS = tuple(c for c in LOG_COLUMNS if c != "epoch")  # the epoch is the step


def _require(package: str, who: str):
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise ImportError(
            f"{who} needs the optional '{package}' package: pip install {package} "
            f"(or pip install 'pyro-mmvae[{package}]')"
        ) from err


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted.key, string value)`` pairs of a nested JSON dict; lists stay one JSON value."""
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, json.dumps(obj) if isinstance(obj, list | dict) else str(obj)


class Tracker(Callback):
    """Shared bookkeeping: which tracked run belongs to a run folder and which epochs it has."""

    backend = ""  # the section of tracking.json

    def __init__(self, run_dir: str | os.PathLike | None):
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # stage -> last epoch sent
        self._folder: Path | None = None  # the run folder run_id belongs to
        self._opened = False

    # -- tracking.json: written after each send (a kill in between repeats at most one epoch)
    def _file(self) -> Path | None:
        return None if self._folder is None else self._folder / TRACKING_FILE

    def _saved(self) -> dict:
        path = self._file()
        if path is None or not path.exists():
            return {}
        return read_json(path, what="tracking file").get(self.backend, {})

    def _save(self) -> None:
        path = self._file()
        if path is not None:
            data = read_json(path, what="tracking file") if path.exists() else {}
            data[self.backend] = {"run_id": self.run_id, "logged": self.logged, **self._identity()}
            atomic_write_json(path, data)

    def _open(self, folder: Path | None) -> None:
        """Attach to the tracked run of ``folder`` (creating it the first time)."""
        if self._opened and folder == self._folder:
            return
        self._folder = folder
        saved = self._saved()
        if saved:
            self._check(saved)
            self.run_id, self.logged = saved["run_id"], {k: int(v) for k, v in saved["logged"].items()}
        else:
            self.run_id, self.logged = self._new_run(), {}
        self._opened = True
        self._save()

    # -- hooks
    def on_fit_start(self, state: TrainingState) -> None:
        self._open(state.files.dir.parent if state.files is not None else self.run_dir)
        if state.resumed_from is None:  # the stage starts from epoch 0: everything it logs is new
            self.logged.pop(state.stage, None)
        self.logged[state.stage] = max(self.logged.get(state.stage, 0), self._last_logged(state))
        self._start(state)
        # rows of the checkpoint not sent yet (a logger added on resume, a kill before sending)
        self._send(state.stage, list(state.history))

    def on_epoch_end(self, state: TrainingState, row: dict) -> None:
        self._send(state.stage, [row])

    def _send(self, stage: str, rows: list[dict]) -> None:
        rows = [r for r in rows if r["epoch"] > self.logged.get(stage, 0)]
        if rows:
            self._log_rows(stage, rows)
            self.logged[stage] = rows[-1]["epoch"]
            self._save()

    # -- figures
    def log_figures(self, paths: Iterable[str | os.PathLike], prefix: str = "figures") -> list[str]:
        """Upload image files (PNG) under ``prefix/<file name>``; returns the names logged."""
        return self._upload([(Path(p), Path(p).name) for p in paths], prefix)

    def log_artifacts(self, directory: str | os.PathLike, prefix: str = "figures") -> list[str]:
        """Upload every PNG file below ``directory``, named by its path relative to it."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"log_artifacts: {directory} is not a folder")
        files = sorted(directory.rglob("*.png"))
        return self._upload([(f, f.relative_to(directory).as_posix()) for f in files], prefix)

    def _upload(self, items: list[tuple[Path, str]], prefix: str) -> list[str]:
        for path, _ in items:
            if not path.is_file():
                raise FileNotFoundError(f"cannot log figure {path}: no such file")
        if items:
            self._open(self._folder if self._opened else self.run_dir)
            self._log_images(items, prefix)
        return [f"{prefix}/{name}" for _, name in items]

    # -- what a backend implements
    def _identity(self) -> dict:
        return {}

    def _check(self, saved: dict) -> None:
        """Raise when the remembered run cannot be continued by this logger."""

    def _new_run(self) -> str | None:
        """Create the tracked run; its id (``None``: known once the run is opened)."""
        raise NotImplementedError

    def _last_logged(self, state: TrainingState) -> int:
        """The last epoch of the stage that the backend itself knows it holds (0: ask tracking.json)."""
        return 0

    def _start(self, state: TrainingState) -> None:
        raise NotImplementedError

    def _log_rows(self, stage: str, rows: list[dict]) -> None:
        raise NotImplementedError

    def _log_images(self, items: list[tuple[Path, str]], prefix: str) -> None:
        raise NotImplementedError


def _is_uri(text: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", text) is not None or text == "databricks"


class MLflowLogger(Tracker):
    """Log to MLflow: settings as params ``<stage>.<dotted key>``, metrics ``<stage>/<column>`` at step = epoch.

    Args:
        tracking_uri: any MLflow tracking URI (``"file:///abs/mlruns"``, ``"sqlite:///mlflow.db"``,
            ``"http://host:5000"``) or a folder path (a local file store, no server); ``None``: MLflow's
            default (``MLFLOW_TRACKING_URI`` or its local default).
        experiment: the experiment name (created when missing).
        run_name, tags: of the MLflow run (default name: the run folder's name).
        run_dir: the run folder when used outside ``fit`` (``fit`` uses its own ``run_dir``).

    Params cannot change in MLflow: a setting that differs on resume (e.g. ``epochs``) keeps its first
    value as param and gets its new value as a tag of the same name. Versions and runtime settings
    are tags. MLflow cannot delete points: a stage restarted with ``overwrite=True`` adds a second
    series for the same steps (use a new run folder instead).
    """

    backend = "mlflow"

    def __init__(
        self,
        tracking_uri: str | os.PathLike | None = None,
        experiment: str = "pyro-mmvae",
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        *,
        run_dir: str | os.PathLike | None = None,
    ):
        super().__init__(run_dir)
        self.mlflow = _require("mlflow", "MLflowLogger")
        if tracking_uri is not None and not (isinstance(tracking_uri, str) and _is_uri(tracking_uri)):
            tracking_uri = Path(tracking_uri).resolve().as_uri()
        if tracking_uri is not None and tracking_uri.startswith("file:"):
            # MLflow >= 3.7 refuses its file store unless opted in; asking for one here is that opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri = tracking_uri
        self.experiment, self.run_name, self.tags = experiment, run_name, dict(tags or {})
        self._client = None

    @property
    def client(self):
        """The ``MlflowClient`` (created on first use: a database store is set up then)."""
        if self._client is None:
            self.tracking_uri = self.tracking_uri or self.mlflow.get_tracking_uri()
            self._client = self.mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _identity(self) -> dict:
        return {"tracking_uri": self.client.tracking_uri, "experiment": self.experiment}

    def _check(self, saved: dict) -> None:
        where = f"{self._file()} names MLflow run {saved['run_id']} of {saved.get('tracking_uri')}"
        if saved.get("tracking_uri") != self.client.tracking_uri:
            raise ValueError(f"{where}, but this logger writes to {self.client.tracking_uri}; pass that tracking_uri")
        try:
            self.client.get_run(saved["run_id"])
        except self.mlflow.exceptions.MlflowException as err:
            raise ValueError(f"{where}, which it does not hold; delete the 'mlflow' entry of the file") from err

    def _new_run(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment)
        name = self.run_name or (self._folder.name if self._folder is not None else None)
        tags = {"pyro_mmvae.run_dir": str(self._folder)} if self._folder is not None else {}
        return self.client.create_run(exp_id, run_name=name, tags=tags | self.tags).info.run_id

    def _last_logged(self, state: TrainingState) -> int:
        if state.resumed_from is None:
            return 0
        # MLflow itself is the authority on what it holds (tracking.json may lag it by one epoch)
        history = self.client.get_metric_history(self.run_id, f"{state.stage}/train_loss")
        return max((m.step for m in history), default=0)

    def _start(self, state: TrainingState) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

        def key(k: str) -> str:  # MLflow keys: letters, digits, _ - . space / only
            return re.sub(r"[^\w\-. /]", "_", k)[:250]

        stage, record = state.stage, state.record
        self.client.update_run(self.run_id, status="RUNNING")
        existing = self.client.get_run(self.run_id).data.params
        params = {key(f"{stage}.{k}"): v[:MAX_PARAM_VAL_LENGTH] for k, v in flatten(record.get("settings", {}))}
        tags = {key(k): v for k, v in flatten({stage: {"runtime": record.get("runtime", {})}})}
        tags |= {key(k): v for k, v in flatten({"versions": record.get("versions", {})})}
        tags |= {k: v for k, v in params.items() if k in existing and existing[k] != v}
        self.client.log_batch(
            self.run_id,
            params=[Param(k, v) for k, v in params.items() if k not in existing],
            tags=[RunTag(k, v[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()],
        )

    def _log_rows(self, stage: str, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(f"{stage}/{c}", float(r[c]), now, int(r["epoch"]))
            for r in rows
            for c in METRIC_COLUMNS
            if r[c] is not None
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _log_images(self, items: list[tuple[Path, str]], prefix: str) -> None:
        for path, name in items:
            folder = "/".join([prefix, *name.split("/")[:-1]])
            self.client.log_artifact(self.run_id, str(path), folder)

    def on_fit_end(self, state: TrainingState) -> None:
        if self._opened:
            self.client.set_terminated(self.run_id, "FINISHED" if state.finished else "FAILED")


class WandbLogger(Tracker):
    """Log to Weights & Biases: config ``{<stage>: settings, "versions": ...}``, metrics ``<stage>/<column>``.

    Args:
        project, name, tags: of the W&B run (default name: the run folder's name).
        mode: ``"offline"`` (default: files only, no account or network; upload later with
            ``wandb sync <run_dir>/wandb/offline-run-*``), ``"online"`` or ``"disabled"``.
        dir: where W&B writes its ``wandb/`` folder (default: the run folder).
        run_dir: the run folder when used outside ``fit``.
        **init_kwargs: passed on to ``wandb.init`` (``entity=``, ``group=``, ``settings=``...).

    Each stage is plotted against its own ``<stage>/epoch`` (``define_metric``), so stages and
    resumes never fight over W&B's global step. Every ``fit`` opens the run (``resume="allow"``,
    the remembered id) and finishes it at its end; offline, each opening is its own folder.
    """

    backend = "wandb"

    def __init__(
        self,
        project: str = "pyro-mmvae",
        mode: str = "offline",
        dir: str | os.PathLike | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        *,
        run_dir: str | os.PathLike | None = None,
        **init_kwargs: Any,
    ):
        super().__init__(run_dir)
        self.wandb = _require("wandb", "WandbLogger")
        self.project, self.mode, self.dir, self.name = project, mode, dir, name
        self.tags, self.init_kwargs = list(tags or []), init_kwargs
        self.run = None

    def _identity(self) -> dict:
        return {"project": self.project}

    def _check(self, saved: dict) -> None:
        if saved.get("project") != self.project:
            raise ValueError(
                f"{self._file()} names W&B run {saved['run_id']} of project {saved.get('project')!r}, "
                f"not {self.project!r}; pass that project"
            )

    def _new_run(self) -> None:
        return None  # W&B picks the id at the first wandb.init (see _init)

    def _init(self) -> None:
        folder = Path(self.dir) if self.dir is not None else self._folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        kwargs = {
            # create_new: never return (and later finish) a run of the user's own code
            "reinit": "create_new",
            "settings": self.wandb.Settings(silent=True, console="off"),
            **self.init_kwargs,
        }
        self.run = self.wandb.init(
            project=self.project,
            mode=self.mode,
            dir=None if folder is None else str(folder),
            name=self.name or (self._folder.name if self._folder is not None else None),
            tags=self.tags or None,
            id=self.run_id,
            resume="allow",
            **kwargs,
        )
        if self.run_id is None:
            self.run_id = self.run.id
            self._save()

    def _finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

    def _start(self, state: TrainingState) -> None:
        self._init()
        stage = state.stage
        config = {stage: state.record.get("settings", {}), "versions": state.record.get("versions", {})}
        self.run.config.update(config, allow_val_change=True)  # a resume may change epochs
        self.run.define_metric(f"{stage}/epoch")
        self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/epoch")

    def _log_rows(self, stage: str, rows: list[dict]) -> None:
        for r in rows:
            self.run.log({f"{stage}/{c}": r[c] for c in LOG_COLUMNS if r[c] is not None})

    def _log_images(self, items: list[tuple[Path, str]], prefix: str) -> None:
        opened = self.run is None
        if opened:
            self._init()
        try:
            self.run.log({f"{prefix}/{name.rsplit('.', 1)[0]}": self.wandb.Image(str(p)) for p, name in items})
        finally:
            if opened:
                self._finish()

    def on_fit_end(self, state: TrainingState) -> None:
        self._finish(0 if state.finished else 1)


TRACKERS = {"mlflow": MLflowLogger, "wandb": WandbLogger}


def tracker(name: str, run_dir: str | os.PathLike | None = None, **kwargs: Any) -> Tracker:
    """The logger ``name`` (``"mlflow"`` or ``"wandb"``) for the run folder ``run_dir``, built with ``kwargs``."""
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; choose one of: {', '.join(TRACKERS)}")
    return TRACKERS[name](run_dir=run_dir, **kwargs)


def run_tracker(name: str | None, run_dir: str | os.PathLike, uri: str | None = None) -> Tracker | None:
    """The tracker of a ``pyro-mmvae train`` run (``--track NAME --track-uri URI``), or ``None``.

    MLflow logs to ``uri`` (default: the local file store ``<run_dir>/mlruns``); W&B writes its offline
    files under ``uri`` (default: ``run_dir``). Under data parallelism only rank 0 tracks.
    """
    from ..distributed import world

    if name is None or not world().is_main:
        return None
    if name == "mlflow":
        return tracker(name, run_dir, tracking_uri=uri if uri is not None else Path(run_dir) / "mlruns")
    return tracker(name, run_dir, dir=uri)
