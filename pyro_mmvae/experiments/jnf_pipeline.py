"""The staged toy pipeline of "Bridging the inference gap in Multimodal Variational Autoencoders" (JNF)
on the circles/squares data, as run by ``pyro-mmvae train`` and ``pyro-mmvae sample``.

:func:`train_toy` writes a run folder::

    <out>/
        config.json          every option of this run
        joint/               the training stage: checkpoint.pt, best.pt, config.json, log.csv
        projectors/          model "jnf-shared": stage 0, the DCCA / contrastive projectors g_j
        experts_<variant>/   models "jnf" / "jnf-shared": stage 2, unimodal experts (gaussian, flow, shared)
        metrics.json         test ELBO, reconstruction quality, coherence
        latent_space.png  reconstructions.png  prior_samples.png

Every stage is a checkpointed ``fit`` stage, so ``resume=True`` continues an interrupted run and
loads finished stages without retraining them. Each stage is seeded with
:func:`~pyro_mmvae.utils.stage_seed` of the run seed and its name right before its modules are built,
and ``fit`` gets the same seed: a stage's parameters do not depend on whether earlier stages were
trained, resumed or skipped, so a run killed at any point (SIGKILL included) and resumed ends with
bit-identical parameters and metrics. Opening a run folder sweeps the temporary files a killed
process left (:func:`~pyro_mmvae.utils.sweep_temporary_files`). :func:`sample_toy` generates the unobserved
modalities of test points from a run folder (unimodal expert, joint encoder or the subset posterior).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from .. import plots
from ..data import iterate_batches
from ..distributed import on_main, world
from ..errors import InputError
from ..infer.conditional import ConditionalSamples, conditional_generate
from ..infer.jnf import JNFLoss
from ..train import LinearAnnealing, fit, load_stage, train_projectors
from ..train.tracking import run_tracker
from ..utils import (
    atomic_write,
    atomic_write_json,
    kill_point,
    read_json,
    resolve_device,
    set_seed,
    stage_seed,
    sweep_temporary_files,
)
from . import toy

DATASETS = ("toy",)
MODELS = ("joint", "jnf", "jnf-shared")


class PipelineInputError(InputError):
    """A setting or run folder the pipeline refuses (the command line reports it as ``error: ...``)."""


@dataclass(frozen=True)
class ToyTrainConfig:
    """Every option of a toy run (the field names are the ``pyro-mmvae train`` options; stored in config.json).

    ``model``: ``"joint"`` (joint VAE with a JointGuide), ``"jnf"`` (then Gaussian and flow unimodal
    experts q(z|x_j), JNF stage 2) or ``"jnf-shared"`` (also flow experts on projectors trained first).
    ``anneal_epochs > 0`` anneals β linearly from β/100; ``out=None`` means ``runs/<dataset>-<model>-seed<seed>``.
    """

    dataset: str = "toy"
    model: str = "joint"
    projector: str = "dcca"  # jnf-shared projector objective: "dcca" or "contrastive"
    expert_epochs: int | None = None  # JNF stage-2 epochs (None: epochs)
    projector_epochs: int = 5
    epochs: int = 12
    batch_size: int = 128
    latent_dim: int = 2
    beta: float = 1.0
    anneal_epochs: int = 0
    lr: float = 1e-3
    train_size: int = 20_000
    val_size: int = 2_000
    test_size: int = 2_000
    patience: int | None = None  # early-stopping patience in epochs (None: off)
    out: Path | None = None
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    no_progress: bool = False
    compile: bool = False  # every stage with fit(compile=True)
    track: str | None = None  # "mlflow" or "wandb": also log to that tracker (--track)
    track_uri: str | None = None

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.latent_dim < 1:
            raise PipelineInputError("--epochs, --batch-size and --latent-dim must be positive")
        if not self.beta > 0:
            raise PipelineInputError(f"--beta must be > 0, got {self.beta}")
        if self.dataset not in DATASETS or self.model not in MODELS:
            raise PipelineInputError(f"dataset must be one of {DATASETS} and model one of {MODELS}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path("runs") / f"{self.dataset}-{self.model}-seed{self.seed}"


class ToyTrainResult(NamedTuple):
    run_dir: Path
    metrics: dict


def toy_run_folder(config: ToyTrainConfig) -> Path:
    """The run folder of ``config``; refuses one that already holds a run unless ``config.resume``."""
    out = config.run_dir
    if (out / "config.json").exists() and not config.resume:
        raise PipelineInputError(
            f"{out} already holds a run; pass --resume to continue it or --out to start a new one "
            "(nothing was overwritten)"
        )
    return out


def _open_run_folder(config: ToyTrainConfig, command: str, device) -> Path:
    out = toy_run_folder(config)
    sweep_temporary_files(out, recursive=True)  # leftovers of a killed run (only the library's own naming)
    if not (out / "config.json").exists():
        record = {"command": command, **asdict(config)}
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in record.items()}
        atomic_write_json(out / "config.json", {**record, "resolved_device": str(device)})
    return out


def train_toy(config: ToyTrainConfig, command: str = "train") -> ToyTrainResult:
    """Train the joint VAE (and the JNF stages of ``config.model``), evaluate on the test split, draw figures.

    ``command`` is recorded as the first entry of ``config.json`` (the CLI sub-command).
    Returns the run folder and the metrics written to ``metrics.json``.
    """
    device = resolve_device(config.device)
    out = on_main(_open_run_folder, config, command, device)  # under torchrun: rank 0 checks and writes
    main = world().is_main
    log = run_tracker(config.track, out, config.track_uri)
    callbacks = [] if log is None else [log]
    set_seed(config.seed)
    start = time.time()
    progress = not config.no_progress
    train, val, test = toy.build_data(config.train_size, config.val_size, config.test_size, config.seed)
    seed = stage_seed(config.seed, "joint")
    set_seed(seed)  # the stage's initialisation depends on the run seed and its name only
    model, guide = toy.build_joint_vae(config.latent_dim)
    beta = config.beta
    if config.anneal_epochs:
        beta = LinearAnnealing(config.beta / 100, config.beta, config.anneal_epochs)
    result = fit(
        model,
        guide,
        train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        beta=beta,
        val_data=val,
        early_stopping_patience=config.patience,
        run_dir=out,
        stage="joint",
        resume=config.resume,
        seed=seed,
        device=device,
        progress=progress,
        callbacks=callbacks,
        compile=config.compile,
    )
    kill_point("stage_end", "joint")  # test hook (no-op unless PYRO_MMVAE_KILL_AT is set)
    set_seed(config.seed)  # the metrics draw samples: the same draws whether or not the run was resumed
    metrics = toy.evaluate_joint(model, guide, test, out, device) if main else {}
    if config.model in ("jnf", "jnf-shared"):
        cross = train_experts(config, model, guide, train, val, test, out, device, callbacks)
        if main:
            metrics["cross_coherence"] = cross
    metrics["train"] = {
        "epochs_run": len(result.history),
        "final_train_loss": result.history[-1]["train_loss"] if result.history else None,
        "best_val_loss": result.best_val_loss,
        "seconds": time.time() - start,
        "torch_threads": torch.get_num_threads(),
    }
    if main:  # under torchrun the other ranks only trained
        atomic_write_json(out / "metrics.json", metrics)
    if log is not None:
        log.log_figures(sorted(out.glob("*.png")))  # the run's figures (not those inside mlruns/)
    return ToyTrainResult(out, metrics)


def train_experts(
    config: ToyTrainConfig, model, joint_guide, train, val, test, out: Path, device, callbacks=()
) -> dict:
    """JNF stage 2 (and stage 0 of JNF-Shared): checkpointed fit stages ``projectors`` (jnf-shared only),
    then one ``experts_<variant>`` stage per expert variant. Returns the cross-coherence per variant."""
    variants = ["gaussian", "flow"] + (["shared"] if config.model == "jnf-shared" else [])
    progress = not config.no_progress
    projectors = None
    if "shared" in variants:
        # Stage 0 of JNF-Shared, the fit stage 'projectors' (checkpointed like every stage): resume
        # continues an interrupted stage and loads a finished one without retraining it. The
        # projectors end frozen; the 'experts_shared' stage stores them again inside its guide.
        seed = stage_seed(config.seed, "projectors")
        set_seed(seed)
        projectors = toy.build_projectors().to(device)
        train_projectors(
            projectors,
            train,
            objective=config.projector,
            epochs=config.projector_epochs,
            batch_size=256,
            seed=seed,
            progress=progress,
            run_dir=out,
            stage="projectors",
            resume=config.resume,
            device=device,
            callbacks=list(callbacks),
        )
        kill_point("stage_end", "projectors")
    experts = {}
    for variant in variants:
        stage = f"experts_{variant}"
        seed = stage_seed(config.seed, stage)
        set_seed(seed)  # not the RNG state left by the previous stage (which a skipped stage does not leave)
        guide = toy.build_experts(config.latent_dim, variant, projectors, seed=seed)
        fit(
            model,
            guide,
            train,
            objective=JNFLoss(joint_guide),
            epochs=config.expert_epochs or config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            val_data=val,
            params=guide.experts,
            train_mode_modules=[guide.experts],
            run_dir=out,
            stage=stage,
            resume=config.resume,
            seed=seed,
            device=device,
            progress=progress,
            callbacks=list(callbacks),
            compile=config.compile,
        )
        kill_point("stage_end", stage)
        experts[variant] = guide
    if not world().is_main:
        return {}
    return toy.evaluate_experts(model, joint_guide, experts, test, out, device, seed=config.seed)


class ToySamples(NamedTuple):
    samples: ConditionalSamples  # z (num_samples, count, D) and the generated modalities
    tensors_file: Path  # samples_<given>[-mcmc].pt
    figure_file: Path  # samples_<given>[-mcmc].png


def load_toy_run(run: str | Path, variant: str = "flow", device="auto"):
    """``(config, model, joint_guide, experts or None)`` of a run folder written by :func:`train_toy`.

    ``experts`` is the ``experts_<variant>`` stage when the run has it. Everything is on ``device``
    in eval mode.
    """
    run = Path(run)
    config_path = run / "config.json"
    if not config_path.exists():
        raise PipelineInputError(f"{run} is not a run folder (no config.json)")
    config = read_json(config_path, required=("latent_dim", "test_size", "seed"), what="run config")
    device = resolve_device(device)
    model, joint = toy.build_joint_vae(config["latent_dim"])
    load_stage(run, "joint", model, joint)
    experts = None
    stage = f"experts_{variant}"
    if (run / stage).exists():
        projectors = toy.build_projectors() if variant == "shared" else None
        experts = toy.build_experts(config["latent_dim"], variant, projectors)
        load_stage(run, stage, None, experts)
        experts.to(device).eval()
    model.to(device).eval()
    joint.to(device).eval()
    return config, model, joint, experts


def sample_toy(
    run: str | Path,
    given: list[str],
    variant: str = "flow",
    method: str = "auto",
    count: int = 8,
    num_samples: int = 6,
    warmup: int = 300,
    improper: str = "raise",
    out: str | Path | None = None,
    device="auto",
    seed: int = 0,
) -> ToySamples:
    """Conditional generation from a toy run: given the modalities ``given`` of the first ``count`` test
    points, draw ``num_samples`` z each (``method="auto"``: expert, joint encoder or subset posterior;
    ``"mcmc"``: the subset posterior by BatchedHMC with ``warmup`` steps) and decode the other modalities.

    Writes ``samples_<given>[-mcmc].pt`` (z and the generated tensors) and a ``.png`` grid under
    ``out`` (default ``<run>/samples``).
    """
    run = Path(run)
    device = resolve_device(device)
    set_seed(seed)
    config, model, joint, experts = load_toy_run(run, variant, device)
    test = toy.CirclesSquares("test", config["test_size"], config["seed"])
    batch = next(iterate_batches(test, count, shuffle=False)).to(device)
    try:
        res = conditional_generate(
            model,
            batch,
            given,
            joint_guide=joint,
            experts=experts,
            num_samples=num_samples,
            method=method,
            mcmc_warmup=warmup,
            seed=seed,
            improper=improper,
        )
    except InputError:
        raise  # already the library's input error: keep its type
    except (KeyError, ValueError) as err:
        raise PipelineInputError(str(err)) from err
    out = Path(out) if out is not None else run / "samples"
    tag = "+".join(given) + ("-mcmc" if res.method == "mcmc" else "")
    saved = {"z": res.z.cpu(), **{k: v.cpu() for k, v in res.generated.items()}, "given": given, "method": res.method}
    tensors = atomic_write(out / f"samples_{tag}.pt", lambda f: torch.save(saved, f))
    rows = {f"given {g}": batch.data[g] for g in given}
    for name, gen in res.generated.items():
        for s in range(min(num_samples, 3)):
            rows[f"{name} #{s + 1}"] = gen[s]
    figure = out / f"samples_{tag}.png"
    plots.image_grid(rows, figure, title=f"p(x | {', '.join(given)}) via {res.method}")
    return ToySamples(res, tensors, figure)
