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

Run ``pyro-mmvae train --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .errors import InputError
from .experiments.jnf_pipeline import DATASETS, MODELS, ToyTrainConfig, sample_toy, train_toy


def _train_parser(sub):
    D = ToyTrainConfig  # the defaults live in one place: the pipeline's config
    p = sub.add_parser(
        "train",
        help="train a multimodal VAE and write a run folder with checkpoints, metrics and figures",
        description="Train a multimodal VAE, evaluate it on the test split and draw figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default=D.dataset, help="built-in dataset (toy = circles/squares)")
    p.add_argument(
        "--model",
        choices=MODELS,
        default=D.model,
        help="joint = joint VAE with a JointGuide; jnf = then Gaussian and normalizing-flow unimodal experts "
        "q(z|x_j) (JNF stage 2); jnf-shared = also flow experts on projectors trained first (JNF-Shared)",
    )
    p.add_argument("--projector", choices=("dcca", "contrastive"), default=D.projector, help="jnf-shared objective")
    p.add_argument("--expert-epochs", type=int, default=D.expert_epochs, help="JNF stage-2 epochs (default: --epochs)")
    p.add_argument("--projector-epochs", type=int, default=D.projector_epochs, help="JNF-Shared projector epochs")
    p.add_argument("--epochs", type=int, default=D.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=D.batch_size, help="minibatch size")
    p.add_argument("--latent-dim", type=int, default=D.latent_dim, help="dimension D of the shared latent z")
    p.add_argument("--beta", type=float, default=D.beta, help="weight of the KL term (β-ELBO); must be > 0")
    p.add_argument(
        "--anneal-epochs", type=int, default=D.anneal_epochs, help="anneal β linearly from β/100 over this many epochs"
    )
    p.add_argument("--lr", type=float, default=D.lr, help="Adam learning rate")
    p.add_argument("--train-size", type=int, default=D.train_size, help="training pairs (the paper used 180k)")
    p.add_argument("--val-size", type=int, default=D.val_size, help="validation pairs (early stopping)")
    p.add_argument("--test-size", type=int, default=D.test_size, help="test pairs (metrics)")
    p.add_argument("--patience", type=int, default=D.patience, help="early-stopping patience in epochs (default: off)")
    p.add_argument("--out", type=Path, default=D.out, help="run folder (default: runs/<dataset>-<model>-seed<seed>)")
    p.add_argument("--device", default=D.device, help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--seed", type=int, default=D.seed, help="seed for data, initialisation and training")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_train)
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
    _sample_parser(sub)
    return parser


def cmd_train(args) -> int:
    options = {f.name: getattr(args, f.name) for f in fields(ToyTrainConfig)}
    try:
        out, metrics = train_toy(ToyTrainConfig(**options), command=args.command)
    except InputError as err:  # PipelineInputError included
        raise SystemExit(f"error: {err}") from None
    print(json.dumps({k: metrics[k] for k in ("test_elbo", "joint_coherence")}, indent=None))
    print(f"run folder: {out}")
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
