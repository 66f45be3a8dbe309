"""Evaluate a trained run: coherence for every subset, joint coherence, FID, likelihoods and figures.

:func:`evaluate_run` (``pyro-mmvae evaluate --run RUN``) writes ``RUN/evaluation.json``::

    {"coherence": {"per_subset": ..., "per_size": ..., "mean": ...},   conditional coherence S → m
     "joint_coherence": ...,                                            from prior samples
     "fid": {"prior": {m: ...}, "conditional": {m: ...}},               only with a feature extractor
     "mfd": {"prior": {...}, "conditional": {...}},                     only with per-modality feature nets
     "log_likelihood": {"joint": ...},                                  IS estimate, nats per test point
     "settings": ..., "seconds": ...}

and the figures ``conditional_<m>.png`` (one per image modality; first row: the test images, then one row per
conditioning subset S ∌ m, one generated sample per column) and ``prior_samples.png``. Coherence is plain
accuracy of the pretrained classifier of the generated modality against the true label.

Every model answers "z given S" through its own inference path
(:func:`~pyro_mmvae.experiments.recipes.latent_sampler`): JNF's unimodal experts, joint encoder or subset
posterior sampled by BatchedHMC; an aggregation guide's own posterior of the subset.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import plots
from ..data import iterate_batches
from ..distributed import world
from ..errors import InputError, check_int
from ..infer.conditional import conditional_decoder
from ..metrics.coherence import enumerate_subsets, joint_coherence, subset_coherence
from ..utils import atomic_write_json, read_json, resolve_device, set_seed
from . import recipes
from .datasets import RowRange, dataset_class, default_classifiers
from .runs import RUN_KIND, load_run

FIGURE_COLUMNS = 8


def _is_image(modality) -> bool:
    return len(modality.shape) == 3 and modality.shape[0] in (1, 3) and modality.likelihood != "categorical"


def _load_any_run(run: Path, device):
    """``(config, model_name, dataset, model, guide, experts, modalities)`` of a dataset run or a toy-pipeline run."""
    config = read_json(run / "config.json", required=("dataset", "model"), what="run config")
    if config.get("kind") == RUN_KIND:
        config, modules = load_run(run, device)
        mods = list(modules.model.modalities.values())
        return config, config["model"], config["dataset"], modules.model, modules.guide, modules.experts, mods
    from .jnf_pipeline import load_toy_run

    variant = "shared" if config["model"] == "jnf-shared" else "flow"
    config, model, joint, experts = load_toy_run(run, variant, device)
    return config, config["model"], "toy", model, joint, experts, list(model.modalities.values())


def _test_rows(config: dict, dataset: str, num_points: int, data_root):
    if dataset == "toy":
        from ..data.toy import CirclesSquares

        test = CirclesSquares("test", config.get("test_size") or 2_000, config.get("seed", 0))
        label = "full"
    else:
        root = data_root or config.get("data_root")
        if root is None:
            raise InputError(f"evaluating a {dataset!r} run needs --data-root (the run does not record one)")
        test, label = dataset_class(dataset)(root, split="test", size=num_points), "digit"
    return RowRange(test, 0, min(num_points, len(test))), label


@torch.no_grad()
def evaluate_run(
    run: str | Path,
    *,
    classifiers=None,
    classifiers_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    num_points: int = 1_000,
    batch_size: int = 250,
    mcmc_warmup: int = 200,
    num_prior: int = 1_000,
    feature_extractor=None,
    mfd_feature_nets=None,
    llh_particles: int = 0,
    subset_sizes=None,
    seed: int = 0,
    device="auto",
    progress: bool = True,
) -> dict:
    """Evaluate the run folder ``run``; returns what it writes to ``run/evaluation.json`` (module docstring).

    Args:
        classifiers: name → classifier (``x (N, *shape) -> labels (N,)``); default: the dataset's
            (:func:`~pyro_mmvae.experiments.datasets.default_classifiers` of ``classifiers_dir``).
        data_root: the dataset folder (default: the run's ``data_root``).
        num_points: test points used (the first ones of the test split).
        mcmc_warmup: BatchedHMC warm-up steps of JNF's subset posteriors.
        num_prior: prior samples for joint coherence and the prior FID.
        feature_extractor: a :class:`~pyro_mmvae.metrics.fid.FeatureExtractor` for FID (e.g.
            ``InceptionFeatures``); ``None`` skips FID.
        mfd_feature_nets: ``{modality: network}`` for the mean Fréchet distance over every modality (MHD's
            MFD): callables ``(n, *shape) -> (n, F)`` or classifiers (their penultimate ``features``), e.g.
            those ``pyro-mmvae train-classifier`` saves; ``None`` skips MFD.
        llh_particles: importance samples per point for the joint log-likelihood (0 skips it).
        subset_sizes: evaluate only the conditioning subsets of these sizes (default: every non-empty
            proper subset; JNF's subsets of 2 or more modalities each cost a BatchedHMC run).

    Under ``torchrun`` (``torchrun --nproc_per_node N -m pyro_mmvae.cli evaluate --run RUN ...``) the
    (subset, batch) units of the coherence are split over the processes, each seeded from ``seed``, the
    subset and the batch, so the numbers equal those of one process; rank 0 then computes the rest and
    writes the files (the other ranks return the coherence alone).
    """
    run = Path(run)
    num_points = check_int(num_points, "num_points", minimum=1)
    check_int(llh_particles, "llh_particles", minimum=0)
    device = resolve_device(device)
    start = time.time()
    config, name, dataset, model, guide, experts, mods = _load_any_run(run, device)
    test, label = _test_rows(config, dataset, num_points, data_root)
    if classifiers is None:
        classifiers = default_classifiers(dataset, classifiers_dir, device=device)
    set_seed(seed)
    objective = config.get("objective", "auto")
    latents = recipes.latent_sampler(
        name, model, guide, experts, objective=objective, mcmc_warmup=mcmc_warmup, seed=seed
    )
    if name == "joint":  # a joint encoder alone: the subsets go through q(z | x_S) with the rest zeroed
        from ..infer.conditional import GuideLatents

        latents = GuideLatents(guide)
    generate = conditional_decoder(model, latents)
    batches = [b.to(device) for b in iterate_batches(test, batch_size, shuffle=False)]
    subsets = enumerate_subsets([m.name for m in mods])
    if subset_sizes is not None:
        sizes = {check_int(k, "subset size", minimum=1) for k in subset_sizes}
        subsets = [sub for sub in subsets if len(sub) in sizes]
        if not subsets:
            raise InputError(f"no conditioning subset has a size in {sorted(sizes)} for {len(mods)} modalities")
    report = subset_coherence(
        generate, classifiers, batches, label=label, subsets=subsets, progress=progress, seed=seed
    )
    if not world().is_main:  # under torchrun the others shared the coherence work; rank 0 does the rest
        return {"coherence": report.to_dict()}
    z_prior = model.sample_prior(num_prior).to(device)
    prior_gen = model.reconstruct(z_prior)
    result = {
        "run": str(run),
        "model": name,
        "dataset": dataset,
        "num_points": len(test),
        "coherence": report.to_dict(),
        "coherence_metric": "plain accuracy of the generated modality's classifier against the true label",
        "joint_coherence": joint_coherence(classifiers, prior_gen),
    }
    samples = _Samples(mods, batches, prior_gen, generate)
    if feature_extractor is not None:
        result["fid"] = _fid(feature_extractor, mods, samples)
    if mfd_feature_nets is not None:
        result["mfd"] = _mfd(mfd_feature_nets, mods, samples)
    if llh_particles:
        from ..metrics.likelihood import dataset_log_likelihood

        llh = dataset_log_likelihood(model, guide, test, batch_size=batch_size, num_particles=llh_particles)
        result["log_likelihood"] = {"joint": llh.mean().item(), "particles": llh_particles}
    _figures(run, model, mods, batches[0], generate, prior_gen, subsets)
    result["settings"] = {
        "mcmc_warmup": mcmc_warmup,
        "subset_sizes": None if subset_sizes is None else sorted(set(subset_sizes)),
        "num_prior": num_prior,
        "seed": seed,
        "batch_size": batch_size,
        "device": str(device),
    }
    result["seconds"] = time.time() - start
    atomic_write_json(run / "evaluation.json", result)
    return result


class _Samples:
    """Per modality: the present test rows, as many prior samples, and generations given every other modality.

    Computed once per modality and shared by FID and MFD: for JNF, generating m from the other modalities is a
    BatchedHMC run of the subset posterior, too costly to repeat.
    """

    def __init__(self, mods, batches, prior_gen, generate):
        self.names = [m.name for m in mods]
        self.batches, self.prior_gen, self.generate = batches, prior_gen, generate
        self._cache: dict = {}

    def __call__(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if name not in self._cache:
            real = torch.cat([b.data[name][b.present[name]] for b in self.batches])
            others = [n for n in self.names if n != name]
            cond = torch.cat([self.generate(b, others, [name])[name] for b in self.batches])
            self._cache[name] = (real, self.prior_gen[name][: len(real)], cond)
        return self._cache[name]


def _fid(extractor, mods, samples: _Samples) -> dict:
    """FID per image modality: prior samples vs test images, and generations given every other modality."""
    from ..metrics.fid import fid

    out: dict = {"prior": {}, "conditional": {}}
    for m in mods:
        if _is_image(m):
            real, prior, cond = samples(m.name)
            out["prior"][m.name] = fid(real, prior, extractor)
            out["conditional"][m.name] = fid(real, cond, extractor)
    return out


def _mfd(feature_nets, mods, samples: _Samples) -> dict:
    """MFD: prior samples vs the test rows, and each modality generated from all the others."""
    from ..metrics.fid import mfd

    names = [m.name for m in mods if m.name in feature_nets]
    real, prior, cond = ({n: samples(n)[i] for n in names} for i in range(3))
    nets = {n: feature_nets[n] for n in names}
    return {"prior": mfd(real, prior, nets), "conditional": mfd(real, cond, nets)}


def _figures(run: Path, model, mods, batch, generate, prior_gen, subsets) -> None:
    """One grid per image modality m over the evaluated subsets S ∌ m (at most 15 rows), and the prior samples."""
    batch = batch[: min(FIGURE_COLUMNS, batch.batch_size)]
    for m in mods:
        if not _is_image(m):
            continue
        rows = {f"true {m.name}": batch.data[m.name]}
        for subset in (s for s in subsets if m.name not in s):
            if len(rows) >= 16:  # the grid stays readable; every subset is in evaluation.json
                break
            rows["+".join(subset)] = generate(batch, list(subset), [m.name])[m.name]
        plots.image_grid(
            rows, run / f"conditional_{m.name}.png", title=f"p({m.name} | x_S): rows S, columns test points"
        )
    images = {m.name: prior_gen[m.name][:FIGURE_COLUMNS] for m in mods if _is_image(m)}
    if images:
        plots.image_grid(images, run / "prior_samples.png", title="decoded prior samples z ~ p(z)")
