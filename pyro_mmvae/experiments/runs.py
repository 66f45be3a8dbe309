"""Train any model of :mod:`~pyro_mmvae.experiments.recipes` on any dataset of
:mod:`~pyro_mmvae.experiments.datasets` into a run folder, and read the run back.

:func:`train_run` (``pyro-mmvae train --dataset D --model M ...``) writes::

    <out>/
        config.json      every option, the resolved preset and the modalities (what load_run rebuilds from)
        projectors/      jnf-shared: stage 0
        joint/ | vae/    the generative model with its joint encoder (JNF) or aggregation guide
        experts_flow/ | experts_shared/   jnf / jnf-shared: stage 2
        train.json       per-stage epochs, losses and seconds

Every stage is a checkpointed ``fit`` stage seeded with :func:`~pyro_mmvae.utils.stage_seed` of the run
seed and its name, so a killed run resumed with ``resume=True`` ends bit-identical to an uninterrupted
one. :func:`load_run` rebuilds the modules from ``config.json`` and loads their weights; evaluation
(:mod:`~pyro_mmvae.experiments.evaluate`) starts from it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from ..data.modality import Modality, reconstruction_weights
from ..distributed import on_main, world
from ..errors import InputError, RunFolderError
from ..infer.jnf import JNFLoss
from ..nn.architectures.polymnist import POLYMNIST_NETS
from ..train import LinearAnnealing, fit, load_stage, train_projectors
from ..train.tracking import run_tracker
from ..utils import (
    atomic_write_json,
    kill_point,
    read_json,
    resolve_device,
    set_seed,
    stage_seed,
    sweep_temporary_files,
)
from . import recipes
from .datasets import check_dataset, load_splits
from .presets import Preset, preset

RUN_KIND = "pyro-mmvae run"  # config.json's "kind": tells these run folders from the toy pipeline's


@dataclass(frozen=True)
class RunConfig:
    """Options of a run (the ``pyro-mmvae train`` options); ``None`` takes the preset's value.

    ``train_size``/``test_size`` ``None`` use every row of the split; ``val_size`` rows are held out at the
    end of the training split for early stopping. ``objective`` applies to aggregation models,
    ``projector`` to ``jnf-shared``. ``out=None`` means ``runs/<dataset>-<model>-seed<seed>``.
    """

    dataset: str = "toy"
    model: str = "jnf"
    data_root: str | None = None
    objective: str = "auto"
    projector: str = "contrastive"
    train_size: int | None = None
    val_size: int = 1_000
    test_size: int | None = None
    missing_rate: float = 0.0
    epochs: int | None = None
    expert_epochs: int | None = None
    projector_epochs: int = 10
    batch_size: int | None = None
    latent_dim: int | None = None
    beta: float | None = None
    lr: float | None = None
    anneal_epochs: int | None = None
    patience: int | None = None
    base_channels: int | None = None
    nets: str | None = None
    out: str | None = None
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    download: bool = False
    no_progress: bool = False
    compile: bool = False  # the main and expert stages with fit(compile=True)
    track: str | None = None
    track_uri: str | None = None

    def __post_init__(self):
        check_dataset(self.dataset)
        recipes.check_model(self.model)
        if self.objective not in recipes.OBJECTIVES:
            raise InputError(f"--objective must be one of {list(recipes.OBJECTIVES)}, got {self.objective!r}")
        if self.projector not in ("dcca", "contrastive"):
            raise InputError(f"--projector must be 'dcca' or 'contrastive', got {self.projector!r}")
        for name in ("train_size", "test_size", "epochs", "expert_epochs", "batch_size", "latent_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.val_size < 0 or self.projector_epochs < 1:
            raise InputError("--val-size must be >= 0 and --projector-epochs >= 1")
        if self.beta is not None and not self.beta > 0:
            raise InputError(f"--beta must be > 0, got {self.beta}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.base_channels is not None and (
            self.dataset not in ("polymnist", "translated-polymnist") or self.base_channels < 1
        ):
            raise InputError("--base-channels is a positive width of the PolyMNIST ResNets (polymnist datasets only)")
        if self.nets is not None and (self.dataset not in ("polymnist", "translated-polymnist")):
            raise InputError("--nets chooses the PolyMNIST networks (polymnist datasets only)")
        if self.nets is not None and self.nets not in POLYMNIST_NETS:
            raise InputError(f"--nets must be one of {list(POLYMNIST_NETS)}, got {self.nets!r}")
        if self.nets == "mopoe" and self.base_channels is not None:
            raise InputError("--base-channels sets the ResNets' width; MoPoE's nets (--nets mopoe) have a fixed one")
        if not 0.0 <= self.missing_rate < 1.0:
            raise InputError(f"--missing-rate must be in [0, 1), got {self.missing_rate}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path("runs") / f"{self.dataset}-{self.model}-seed{self.seed}"

    def settings(self) -> Preset:
        """The preset of (dataset, model) with this config's overrides applied."""
        base = preset(self.dataset, self.model)
        names = {f.name for f in dataclasses.fields(Preset)}
        given = {k: v for k, v in asdict(self).items() if k in names and v is not None}
        return replace(base, **given)


