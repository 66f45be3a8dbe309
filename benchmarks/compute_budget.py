"""The compute the full Tables 1-4 of the permutation-invariant paper need, against this machine's limit.

For every configuration kind of the tables (table, section, row, objective; each is trained once per
seed) this script counts the matrix-multiply FLOPs of one training step (loss and gradients, at the
full settings' batch size, counted by :class:`torch.utils.flop_counter.FlopCounterMode`: matmuls,
batched matmuls and attention; element-wise work is not counted, so the figure is a lower bound of
the work), multiplies by the steps of a full run (``epochs × ⌈num_train / batch_size⌉``) and by the
seeds, and sets the total against:

- ``peak``: this core's own single-precision matmul throughput (``torch.mm`` of 1024 × 1024 float32
  matrices on ``--threads`` threads, the best of a few repeats) — no implementation of the same
  arithmetic runs faster on this core than total FLOPs / peak;
- ``measured``: the training seconds of the configurations already finished (their ``result.json``
  under ``--runs-dir``), i.e. what the library achieves on these models, as GFLOP/s and as seconds per
  configuration, used to estimate the remaining configurations of the same kind (kinds with no
  finished run take the eager step timed here, ``--steps`` steps, times the compiled/eager ratio of
  the finished kinds of the same table, or of all tables).

Evaluation (importance-sampled log-likelihoods, MCC) is not counted; its measured seconds are listed.

    python benchmarks/compute_budget.py [--tables 1,2,3,4] [--runs-dir benchmarks/results/pi_tables_full_runs]
        [--steps 5] [--threads 1] [--out benchmarks/results/compute_budget_cpu]

Last line: ``remaining_core_hours=<x>``, the estimate for every configuration not finished yet.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import pyro
import torch
from torch.utils.flop_counter import FlopCounterMode

from pyro_mmvae.data import iterate_batches
from pyro_mmvae.experiments.pi_tables.builders import build_elbo, build_guide, build_model, make_data
from pyro_mmvae.experiments.pi_tables.runner import run_folder
from pyro_mmvae.experiments.pi_tables.settings import FULL, FULL_COND_DRAWS, LAYOUT, OBJECTIVES
from pyro_mmvae.nn.shared_encodings import without_module_registration
from pyro_mmvae.utils import atomic_write, atomic_write_json, command_line, run_record, set_seed


def matmul_peak_gflops(size: int = 1024, repeats: int = 7) -> float:
    """Best GFLOP/s of ``torch.mm`` of two ``size × size`` float32 matrices on the current threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2 * size**3 / best / 1e9


def step_cost(table: int, section, row, objective: str, steps: int) -> dict:
    """Matmul FLOPs of one training step (loss + backward) and, with ``steps`` > 0, its eager median ms."""
    s = FULL[table]
    data = make_data(table, section.name, 0, s.num_train, s.num_test, FULL_COND_DRAWS)
    set_seed(0)
    model, guide = build_model(table, row, data.modalities), build_guide(table, row, data.modalities)
    elbo = build_elbo(objective, "uniform")
    params = [*model.parameters(), *guide.parameters()]
    batches = list(iterate_batches(data.train, s.batch_size, shuffle=True, seed=0))
    with pyro.validation_enabled(False), without_module_registration():
        counter = FlopCounterMode(display=False)
        with counter:
            elbo.differentiable_loss(model, guide, batches[0]).backward()
        times = []
        for i in range(steps + 1 if steps else 0):  # the first one warms up
            for p in params:
                p.grad = None
            t0 = time.perf_counter()
            elbo.differentiable_loss(model, guide, batches[i % len(batches)]).backward()
            times.append(time.perf_counter() - t0)
    return {
        "flops_per_step": counter.get_total_flops(),
        "eager_ms": 1e3 * statistics.median(times[1:]) if len(times) > 1 else None,
        "steps_per_run": s.epochs * math.ceil(s.num_train / s.batch_size),
        "seeds": list(s.seeds),
    }


