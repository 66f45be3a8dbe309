"""The compute the full Tables 1-4 of the permutation-invariant paper need, against this machine's limit.

For every configuration kind of the tables (table, section, row, objective; each is trained once per
seed) this script counts the matrix-multiply FLOPs of one training step (loss and gradients, at the
full settings' batch size, counted by :class:`torch.utils.flop_counter.FlopCounterMode`: matmuls,
batched matmuls and attention; element-wise work is not counted, so the figure is a lower bound of
the work), multiplies by the steps of a full run (``epochs × ⌈num_train / batch_size⌉``) and by the
seeds, and sets the total against:

- ``peak``: this core's single-precision matmul rate (``torch.mm`` of square float32 matrices of side
  512, 1024 and 2048 on one thread, as the runs train, the best of a few repeats): a reference rate,
  not a hardware bound (other shapes, an idle or turbo core may do better), at which the same
  arithmetic would need total FLOPs / rate;
- ``measured``: the training seconds of the configurations already finished (their ``result.json``
  under ``--runs-dir``; each was timed on the machine it ran on), i.e. what the library achieves on
  these models, as GFLOP/s and as seconds per configuration: the estimate for the remaining
  configurations of the same kind. Kinds with no finished run are estimated by their eager step timed
  here (median of ``--steps`` steps, loss and gradients; no optimizer step): the full-table commands
  train with ``--compile``, whose step was 1.4-1.5x faster than the eager one at the Table 2 and 4
  sizes (``benchmarks/results/train_step_cpu.md``).

Stored results that diverged or failed count as done (not remaining) but give no timing. Evaluation
(importance-sampled log-likelihoods, MCC) is not counted.

    python benchmarks/compute_budget.py [--tables 1,2,3,4] [--runs-dir benchmarks/results/pi_tables_full_runs]
        [--steps 5] [--out benchmarks/results/compute_budget_cpu]

Last line: ``remaining_core_hours=<x>``, the estimate for every configuration not done yet (``nan``
when a table has no estimate).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import pyro
import torch
from torch.utils.flop_counter import FlopCounterMode

from pyro_mmvae.data import iterate_batches
from pyro_mmvae.experiments.pi_tables.builders import build_elbo, build_guide, build_model, make_data
from pyro_mmvae.experiments.pi_tables.runner import Job, RunOptions, stored_result
from pyro_mmvae.experiments.pi_tables.settings import FULL, FULL_COND_DRAWS, LAYOUT, OBJECTIVES
from pyro_mmvae.nn.shared_encodings import without_module_registration
from pyro_mmvae.utils import atomic_write, atomic_write_json, command_line, run_record, set_seed


def matmul_peak_gflops(sizes=(512, 1024, 2048), repeats: int = 5) -> float:
    """Best GFLOP/s of ``torch.mm`` of two square float32 matrices of each side in ``sizes`` on the current threads."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        calls = max(1, 2**30 // n**3)  # about 2 GFLOP per timing
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                torch.mm(a, b)
            best = max(best, 2 * n**3 * calls / (time.perf_counter() - t0) / 1e9)
    return best


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