def run_modalities(dataset: str, settings: Preset) -> list[Modality]:
    """The dataset's modalities with the papers' likelihoods and the preset's reconstruction weights."""
    from ..nn import architectures

    mods = list(architectures.dataset_modalities(dataset))
    weights = settings.weights
    if weights == "paper":
        return mods
    if weights in ("largest", "none"):
        weights = reconstruction_weights(mods, weights)
    if not isinstance(weights, dict):
        raise InputError(f"weights must be 'paper', 'largest', 'none' or a dict, got {weights!r}")
    return [replace(m, weight=float(weights.get(m.name, 1.0))) for m in mods]


class RunModules(NamedTuple):
    """What a run trains: ``model``, ``guide`` (joint encoder or aggregation guide), JNF ``experts`` or None."""

    model: torch.nn.Module
    guide: torch.nn.Module
    experts: torch.nn.Module | None
    projectors: torch.nn.Module | None


def _main_stage(model_name: str) -> str:
    return "joint" if model_name in recipes.JNF_MODELS else "vae"


def _expert_stage(model_name: str) -> str | None:
    return {"jnf": "experts_flow", "jnf-shared": "experts_shared"}.get(model_name)


def _stage_settings(config: RunConfig, settings: Preset, out: Path, stage: str, device, log=None) -> dict:
    return dict(
        callbacks=[] if log is None else [log],
        batch_size=settings.batch_size,
        lr=settings.lr,
        early_stopping_patience=settings.patience,
        run_dir=out,
        stage=stage,
        resume=config.resume,
        seed=stage_seed(config.seed, stage),
        device=device,
        progress=not config.no_progress,
    )


def train_run(config: RunConfig, command: str = "train") -> Path:
    """Train ``config.model`` on ``config.dataset``; returns the run folder (see the module docstring)."""
    out = config.run_dir
    device = resolve_device(config.device)
    settings = config.settings()
    mods = run_modalities(config.dataset, settings)
    record = {
        "kind": RUN_KIND,
        "command": command,
        **asdict(config),
        "settings": settings.to_dict(),
        "modalities": [asdict(m) for m in mods],
        "resolved_device": str(device),
    }
    record = json.loads(json.dumps(record))  # the form config.json holds (tuples become lists)
    on_main(_open_run_folder, out, record, config.resume)  # under torchrun: rank 0 checks and writes
    start = time.time()
    splits = load_splits(
        config.dataset,
        config.data_root,
        train_size=config.train_size,
        val_size=config.val_size,
        test_size=config.test_size,
        missing_rate=config.missing_rate,
        seed=config.seed,
        download=config.download,
    )
    stages: dict[str, dict] = {}
    log = run_tracker(config.track, out, config.track_uri)
    projectors = None
    if config.model == "jnf-shared":
        set_seed(stage_seed(config.seed, "projectors"))
        projectors = recipes.build_projectors(config.dataset, mods, settings).to(device)
        s = _stage_settings(config, settings, out, "projectors", device, log)
        losses = train_projectors(
            projectors,
            splits.train,
            objective=config.projector,
            epochs=config.projector_epochs,
            batch_size=s["batch_size"],
            lr=s["lr"],
            seed=s["seed"],
            progress=s["progress"],
            run_dir=out,
            stage="projectors",
            resume=config.resume,
            device=device,
            callbacks=s["callbacks"],
        )
        stages["projectors"] = {"epochs_run": len(losses), "final_loss": losses[-1] if losses else None}
        kill_point("stage_end", "projectors")

    stage = _main_stage(config.model)
    set_seed(stage_seed(config.seed, stage))
    model, guide, objective = recipes.build_main_stage(config.model, config.dataset, mods, settings, config.objective)
    beta = settings.beta
    if settings.anneal_epochs:
        beta = LinearAnnealing(settings.beta / 100, settings.beta, settings.anneal_epochs)
    result = fit(
        model,
        guide,
        splits.train,
        objective,
        epochs=settings.epochs,
        beta=beta,
        val_data=splits.validation,
        compile=config.compile,
        **_stage_settings(config, settings, out, stage, device, log),
    )
    stages[stage] = _summary(result)
    kill_point("stage_end", stage)

    expert_stage = _expert_stage(config.model)
    if expert_stage is not None:
        seed = stage_seed(config.seed, expert_stage)
        set_seed(seed)
        experts = recipes.build_experts(config.dataset, mods, settings, projectors, seed=seed)
        result = fit(
            model,
            experts,
            splits.train,
            JNFLoss(guide),
            epochs=config.expert_epochs or settings.epochs,
            val_data=splits.validation,
            params=experts.experts,
            train_mode_modules=[experts.experts],
            compile=config.compile,
            **_stage_settings(config, settings, out, expert_stage, device, log),
        )
        stages[expert_stage] = _summary(result)
        kill_point("stage_end", expert_stage)
    if world().is_main:
        summary = {"stages": stages, "seconds": time.time() - start, "threads": torch.get_num_threads()}
        atomic_write_json(out / "train.json", summary | {"processes": world().size})
    return out


