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
import time
from pathlib import Path

DATASETS = ("toy",)
MODELS = ("joint", "jnf", "jnf-shared")


def _train_parser(sub):
    p = sub.add_parser(
        "train",
        help="train a multimodal VAE and write a run folder with checkpoints, metrics and figures",
        description="Train a multimodal VAE, evaluate it on the test split and draw figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default="toy", help="built-in dataset (toy = circles/squares)")
    p.add_argument(
        "--model",
        choices=MODELS,
        default="joint",
        help="joint = joint VAE with a JointGuide; jnf = then Gaussian and normalizing-flow unimodal experts "
        "q(z|x_j) (JNF stage 2); jnf-shared = also flow experts on projectors trained first (JNF-Shared)",
    )
    p.add_argument("--projector", choices=("dcca", "contrastive"), default="dcca", help="jnf-shared objective")
    p.add_argument("--expert-epochs", type=int, default=None, help="JNF stage-2 epochs (default: --epochs)")
    p.add_argument("--projector-epochs", type=int, default=5, help="JNF-Shared projector epochs")
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
    import torch

    from . import plots
    from .data import iterate_batches
    from .experiments import toy
    from .infer.conditional import conditional_generate
    from .infer.fit import load_stage
    from .utils import resolve_device, set_seed

    config_path = args.run / "config.json"
    if not config_path.exists():
        raise SystemExit(f"error: {args.run} is not a run folder (no config.json)")
    config = json.loads(config_path.read_text())
    device = resolve_device(args.device)
    set_seed(args.seed)
    model, joint = toy.build_joint_vae(config["latent_dim"])
    load_stage(args.run, "joint", model, joint)
    experts = None
    stage = f"experts_{args.variant}"
    if (args.run / stage).exists():
        projectors = toy.build_projectors() if args.variant == "shared" else None
        experts = toy.build_experts(config["latent_dim"], args.variant, projectors)
        load_stage(args.run, stage, None, experts)
        experts.to(device).eval()
    model.to(device).eval()
    joint.to(device).eval()
    test = toy.CirclesSquares("test", config["test_size"], config["seed"])
    batch = next(iterate_batches(test, args.count, shuffle=False)).to(device)
    given = [g.strip() for g in args.given.split(",") if g.strip()]
    try:
        res = conditional_generate(
            model,
            batch,
            given,
            joint_guide=joint,
            experts=experts,
            num_samples=args.num_samples,
            method=args.method,
            mcmc_warmup=args.warmup,
            seed=args.seed,
            improper=args.improper,
        )
    except (KeyError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    out = args.out or args.run / "samples"
    tag = "+".join(given) + ("-mcmc" if res.method == "mcmc" else "")
    from .utils import atomic_write

    atomic_write(
        out / f"samples_{tag}.pt",
        lambda f: torch.save(
            {"z": res.z.cpu(), **{k: v.cpu() for k, v in res.generated.items()}, "given": given, "method": res.method},
            f,
        ),
    )
    rows = {f"given {g}": batch.data[g] for g in given}
    for name, gen in res.generated.items():
        for s in range(min(args.num_samples, 3)):
            rows[f"{name} #{s + 1}"] = gen[s]
    plots.image_grid(rows, out / f"samples_{tag}.png", title=f"p(x | {', '.join(given)}) via {res.method}")
    print(f"method: {res.method}; wrote {out / f'samples_{tag}.pt'} and .png")
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
    set_seed(args.seed)  # the metrics draw samples: the same draws whether or not the run was resumed
    metrics = toy.evaluate_joint(model, guide, test, out, device)
    if args.model in ("jnf", "jnf-shared"):
        metrics["cross_coherence"] = _train_experts(args, model, guide, train, val, test, out, device)
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


def _train_experts(args, model, joint_guide, train, val, test, out: Path, device) -> dict:
    """JNF stage 2 (and stage 0 of JNF-Shared): checkpointed fit stages 'projectors' (jnf-shared only),
    then one 'experts_<variant>' stage per expert variant."""
    from .experiments import toy
    from .infer.fit import fit
    from .infer.jnf import JNFLoss
    from .infer.shared_info import train_projectors

    variants = ["gaussian", "flow"] + (["shared"] if args.model == "jnf-shared" else [])
    projectors = None
    if "shared" in variants:
        # Stage 0 of JNF-Shared, the fit stage 'projectors' (checkpointed like every stage): --resume
        # continues an interrupted stage and loads a finished one without retraining it. The
        # projectors end frozen; the 'experts_shared' stage stores them again inside its guide.
        projectors = toy.build_projectors().to(device)
        train_projectors(
            projectors,
            train,
            objective=args.projector,
            epochs=args.projector_epochs,
            batch_size=256,
            seed=args.seed,
            progress=not args.no_progress,
            run_dir=out,
            stage="projectors",
            resume=args.resume,
            device=device,
        )
    experts = {}
    for variant in variants:
        guide = toy.build_experts(args.latent_dim, variant, projectors, seed=args.seed)
        fit(
            model,
            guide,
            train,
            elbo=JNFLoss(joint_guide),
            epochs=args.expert_epochs or args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            val_data=val,
            params=guide.experts,
            train_mode_modules=[guide.experts],
            run_dir=out,
            stage=f"experts_{variant}",
            resume=args.resume,
            seed=args.seed,
            device=device,
            progress=not args.no_progress,
        )
        experts[variant] = guide
    return toy.evaluate_experts(model, joint_guide, experts, test, out, device, seed=args.seed)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
