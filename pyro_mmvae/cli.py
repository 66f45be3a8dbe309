"""The ``pyro-mmvae`` command.

``pyro-mmvae train`` with no arguments trains a joint VAE with a 2-D latent space on the
circles/squares toy data and writes a run folder::

    runs/toy-joint-seed0/
        config.json          every option of this run
        joint/               the training stage: checkpoint.pt, best.pt, config.json, log.csv
        projectors/          --model jnf-shared: stage 0, the DCCA / contrastive projectors g_j
        experts_<variant>/   --model jnf / jnf-shared: stage 2, unimodal experts (gaussian, flow, shared)
        metrics.json         test ELBO, reconstruction quality, coherence
        latent_space.png  reconstructions.png  prior_samples.png

The other commands::

    pyro-mmvae train --dataset polymnist --data-root DIR --model jnf --train-size 10000 --epochs 5 --out RUN
    pyro-mmvae evaluate --run RUN --classifiers DIR      # RUN/evaluation.json, conditional_<m>.png
    pyro-mmvae sample --run RUN --given square           # toy runs: conditional generation
    pyro-mmvae data build polymnist --root DIR --mnist DIR --backgrounds DIR
    pyro-mmvae train-classifier --dataset translated-polymnist --data-root DIR --out DIR

Run ``pyro-mmvae COMMAND --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .errors import InputError
from .experiments.datasets import DATASETS
from .experiments.jnf_pipeline import MODELS as TOY_MODELS
from .experiments.jnf_pipeline import ToyTrainConfig, sample_toy, train_toy
from .experiments.recipes import MODELS, OBJECTIVES
from .experiments.runs import RunConfig, train_run
from .utils import resolve_device


def _train_parser(sub):
    D = ToyTrainConfig  # the toy's defaults live in one place: its pipeline's config
    p = sub.add_parser(
        "train",
        help="train a multimodal VAE and write a run folder with checkpoints, metrics and figures",
        description="Train a multimodal VAE on a dataset and write a run folder. Options left out take the "
        "paper's preset for the dataset and model (see pyro_mmvae.experiments.presets); on the toy data "
        "the joint/jnf/jnf-shared models also evaluate and draw figures.",
    )
    p.add_argument("--dataset", choices=DATASETS, default="toy", help="toy = circles/squares (default: toy)")
    p.add_argument(
        "--model",
        choices=MODELS,
        default="joint",
        help="joint = joint VAE with a joint encoder; jnf = then normalizing-flow unimodal experts q(z|x_j) "
        "(JNF); jnf-shared = flow experts on DCCA/contrastive projectors (JNF-Shared); poe, moe, mopoe, "
        "sumpooling, selfattention(-mixture) = a VAE with that aggregation guide; jmvae, mvae, mmvae, mopoe, "
        "mvtcae, mmvaeplus, mmjsd = the baselines with their own objectives (default: joint)",
    )
    p.add_argument("--data-root", default=None, help="folder of the dataset's files (benchmark datasets)")
    p.add_argument("--download", action="store_true", help="download the dataset's published files when missing")
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="auto",
        help="auto = the model's own objective (the masked bound for aggregation models); masked / mixture = "
        "the permutation-invariant paper's bounds (aggregation models and mopoe)",
    )
    p.add_argument("--projector", choices=("dcca", "contrastive"), default=None, help="jnf-shared projectors")
    p.add_argument("--expert-epochs", type=int, default=None, help="JNF stage-2 epochs (default: --epochs)")
    p.add_argument("--projector-epochs", type=int, default=None, help="JNF-Shared projector epochs")
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (toy: {D.epochs})")
    p.add_argument("--batch-size", type=int, default=None, help=f"minibatch size (toy: {D.batch_size})")
    p.add_argument("--latent-dim", type=int, default=None, help=f"dimension D of the latent z (toy: {D.latent_dim})")
    p.add_argument("--beta", type=float, default=None, help=f"weight of the KL term, > 0 (toy: {D.beta})")
    p.add_argument("--anneal-epochs", type=int, default=None, help="anneal β linearly from β/100 over this many epochs")
    p.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (toy: {D.lr})")
    p.add_argument("--train-size", type=int, default=None, help=f"training rows (default: all; toy: {D.train_size})")
    p.add_argument("--val-size", type=int, default=None, help=f"validation rows (early stopping; toy: {D.val_size})")
    p.add_argument("--test-size", type=int, default=None, help=f"test rows (default: all; toy: {D.test_size})")
    p.add_argument("--missing-rate", type=float, default=0.0, help="mark this fraction of each modality missing")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs")
    p.add_argument(
        "--base-channels", type=int, default=None, help="width of the PolyMNIST ResNets (published: 64; CPU runs: 16)"
    )
    p.add_argument(
        "--nets",
        choices=("resnet", "mopoe"),
        default=None,
        help="PolyMNIST networks: resnet = MMVAE+'s (the JNF paper's, default); mopoe = MoPoE's smaller conv nets",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<dataset>-<model>-seed<seed>)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and training")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    compile_help = (
        "train with fit(compile=True): each step one compiled graph (same draws; faster for small models, after "
        "seconds to a minute of compiling)"
    )
    p.add_argument("--compile", action="store_true", help=compile_help)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--track",
        choices=("mlflow", "wandb"),
        default=None,
        help="also log settings, per-epoch metrics and figures to MLflow or Weights & Biases (offline)",
    )
    p.add_argument(
        "--track-uri",
        default=None,
        help="MLflow tracking URI or folder (default: <out>/mlruns); W&B: the folder of its files (default: <out>)",
    )
    p.set_defaults(func=cmd_train)
    return p


def _evaluate_parser(sub):
    p = sub.add_parser(
        "evaluate",
        help="coherence for every subset, joint coherence, FID and figures of a trained run",
        description="Evaluate a run folder and write RUN/evaluation.json and figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--run",
        "--run-dir",  # under torchrun, whose own --run-path swallows an abbreviated --run
        dest="run",
        type=Path,
        required=True,
        help="run folder written by 'pyro-mmvae train' (under torchrun write --run-dir)",
    )
    p.add_argument("--classifiers", type=Path, default=None, help="folder of the dataset's pretrained classifiers")
    p.add_argument("--data-root", default=None, help="the dataset's folder (default: the run's)")
    p.add_argument("--num-points", type=int, default=1000, help="test points evaluated")
    p.add_argument("--batch-size", type=int, default=250, help="test points per batch")
    p.add_argument("--warmup", type=int, default=200, help="BatchedHMC warm-up steps (JNF subset posteriors)")
    p.add_argument("--num-prior", type=int, default=1000, help="prior samples (joint coherence, prior FID)")
    p.add_argument("--inception-weights", default=None, help="Inception-v3 weights file (or 'download') for FID")
    p.add_argument(
        "--mfd-classifiers",
        type=Path,
        default=None,
        help="folder of <modality>.pt classifiers (pyro-mmvae train-classifier) whose features give the MFD",
    )
    p.add_argument("--llh-particles", type=int, default=0, help="importance samples for log p(X) (0: skip)")
    p.add_argument(
        "--subset-sizes", default=None, help="comma-separated sizes of the conditioning subsets (default: all)"
    )
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    p.add_argument("--seed", type=int, default=0, help="seed of the generations")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--track",
        choices=("mlflow", "wandb"),
        default=None,
        help="also upload the figures to the run's tracked run (the one 'train --track' started)",
    )
    p.add_argument("--track-uri", default=None, help="as for train (default: <run>/mlruns for MLflow)")
    p.set_defaults(func=cmd_evaluate)
    return p


def _data_parser(sub):
    p = sub.add_parser("data", help="build or download datasets", description="Build or download datasets.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    b = dsub.add_parser(
        "build",
        help="build PolyMNIST or Translated PolyMNIST offline from MNIST and the background images",
        description="Build PolyMNIST (or Translated PolyMNIST) from the MNIST IDX files and the five background "
        "images, following the published generator; --download fetches the published PolyMNIST archive instead.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("dataset", choices=("polymnist", "translated-polymnist"))
    b.add_argument("--root", type=Path, required=True, help="output folder")
    b.add_argument("--mnist", type=Path, default=None, help="folder of the four MNIST IDX files (.gz or not)")
    b.add_argument("--backgrounds", type=Path, default=None, help="folder of the background images 1.jpg..5.jpg")
    b.add_argument("--download", action="store_true", help="download the published PolyMNIST archive instead")
    b.add_argument("--seed", type=int, default=0, help="generator seed")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    b.set_defaults(func=cmd_data_build)
    return p


def _train_classifier_parser(sub):
    p = sub.add_parser(
        "train-classifier",
        help="train digit classifiers for a dataset without published ones (coherence, MFD features)",
        description="Train one classifier of the shared label per modality and save them as <out>/<modality>.pt.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--data-root", default=None, help="the dataset's folder")
    p.add_argument("--out", type=Path, required=True, help="folder for <modality>.pt")
    p.add_argument("--modalities", default=None, help="comma-separated modalities (default: all)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-size", type=int, default=None, help="training rows (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_train_classifier)
    return p


def _sample_parser(sub):
    p = sub.add_parser(
        "sample",
        help="conditional generation from a trained run: given some modalities, generate the others",
        description="Draw z given the observed modalities of test data points (unimodal expert, joint "
        "encoder, or the subset posterior sampled by BatchedHMC) and decode the other modalities.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="run folder written by 'pyro-mmvae train'")
    p.add_argument("--given", required=True, help="comma-separated observed modalities, e.g. 'square'")
    p.add_argument("--variant", default="flow", help="expert variant of a JNF run: gaussian, flow or shared")
    p.add_argument("--method", choices=("auto", "mcmc"), default="auto", help="mcmc forces the subset posterior")
    p.add_argument("--count", type=int, default=8, help="test data points to condition on")
    p.add_argument("--num-samples", type=int, default=6, help="samples per data point")
    p.add_argument("--warmup", type=int, default=300, help="MCMC warmup steps (subset posteriors)")
    p.add_argument(
        "--improper",
        choices=("raise", "warn"),
        default="raise",
        help="data points whose subset posterior is improper: stop with an error (default) or warn and sample the rest",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/samples)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.set_defaults(func=cmd_sample)
    return p


def cmd_sample(args) -> int:
    given = [g.strip() for g in args.given.split(",") if g.strip()]
    try:
        result = sample_toy(
            args.run,
            given,
            variant=args.variant,
            method=args.method,
            count=args.count,
            num_samples=args.num_samples,
            warmup=args.warmup,
            improper=args.improper,
            out=args.out,
            device=args.device,
            seed=args.seed,
        )
    except InputError as err:  # PipelineInputError included
        raise SystemExit(f"error: {err}") from None
    print(f"method: {result.samples.method}; wrote {result.tensors_file} and .png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-mmvae",
        description="Multimodal VAEs written as Pyro programs: train, evaluate, sample.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _train_parser(sub)
    _evaluate_parser(sub)
    _sample_parser(sub)
    _data_parser(sub)
    _train_classifier_parser(sub)
    return parser


def _fail(err: Exception):
    raise SystemExit(f"error: {err}") from None


def _in_process_group(command, args) -> int:
    """``command(args, quiet)`` in the process group torchrun describes (a no-op without torchrun).

    Only rank 0 prints; a failed peer ends every rank with ``error: ...``.
    """
    from .distributed import DistributedError, init_from_env, shutdown

    w = init_from_env(args.device)
    try:
        return command(args, quiet=not w.is_main)
    except DistributedError as err:
        _fail(err)
    finally:
        shutdown()


def cmd_train(args) -> int:
    return _in_process_group(_train, args)  # under torchrun: data-parallel training


def _train(args, quiet: bool) -> int:
    if args.dataset == "toy" and args.model in TOY_MODELS:
        return _train_toy(args, quiet)
    options = {f.name: getattr(args, f.name) for f in fields(RunConfig) if hasattr(args, f.name)}
    options = {k: v for k, v in options.items() if v is not None}
    if options.get("out") is not None:
        options["out"] = str(options["out"])
    try:
        out = train_run(RunConfig(**options), command=args.command)
    except InputError as err:
        _fail(err)
    if quiet:
        return 0
    print(f"run folder: {out}")
    print(f"next: pyro-mmvae evaluate --run {out}" + ("" if args.dataset == "toy" else " --classifiers DIR"))
    return 0


def _train_toy(args, quiet: bool) -> int:
    if args.missing_rate:  # the toy pipeline's figures and coherence assume complete pairs
        _fail(InputError(f"--missing-rate {args.missing_rate}: the toy JNF pipeline (--model {args.model}) trains on "
                         "complete pairs; use an aggregation model or a baseline (e.g. --model sumpooling) for the toy "
                         "data with missing rows"))  # fmt: skip
    defaults = ToyTrainConfig()
    options = {f.name: getattr(args, f.name, None) for f in fields(ToyTrainConfig)}
    options = {k: (getattr(defaults, k) if v is None else v) for k, v in options.items()}
    try:
        out, metrics = train_toy(ToyTrainConfig(**options), command=args.command)
    except InputError as err:  # PipelineInputError included
        _fail(err)
    if quiet:
        return 0
    print(json.dumps({k: metrics[k] for k in ("test_elbo", "joint_coherence")}, indent=None))
    print(f"run folder: {out}")
    return 0


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        _fail(InputError(f"{option} takes comma-separated integers, got {text!r}"))


def cmd_evaluate(args) -> int:
    return _in_process_group(_evaluate, args)  # under torchrun: the coherence work is shared


def _evaluate(args, quiet: bool) -> int:
    from .experiments.evaluate import evaluate_run

    extractor = None
    try:
        if args.inception_weights is not None:
            from .metrics.fid import InceptionFeatures

            extractor = InceptionFeatures(weights=args.inception_weights, device=resolve_device(args.device))
        feature_nets = None
        if args.mfd_classifiers is not None:
            from .metrics.classifiers import load_classifier

            paths = sorted(Path(args.mfd_classifiers).glob("*.pt"))
            if not paths:
                raise InputError(f"{args.mfd_classifiers} holds no <modality>.pt classifiers for --mfd-classifiers")
            feature_nets = {p.stem: load_classifier(p, device=resolve_device(args.device)) for p in paths}
        result = evaluate_run(
            args.run,
            classifiers_dir=args.classifiers,
            data_root=args.data_root,
            num_points=args.num_points,
            batch_size=args.batch_size,
            mcmc_warmup=args.warmup,
            num_prior=args.num_prior,
            feature_extractor=extractor,
            mfd_feature_nets=feature_nets,
            llh_particles=args.llh_particles,
            subset_sizes=_int_list(args.subset_sizes, "--subset-sizes"),
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
        )
    except InputError as err:
        _fail(err)
    if quiet:
        return 0
    if args.track is not None:
        from .train.tracking import run_tracker

        run_tracker(args.track, args.run, args.track_uri).log_figures(sorted(Path(args.run).glob("*.png")))
    summary = {"per_size": result["coherence"]["per_size"], "joint_coherence": result["joint_coherence"]}
    print(json.dumps(summary))
    print(f"wrote {Path(args.run) / 'evaluation.json'}")
    return 0


def cmd_data_build(args) -> int:
    from .data.polymnist import PolyMNIST, build_polymnist

    translated = args.dataset == "translated-polymnist"
    try:
        if args.download:
            if translated:
                raise InputError(
                    "Translated PolyMNIST has no published archive: build it with --mnist and --backgrounds"
                )
            PolyMNIST(args.root, split="test", download=True)
            PolyMNIST(args.root, split="train", download=True)
            out = args.root
        else:
            if args.mnist is None or args.backgrounds is None:
                raise InputError("building needs --mnist DIR and --backgrounds DIR (or --download)")
            out = build_polymnist(
                args.root,
                args.mnist,
                args.backgrounds,
                translated=translated,
                seed=args.seed,
                progress=not args.no_progress,
            )
    except InputError as err:
        _fail(err)
    print(f"built {args.dataset} in {out}")
    return 0


def cmd_train_classifier(args) -> int:
    from .experiments.datasets import dataset_class, load_splits
    from .metrics.classifiers import save_classifier, train_classifier

    try:
        names = [m.name for m in dataset_class(args.dataset).modalities]
        wanted = names if args.modalities is None else [n.strip() for n in args.modalities.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise InputError(f"unknown modalities {unknown} for dataset {args.dataset!r}; it has {names}")
        splits = load_splits(args.dataset, args.data_root, train_size=args.train_size, val_size=0, seed=args.seed)
        for name in wanted:
            clf = train_classifier(
                splits.train,
                name,
                label=splits.label,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                progress=not args.no_progress,
                device=resolve_device(args.device),
            )
            path = save_classifier(clf, Path(args.out) / f"{name}.pt")
            print(f"{name}: saved {path}")
    except InputError as err:
        _fail(err)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