def stored_runs(runs_dir: Path, table: int, section, row, objective: str) -> list[dict]:
    """The stored results of one configuration kind at the full settings and default options (whatever
    their status; results of other settings in the same folders are not counted)."""
    jobs = [Job(table, section, row, objective, seed, FULL[table]) for seed in FULL[table].seeds]
    found = [stored_result(job, RunOptions(), runs_dir, current_only=False) for job in jobs]
    return [r for r in found if r is not None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tables", default="1,2,3,4", help="comma list of tables")
    p.add_argument("--runs-dir", type=Path, default=Path("benchmarks/results/pi_tables_full_runs"))
    p.add_argument("--steps", type=int, default=5, help="eager steps timed per kind (0: none)")
    p.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the full-table runs train one thread per process
    tables = [int(t) for t in args.tables.split(",") if t.strip()]
    record = run_record(command_line("benchmarks/compute_budget.py", argv), "cpu", 1)
    peak = matmul_peak_gflops()
    print(f"machine: {record['machine']}\nmatmul rate: {peak:.1f} GFLOP/s on one thread")
    kinds = []
    for t in tables:
        for sec in LAYOUT[t]:
            for row in sec.rows:
                for obj in OBJECTIVES:
                    cost = step_cost(t, sec, row, obj, args.steps)
                    stored = stored_runs(args.runs_dir, t, sec, row, obj)
                    finished = [r for r in stored if r.get("status") == "finished" and r.get("train_seconds")]
                    run_flops = cost["flops_per_step"] * cost["steps_per_run"]
                    train_s = [r["train_seconds"] for r in finished]
                    measured = statistics.median(train_s) if train_s else None
                    if measured is not None:
                        estimate, source = measured, "finished runs"
                    elif cost["eager_ms"] is not None:
                        estimate, source = cost["eager_ms"] / 1e3 * cost["steps_per_run"], "eager step"
                    else:
                        estimate, source = None, "—"
                    kind = {
                        "table": t, "section": sec.name, "row": row.label, "objective": obj, **cost,
                        "done": len(stored), "finished": len(finished), "train_seconds": train_s,
                        "gflop_per_run": run_flops / 1e9,
                        "peak_seconds_per_run": run_flops / (peak * 1e9),
                        "measured_seconds_per_run": measured,
                        "measured_gflops": None if measured is None else run_flops / 1e9 / measured,
                        "estimate_seconds_per_run": estimate, "estimate_from": source,
                    }  # fmt: skip
                    kinds.append(kind)
                    print(
                        f"T{t} {sec.name} {row.label} {obj}: {cost['flops_per_step'] / 1e9:.3f} GFLOP/step, "
                        f"{len(finished)}/{len(cost['seeds'])} finished"
                        + ("" if not train_s else f", {kind['measured_seconds_per_run']:.0f} s per run")
                        + ("" if cost["eager_ms"] is None else f", eager {cost['eager_ms']:.1f} ms/step")
                    )

    totals = []
    for t in tables:
        ks = [k for k in kinds if k["table"] == t]
        configs = sum(len(k["seeds"]) for k in ks)
        finished = sum(k["finished"] for k in ks)
        remaining = [(len(k["seeds"]) - k["done"], k) for k in ks]
        est = [n * k["estimate_seconds_per_run"] for n, k in remaining if n and k["estimate_seconds_per_run"]]
        totals.append({
            "table": t, "configurations": configs, "finished": finished, "done": sum(k["done"] for k in ks),
            "pflop_all": sum(len(k["seeds"]) * k["gflop_per_run"] for k in ks) / 1e6,
            "peak_core_hours_all": sum(len(k["seeds"]) * k["peak_seconds_per_run"] for k in ks) / 3600,
            "measured_core_hours_finished": sum(sum(k["train_seconds"]) for k in ks) / 3600,
            "estimate_core_hours_remaining": sum(est) / 3600 if len(est) == sum(1 for n, _ in remaining if n) else None,
            "peak_core_hours_remaining": sum(n * k["peak_seconds_per_run"] for n, k in remaining) / 3600,
        })  # fmt: skip
    unknown = [t["table"] for t in totals if t["estimate_core_hours_remaining"] is None]
    remaining_hours = math.nan if unknown else sum(t["estimate_core_hours_remaining"] for t in totals)
    if unknown:  # e.g. --steps 0 and a table without finished runs: no partial sum passed off as the total
        print(f"no estimate for Table(s) {', '.join(map(str, unknown))}: time their steps (--steps > 0)")
    line = f"remaining_core_hours={remaining_hours:.1f}"
    if args.out is not None:
        result = {**record, "matmul_peak_gflops": peak, "kinds": kinds, "totals": totals}
        atomic_write_json(args.out.with_suffix(".json"), result)
        atomic_write(args.out.with_suffix(".md"), lambda f: f.write(report(result, line)), binary=False)
    for t in totals:
        print(
            f"Table {t['table']}: {t['done']}/{t['configurations']} done ({t['finished']} finished), "
            f"{t['pflop_all']:.2f} PFLOP in all "
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
        f"- matmul rate (torch.mm, square float32 matrices, one thread, best): {result['matmul_peak_gflops']:.1f} "
        "GFLOP/s ('peak' below: a reference rate, not a hardware bound)",
        "- FLOPs: matmuls, batched matmuls and attention of one step (loss + gradients) at the full batch size;",
        "  element-wise work is not counted",
        "- measured: the finished runs' training seconds, each on the machine it ran on (see their reports)",
        "",
        "| table | configurations | done (finished) | PFLOP (all) | core-hours at the peak (all) | core-hours measured "
        "(finished) | core-hours estimated (remaining) | at the peak (remaining) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in result["totals"]:
        lines.append(
            f"| {t['table']} | {t['configurations']} | {t['done']} ({t['finished']}) | {t['pflop_all']:.2f} | "
            f"{t['peak_core_hours_all']:.1f} | {t['measured_core_hours_finished']:.1f} | "
            f"{f(t['estimate_core_hours_remaining'], '.1f')} | {t['peak_core_hours_remaining']:.1f} |"
        )
    lines += [
        "",
        "| table | section | row | objective | GFLOP per step | steps per run | eager ms per step | done (finished) "
        "| s per run (measured) | GFLOP/s achieved | s per run at the peak | s per run estimated (from) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for k in result["kinds"]:
        lines.append(
            f"| {k['table']} | {k['section']} | {k['row']} | {k['objective']} | {k['flops_per_step'] / 1e9:.3f} | "
            f"{k['steps_per_run']} | {f(k['eager_ms'], '.1f')} | {k['done']} ({k['finished']}) of {len(k['seeds'])} | "
            f"{f(k['measured_seconds_per_run'], '.0f')} | {f(k['measured_gflops'], '.1f')} | "
            f"{k['peak_seconds_per_run']:.0f} | {f(k['estimate_seconds_per_run'], '.0f')} ({k['estimate_from']}) |"
        )
    return "\n".join([*lines, "", line, ""])


if __name__ == "__main__":
    raise SystemExit(main())
