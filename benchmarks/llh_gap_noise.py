"""How much of Table 1's relative LLH gap is the noise of the last Adam iterate.

On Table 1's linear-Gaussian data the model family contains the maximum-likelihood Gaussian, so a
trained model's relative gap to it (``llh_gap``) is optimisation error: partly the distance still to
go, partly the stationary jitter of Adam at the table's learning rate (1e-3, batch 500). This script
reloads finished Table 1 configurations from their run folders
(:func:`~pyro_mmvae.experiments.pi_tables.train_configuration`, no retraining), then continues each
one's training from its final weights for ``--epochs`` more epochs at each learning rate of ``--lrs``
(every continuation starts from the same final weights, fresh Adam state, the table's gradient clip),
and records the gap every ``--every`` epochs:

- at the table's own learning rate the recorded gaps sample the gap's spread among the iterates a
  4000-epoch run could have stopped at;
- at smaller learning rates the jitter shrinks, and what remains is the distance to the optimum.

    python benchmarks/llh_gap_noise.py --rows SumPooling --objective masked --seeds 4, \
        [--runs-dir benchmarks/results/pi_tables_full_runs] [--epochs 200] [--lrs 1e-3,1e-4,1e-5] \
        [--out benchmarks/results/llh_gap_noise_cpu]

Configurations without a finished run in ``--runs-dir`` are skipped with a message (only their
``result.json`` may be committed: the weights are in the run folder's checkpoint).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pyro_mmvae.experiments.pi_tables import (
    FULL,
    LATENT_DIM,
    build_elbo,
    llh_gap,
    train_configuration,
)
from pyro_mmvae.train import fit
from pyro_mmvae.train.callbacks import EpochEndFunction
from pyro_mmvae.utils import atomic_write, atomic_write_json, command_line, run_record

TABLE, SECTION = 1, "main"


def continued_gaps(
    row: str, objective: str, seed: int, runs_dir: Path, lr: float, epochs: int, every: int, settings=FULL[TABLE]
):
    """``{"start": gap, "gaps": [(epoch, gap), ...]}`` for one continuation of a finished configuration, or None."""
    try:
        model, guide, data, _ = train_configuration(
            TABLE, SECTION, row, objective, seed, settings, None, runs_dir, load_only=True
        )
    except FileNotFoundError:
        return None
    d = LATENT_DIM[TABLE]
    start = llh_gap(model, data.train, d)
    gaps = []

    def record(history_row):
        if history_row["epoch"] % every == 0:  # epochs count from 1
            gaps.append((history_row["epoch"], llh_gap(model, data.train, d)))

    fit(
        model,
        guide,
        data.train,
        objective=build_elbo(objective, "uniform"),
        epochs=epochs,
        batch_size=settings.batch_size,
        lr=lr,
        grad_clip_value=settings.clip,
        zero_nan_grads=True,
        seed=10_000 + seed,  # other minibatches and draws than the run's own epochs
        progress=False,
        callbacks=[EpochEndFunction(record)],
    )
    return {"start": start, "gaps": gaps}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="SumPooling", help="comma list of Table 1 row labels")
    p.add_argument("--objective", default="masked", choices=("masked", "mixture"))
    p.add_argument("--seeds", default="4,", help="comma list of seeds")
    p.add_argument("--runs-dir", type=Path, default=Path("benchmarks/results/pi_tables_full_runs"))
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--every", type=int, default=10, help="epochs between recorded gaps")
    p.add_argument("--lrs", default="1e-3,1e-4,1e-5", help="comma list of learning rates")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = run_record(command_line("benchmarks/llh_gap_noise.py", argv), "cpu", args.threads)
    rows = []
    for row in [r for r in args.rows.split(",") if r.strip()]:
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            for lr in [float(x) for x in args.lrs.split(",") if x.strip()]:
                tic = time.perf_counter()
                res = continued_gaps(row, args.objective, seed, args.runs_dir, lr, args.epochs, args.every)
                if res is None:
                    print(f"{row} {args.objective} seed {seed}: no finished run in {args.runs_dir}, skipped")
                    break
                g = [x for _, x in res["gaps"]]
                out = {
                    "row": row, "objective": args.objective, "seed": seed, "lr": lr, "epochs": args.epochs,
                    "start_gap": res["start"], "gaps": res["gaps"], "final_gap": g[-1], "min_gap": min(g),
                    "median_gap": statistics.median(g), "max_gap": max(g), "seconds": time.perf_counter() - tic,
                }  # fmt: skip
                rows.append(out)
                print(
                    f"{row} {args.objective} seed {seed}, lr {lr:g}: gap {out['start_gap']:.3g} at 4000 epochs; "
                    f"over {args.epochs} more: median {out['median_gap']:.3g} (min {out['min_gap']:.3g}, "
                    f"max {out['max_gap']:.3g}), last {out['final_gap']:.3g}"
                )
    if args.out is not None:
        atomic_write_json(args.out.with_suffix(".json"), {**record, "rows": rows})
        lines = [
            "# Table 1: the relative LLH gap after 4000 epochs, and over further epochs at several learning rates",
            "",
            f"- command: `{record['command']}`",
            f"- date: {record['date']}",
            f"- machine: {record['machine']}",
            f"- gaps recorded every {args.every} epochs of each continuation (fresh Adam state, the table's clip)",
            "",
            "| row | objective | seed | lr | gap at 4000 epochs | median | min | max | last |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['row']} | {r['objective']} | {r['seed']} | {r['lr']:g} | {r['start_gap']:.3g} | "
                f"{r['median_gap']:.3g} | {r['min_gap']:.3g} | {r['max_gap']:.3g} | {r['final_gap']:.3g} |"
            )
        atomic_write(args.out.with_suffix(".md"), lambda f: f.write("\n".join([*lines, ""])), binary=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