def finished_runs(runs_dir: Path, table: int, section, row, objective: str, seeds) -> list[dict]:
    """The finished full-setting results of one configuration kind (library data, default clip: the
    folders ``seed<s>``; runs with fewer epochs in the same folder are not counted)."""
    out = []
    for seed in seeds:
        f = run_folder(runs_dir, table, section.name, row.label, objective, seed) / "result.json"
        if f.is_file():
            res = json.loads(f.read_text())
            full = res.get("key", {}).get("settings", {}).get("epochs") == FULL[table].epochs
            if full and res.get("status") == "finished" and res.get("train_seconds"):
                out.append(res)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tables", default="1,2,3,4", help="comma list of tables")
    p.add_argument("--runs-dir", type=Path, default=Path("benchmarks/results/pi_tables_full_runs"))
    p.add_argument("--steps", type=int, default=5, help="eager steps timed per kind (0: none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tables = [int(t) for t in args.tables.split(",") if t.strip()]
    record = run_record(command_line("benchmarks/compute_budget.py", argv), "cpu", args.threads)
    peak = matmul_peak_gflops()
    print(f"machine: {record['machine']}\nmatmul peak: {peak:.1f} GFLOP/s on {args.threads} thread(s)")
    kinds = []
    for t in tables:
        for sec in LAYOUT[t]:
            for row in sec.rows:
                for obj in OBJECTIVES:
                    cost = step_cost(t, sec, row, obj, args.steps)
                    done = finished_runs(args.runs_dir, t, sec, row, obj, cost["seeds"])
                    run_flops = cost["flops_per_step"] * cost["steps_per_run"]
                    train_s = [r["train_seconds"] for r in done]
                    kind = {
                        "table": t, "section": sec.name, "row": row.label, "objective": obj, **cost,
                        "finished": len(done), "train_seconds": train_s,
                        "eval_seconds": [r["eval_seconds"] for r in done],
                        "gflop_per_run": run_flops / 1e9,
                        "peak_seconds_per_run": run_flops / (peak * 1e9),
                        "measured_seconds_per_run": statistics.median(train_s) if train_s else None,
                        "measured_gflops": run_flops / 1e9 / statistics.median(train_s) if train_s else None,
                    }  # fmt: skip
                    if train_s and cost["eager_ms"]:
                        kind["measured_vs_eager"] = kind["measured_seconds_per_run"] / (
                            cost["eager_ms"] / 1e3 * cost["steps_per_run"]
                        )
                    kinds.append(kind)
                    print(
                        f"T{t} {sec.name} {row.label} {obj}: {cost['flops_per_step'] / 1e9:.3f} GFLOP/step, "
                        f"{len(done)}/{len(cost['seeds'])} finished"
                        + ("" if not train_s else f", {kind['measured_seconds_per_run']:.0f} s per run")
                        + ("" if cost["eager_ms"] is None else f", eager {cost['eager_ms']:.1f} ms/step")
                    )

    # Kinds with no finished run: the eager step times the compiled/eager ratio measured on this table
    # (or on every table) — fit(compile=True), as the full runs train.
    def ratio(rows):
        r = [k["measured_vs_eager"] for k in rows if "measured_vs_eager" in k]
        return statistics.median(r) if r else None

    overall = ratio(kinds)
    for k in kinds:
        r = ratio([x for x in kinds if x["table"] == k["table"]]) or overall
        if k["measured_seconds_per_run"] is not None:
            est, source = k["measured_seconds_per_run"], "finished runs"
        elif k["eager_ms"] is not None and r is not None:
            est, source = k["eager_ms"] / 1e3 * k["steps_per_run"] * r, f"eager step × {r:.2f}"
        else:
            est, source = None, "—"
        k["estimate_seconds_per_run"], k["estimate_from"] = est, source
    totals = []
    for t in tables:
        ks = [k for k in kinds if k["table"] == t]
        configs = sum(len(k["seeds"]) for k in ks)
        finished = sum(k["finished"] for k in ks)
        remaining = [(len(k["seeds"]) - k["finished"], k) for k in ks]
        est = [n * k["estimate_seconds_per_run"] for n, k in remaining if n and k["estimate_seconds_per_run"]]
        totals.append({
            "table": t, "configurations": configs, "finished": finished,
            "pflop_all": sum(len(k["seeds"]) * k["gflop_per_run"] for k in ks) / 1e6,
            "peak_core_hours_all": sum(len(k["seeds"]) * k["peak_seconds_per_run"] for k in ks) / 3600,
            "measured_core_hours_finished": sum(sum(k["train_seconds"]) for k in ks) / 3600,
            "estimate_core_hours_remaining": sum(est) / 3600 if len(est) == sum(1 for n, _ in remaining if n) else None,
            "peak_core_hours_remaining": sum(n * k["peak_seconds_per_run"] for n, k in remaining) / 3600,
        })  # fmt: skip
    remaining_hours = sum(t["estimate_core_hours_remaining"] or 0.0 for t in totals)
    line = f"remaining_core_hours={remaining_hours:.1f}"
    if args.out is not None:
        result = {**record, "matmul_peak_gflops": peak, "kinds": kinds, "totals": totals}
        atomic_write_json(args.out.with_suffix(".json"), result)
        atomic_write(args.out.with_suffix(".md"), lambda f: f.write(report(result, line)), binary=False)
    for t in totals:
        print(
            f"Table {t['table']}: {t['finished']}/{t['configurations']} finished, {t['pflop_all']:.2f} PFLOP in all "
            f"({t['peak_core_hours_all']:.1f} core-hours at the matmul peak); remaining: "
            + ("?" if t["estimate_core_hours_remaining"] is None else f"{t['estimate_core_hours_remaining']:.1f}")
            + f" core-hours estimated, {t['peak_core_hours_remaining']:.1f} at the peak"
        )
    print(line)
    return 0


def report(result: dict, line: str) -> str:
    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    lines = [
        "# Compute of the full Tables 1-4 (permutation-invariant paper) against this machine's limit",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}",
        f"- machine: {result['machine']}",
        f"- matmul peak (torch.mm, 1024² float32): {result['matmul_peak_gflops']:.1f} GFLOP/s",
        "- FLOPs: matmuls, batched matmuls and attention of one step (loss + gradients) at the full batch size;",
        "  element-wise work is not counted, so the peak hours are a lower bound for any implementation",
        "",
        "| table | configurations | finished | PFLOP (all) | core-hours at the peak (all) | core-hours measured "
        "(finished) | core-hours estimated (remaining) | at the peak (remaining) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in result["totals"]:
        lines.append(
            f"| {t['table']} | {t['configurations']} | {t['finished']} | {t['pflop_all']:.2f} | "
            f"{t['peak_core_hours_all']:.1f} | {t['measured_core_hours_finished']:.1f} | "
            f"{f(t['estimate_core_hours_remaining'], '.1f')} | {t['peak_core_hours_remaining']:.1f} |"
        )
    lines += [
        "",
        "| table | section | row | objective | GFLOP per step | steps per run | eager ms per step | finished "
        "| s per run (measured) | GFLOP/s achieved | s per run at the peak | s per run estimated (from) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for k in result["kinds"]:
        lines.append(
            f"| {k['table']} | {k['section']} | {k['row']} | {k['objective']} | {k['flops_per_step'] / 1e9:.3f} | "
            f"{k['steps_per_run']} | {f(k['eager_ms'], '.1f')} | {k['finished']}/{len(k['seeds'])} | "
            f"{f(k['measured_seconds_per_run'], '.0f')} | {f(k['measured_gflops'], '.1f')} | "
            f"{k['peak_seconds_per_run']:.0f} | {f(k['estimate_seconds_per_run'], '.0f')} ({k['estimate_from']}) |"
        )
    return "\n".join([*lines, "", line, ""])


if __name__ == "__main__":
    raise SystemExit(main())
