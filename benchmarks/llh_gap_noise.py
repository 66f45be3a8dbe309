"""How much of Table 1's relative LLH gap is the noise of the last Adam iterate.

On Table 1's linear-Gaussian data the model family contains the maximum-likelihood Gaussian, so a
trained model's relative gap to it (``llh_gap``) is optimisation error: partly the distance still to
go, partly the stationary jitter of Adam at the table's learning rate (1e-3, batch 500). This script
takes finished Table 1 configurations (their final checkpoints under ``--runs-dir``), copies each run
folder to a temporary directory (the original is only read) and continues the run itself there for
``--epochs`` more epochs — the same Adam moments, random-number state and settings, as if it had been
given more epochs (``fit`` resumes it) — at each learning rate of ``--lrs`` (set on the resumed
optimizer), recording the gap every ``--every`` epochs:

- at the table's own learning rate the recorded gaps sample the gap among the iterates a longer run
  passes through, i.e. how much the stopping point matters;
- at smaller learning rates the jitter shrinks, and what remains is the distance to the optimum.

    python benchmarks/llh_gap_noise.py --rows SumPooling --objective masked --seeds 4, \
        [--runs-dir benchmarks/results/pi_tables_full_runs] [--epochs 200] [--every 10] \
        [--lrs 1e-3,1e-4,1e-5] [--out benchmarks/results/llh_gap_noise_cpu]

Configurations that cannot be continued (no finished run with these settings, or a committed
``result.json`` without its weights) are skipped with the reason; the outputs are rewritten after
every continuation.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pyro_mmvae.experiments.pi_tables import FULL, LATENT_DIM, llh_gap, run_folder, train_configuration
from pyro_mmvae.train.callbacks import Callback
from pyro_mmvae.utils import atomic_write, atomic_write_json, command_line, run_record

TABLE, SECTION = 1, "main"


class _Continuation(Callback):
    """Sets the resumed optimizer's learning rate, then records ``(epoch, llh_gap)`` every ``every`` epochs."""

    def __init__(self, lr: float, every: int, dataset):
        self.lr, self.every, self.dataset, self.gaps = lr, every, dataset, []

    def on_fit_start(self, state) -> None:  # after the checkpoint (and its optimizer state) is restored
        for group in state.optimizer.param_groups:
            group["lr"] = self.lr

    def on_epoch_end(self, state, row: dict) -> None:
        if row["epoch"] % self.every == 0:
            self.gaps.append((row["epoch"], llh_gap(state.model, self.dataset, LATENT_DIM[TABLE])))


def continued_gaps(
    row: str, objective: str, seed: int, runs_dir: Path, lr: float, epochs: int, every: int, settings=FULL[TABLE]
) -> dict:
    """``{"epochs_before", "start": gap, "gaps": [(epoch, gap), ...]}`` of one continuation of a finished
    configuration; :class:`FileNotFoundError` (or :class:`RuntimeError`) when it cannot be continued."""
    model, _, data, training = train_configuration(
        TABLE, SECTION, row, objective, seed, settings, None, runs_dir, load_only=True
    )
    start = llh_gap(model, data.train, LATENT_DIM[TABLE])
    source = run_folder(runs_dir, TABLE, SECTION, row, objective, seed)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(source, run_folder(tmp, TABLE, SECTION, row, objective, seed))
        cont = _Continuation(lr, every, data.train)
        longer = replace(settings, epochs=settings.epochs + epochs)
        train_configuration(TABLE, SECTION, row, objective, seed, longer, None, tmp, callbacks=[cont])
    return {"epochs_before": settings.epochs, "start": start, "gaps": cont.gaps}


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
    if args.epochs < 1 or not 1 <= args.every <= args.epochs:
        p.error(f"need --epochs >= 1 and 1 <= --every <= --epochs; got --epochs {args.epochs} --every {args.every}")
    lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    if not lrs or min(lrs) <= 0:
        p.error(f"--lrs must be positive learning rates, got {args.lrs!r}")
    torch.set_num_threads(args.threads)
    record = run_record(command_line("benchmarks/llh_gap_noise.py", argv), "cpu", args.threads)
    rows = []
    for row in [r for r in args.rows.split(",") if r.strip()]:
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            for lr in lrs:
                tic = time.perf_counter()
                try:
                    res = continued_gaps(row, args.objective, seed, args.runs_dir, lr, args.epochs, args.every)
                except (FileNotFoundError, RuntimeError) as err:
                    print(f"{row} {args.objective} seed {seed}: skipped ({err})")
                    break
                g = [x for _, x in res["gaps"]]
                out = {
                    "row": row, "objective": args.objective, "seed": seed, "lr": lr, "epochs": args.epochs,
                    "epochs_before": res["epochs_before"], "start_gap": res["start"], "gaps": res["gaps"],
                    "final_gap": g[-1], "min_gap": min(g), "median_gap": statistics.median(g), "max_gap": max(g),
                    "seconds": time.perf_counter() - tic,
                }  # fmt: skip
                rows.append(out)
                print(
                    f"{row} {args.objective} seed {seed}, lr {lr:g}: gap {out['start_gap']:.3g} after "
                    f"{out['epochs_before']} epochs; over {args.epochs} more: median {out['median_gap']:.3g} "
                    f"(min {out['min_gap']:.3g}, max {out['max_gap']:.3g}), last {out['final_gap']:.3g}"
                )
                if args.out is not None:
                    write(args.out, record, rows, args.every)
    if args.out is not None:
        write(args.out, record, rows, args.every)
    return 0


def write(out: Path, record: dict, rows: list[dict], every: int) -> None:
    atomic_write_json(out.with_suffix(".json"), {**record, "rows": rows})
    lines = [
        "# Table 1: the relative LLH gap of finished runs, and over further epochs of the same runs",
        "",
        f"- command: `{record['command']}`",
        f"- date: {record['date']}",
        f"- machine: {record['machine']}",
        f"- each run continued from its final checkpoint (its Adam state and random-number state), the learning "
        f"rate set to `lr`; gaps recorded every {every} epochs",
        "",
        "| row | objective | seed | lr | gap at the end of the run (epochs) | median | min | max | last |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['objective']} | {r['seed']} | {r['lr']:g} | {r['start_gap']:.3g} "
            f"({r['epochs_before']}) | {r['median_gap']:.3g} | {r['min_gap']:.3g} | {r['max_gap']:.3g} | "
            f"{r['final_gap']:.3g} |"
        )
    atomic_write(out.with_suffix(".md"), lambda f: f.write("\n".join([*lines, ""])), binary=False)


if __name__ == "__main__":
    raise SystemExit(main())