def _open_run_folder(out: Path, record: dict, resume: bool) -> None:
    """Refuse a folder holding another run (or, on resume, one with other settings); write ``config.json``."""
    if (out / "config.json").exists() and not resume:
        raise InputError(f"{out} already holds a run; pass --resume to continue it or --out to start a new one")
    sweep_temporary_files(out, recursive=True)
    if (out / "config.json").exists():
        _check_resumable(read_run_config(out), record, out)
    atomic_write_json(out / "config.json", record)


# Options a resumed run may change: budgets (fit checks each stage's own settings), where and how it runs.
RESUME_MAY_CHANGE = {
    "resume",
    "epochs",
    "expert_epochs",
    "no_progress",
    "compile",
    "device",
    "resolved_device",
    "download",
    "track",
    "track_uri",
}


def _check_resumable(saved: dict, record: dict, out: Path) -> None:
    changed = sorted(
        k
        for k in set(saved) | set(record)
        if k not in RESUME_MAY_CHANGE and k != "settings" and saved.get(k) != record.get(k)
    )
    settings = {k for k in set(saved["settings"]) | set(record["settings"]) if k != "epochs"}
    changed += sorted(f"settings.{k}" for k in settings if saved["settings"].get(k) != record["settings"].get(k))
    if changed:
        raise InputError(
            f"{out} holds a run with other settings ({', '.join(changed)}); resume it with its own options "
            "or start a new run with --out (nothing was changed)"
        )


def _summary(result) -> dict:
    last = result.history[-1] if result.history else {}
    return {
        "epochs_run": len(result.history),
        "final_train_loss": last.get("train_loss"),
        "best_val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
    }


def read_run_config(run: str | Path) -> dict:
    """``config.json`` of a run folder written by :func:`train_run` (``RunFolderError`` otherwise)."""
    run = Path(run)
    config = read_json(run / "config.json", required=("dataset", "model"), what="run config")
    if config.get("kind") != RUN_KIND:
        raise RunFolderError(f"{run}/config.json was not written by pyro-mmvae train for a dataset run")
    return config


def load_run(run: str | Path, device="auto") -> tuple[dict, RunModules]:
    """``(config, RunModules)`` of a finished run: modules rebuilt from ``config.json``, weights loaded, eval mode."""
    run = Path(run)
    config = read_run_config(run)
    settings = Preset(**{**config["settings"], "notes": tuple(config["settings"].get("notes", ()))})
    mods = [Modality(**{**m, "shape": tuple(m["shape"])}) for m in config["modalities"]]
    dataset, name = config["dataset"], config["model"]
    device = resolve_device(device)
    model, guide, _ = recipes.build_main_stage(name, dataset, mods, settings, config.get("objective", "auto"))
    load_stage(run, _main_stage(name), model, guide)
    projectors = experts = None
    if name == "jnf-shared":
        projectors = recipes.build_projectors(dataset, mods, settings)
    stage = _expert_stage(name)
    if stage is not None:
        experts = recipes.build_experts(dataset, mods, settings, projectors)
        load_stage(run, stage, None, experts)
        experts.to(device).eval()
    model.to(device).eval()
    guide.to(device).eval()
    return config, RunModules(model, guide, experts, projectors)
