"""The ``pyro-mmvae`` command.

``pyro-mmvae train`` with no arguments trains a joint VAE with a 2-D latent space on the
circles/squares toy data and writes a run folder::

    runs/toy-joint-seed0/
        config.json          every option of this run
        joint/               the training stage: checkpoint.pt, best.pt, config.json, log.csv
        metrics.json         test ELBO, reconstruction quality, coherence
        latent_space.png  reconstructions.png  prior_samples.png

Run ``pyro-mmvae train --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DATASETS = ("toy",)
MODELS = ("joint",)


def _train_parser(sub):
    p = sub.add_parser(
        "train",
        help="train a multimodal VAE and write a run folder with checkpoints, metrics and figures",
        description="Train a multimodal VAE, evaluate it on the test split and draw figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default="toy", help="built-in dataset (toy = circles/squares)")
    p.add_argument("--model", choices=MODELS, default="joint", help="joint = joint VAE with a JointGuide")
    p.add_argument("--epochs", type=int, default=12, help="training epochs")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size")
    p.add_argument("--latent-dim", type=int, default=2, help="dimension D of the shared latent z")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term (β-ELBO); must be > 0")
    p.add_argument("--anneal-epochs", type=int, default=0, help="anneal β linearly from β/100 over this many epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--train-size", type=int, default=20_000, help="training pairs (the paper used 180k)")
    p.add_argument("--val-size", type=int, default=2_000, help="validation pairs (early stopping)")
    p.add_argument("--test-size", type=int, default=2_000, help="test pairs (metrics)")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (default: off)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<dataset>-<model>-seed<seed>)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and training")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_train)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-mmvae",
        description="Multimodal VAEs written as Pyro programs: train, evaluate, sample.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _train_parser(sub)
    return parser


def _write_json(path: Path, obj) -> None:
    from .utils import atomic_write_json

    atomic_write_json(path, obj)


def _run_dir(args) -> Path:
    out = args.out or Path("runs") / f"{args.dataset}-{args.model}-seed{args.seed}"
    config = out / "config.json"
    if config.exists() and not args.resume:
        raise SystemExit(
            f"error: {out} already holds a run; pass --resume to continue it or --out to start a new one "
            "(nothing was overwritten)"
        )
    return out


def cmd_train(args) -> int:
    import torch

    from .experiments import toy
    from .infer.fit import fit
    from .infer.schedules import LinearAnnealing
    from .utils import resolve_device, set_seed

    if args.epochs < 1 or args.batch_size < 1 or args.latent_dim < 1:
        raise SystemExit("error: --epochs, --batch-size and --latent-dim must be positive")
    if not args.beta > 0:
        raise SystemExit(f"error: --beta must be > 0, got {args.beta}")
    out = _run_dir(args)
    device = resolve_device(args.device)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    config["resolved_device"] = str(device)
    if not (out / "config.json").exists():
        _write_json(out / "config.json", config)
    set_seed(args.seed)
    start = time.time()
    train, val, test = toy.build_data(args.train_size, args.val_size, args.test_size, args.seed)
    model, guide = toy.build_joint_vae(args.latent_dim)
    beta = LinearAnnealing(args.beta / 100, args.beta, args.anneal_epochs) if args.anneal_epochs else args.beta
    result = fit(
        model,
        guide,
        train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        beta=beta,
        val_data=val,
        early_stopping_patience=args.patience,
        run_dir=out,
        stage="joint",
        resume=args.resume,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
    )
    metrics = toy.evaluate_joint(model, guide, test, out, device)
    metrics["train"] = {
        "epochs_run": len(result.history),
        "final_train_loss": result.history[-1]["train_loss"] if result.history else None,
        "best_val_loss": result.best_val_loss,
        "seconds": time.time() - start,
        "torch_threads": torch.get_num_threads(),
    }
    _write_json(out / "metrics.json", metrics)
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
