"""Cost of one training step of the aggregation guides as the number of modalities M grows.

The measurement (pairs, interleaved timing, memory, tables) is library code in
:mod:`pyro_mmvae.experiments.aggregation_scaling`; this command picks the sizes and writes the results.

For M in ``--ms`` (default 2, 5, 10, 12 = the MoPoE cap, 20, 50) small vector modalities
(D_s = 10 each, Normal likelihood), a :class:`~pyro_mmvae.models.MultimodalVAE` with latent D = 10
is trained with batch 250 and each of the guides PoE, MoE, MoPoE, SumPooling and SelfAttention.
One step = zero grads, loss (the masked bound ``MaskedELBO``; the output says which objective),
backward, Adam step. Steps of ALL (M, guide) pairs are
interleaved in a freshly shuffled order every round, so machine noise (other jobs on a shared
host) hits every pair alike; the table reports medians over ``--steps`` rounds after ``--warmup``
rounds.

Memory per step:

- on CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the memory allocated before
  it (parameters, optimiser state and the batch), i.e. the step's own peak;
- on CPU: the bytes of the tensors autograd saves for the backward pass (unique storages, captured
  with ``torch.autograd.graph.saved_tensors_hooks``; parameter storages excluded), i.e. the
  activation memory a step holds at its peak. (``tracemalloc`` does not see torch's allocator.)

A step is the paper's training step (Table 2 recipe): gradients are NaN-zeroed and clipped
element-wise to ±100 before the Adam step. The table marks with ``*`` the pairs whose loss was
non-finite in some timed steps (the JSON counts them). The set guides sum M unnormalised features,
so at large M an untrained network's ρ outputs large log-scales ℓ; their scale head grows linearly
(not exponentially) above ℓ = 5 (``pyro_mmvae.nn.set_aggregators.exp_linear``), which keeps every
pair finite since that change; the mark stays as a check.

MoPoE evaluates 2^M products of experts; its guide refuses M > ``MAX_MOPOE_MODALITIES`` with a
``ValueError`` at construction, and the benchmark prints that message for those M instead of
attempting the step.

    python benchmarks/aggregation_scaling.py [--steps 20] [--device cpu] [--quick]
        [--json benchmarks/results/aggregation_scaling_cpu.json]
        [--markdown benchmarks/results/aggregation_scaling_cpu.md]

Last line: ``sumpooling_step_ratio_m50_vs_m5=<median SumPooling step at M=50 / at M=5>`` (about
10 when the cost grows linearly in M).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import asdict

import torch

from pyro_mmvae.experiments.aggregation_scaling import (
    DEFAULT_MS,
    ELBO_NAME,
    GUIDES,
    MAX_MOPOE_MODALITIES,
    MODEL_NAME,
    QUICK_MS,
    Pair,
    Result,
    Settings,
    format_table,
    last_line,
    load_1min,
    markdown_report,
    run,
    step_ratio,
)
from pyro_mmvae.utils import atomic_write, atomic_write_json, command_line, resolve_device, run_record

__all__ = ["GUIDES", "MAX_MOPOE_MODALITIES", "Pair", "Result", "Settings", "main", "parse_args"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="timed rounds (default 20; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2; 1 with --quick)")
    p.add_argument("--ms", type=int, nargs="+", default=None, help=f"numbers of modalities (default {DEFAULT_MS})")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--quick", action="store_true", help=f"M in {QUICK_MS}, 3 rounds: a smoke run")
    p.add_argument("--batch-size", type=int, default=Settings.batch_size)
    p.add_argument("--width", type=int, default=Settings.width)
    p.add_argument("--threads", type=int, default=Settings.threads)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--markdown", default=None, help="write a markdown report here")
    args = p.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.ms = tuple(args.ms) if args.ms is not None else (QUICK_MS if args.quick else DEFAULT_MS)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if min(args.ms) < 1:
        p.error("--ms must be positive")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    # Non-finite losses are counted per pair (see the module docstring); Pyro's per-site NaN
    # warnings would only repeat that.
    warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    s = Settings(batch_size=args.batch_size, width=args.width, threads=args.threads)
    memory_method = (
        "torch.cuda.max_memory_allocated during one step minus the memory allocated before it"
        if device.type == "cuda"
        else "bytes of the tensors autograd saves for backward in one step (unique storages, parameters excluded; "
        "captured with torch.autograd.graph.saved_tensors_hooks)"
    )
    print(f"objective: {ELBO_NAME}")
    print(f"model: {MODEL_NAME}")
    print(f"memory: {memory_method}")
    print(f"M = {args.ms}; {args.steps} timed rounds after {args.warmup} warm-up; device {device}")
    load_start, t0 = load_1min(), time.perf_counter()
    results = run(args.ms, args.steps, args.warmup, s, device, args.seed, log=lambda msg: print(msg, flush=True))
    wall = time.perf_counter() - t0

    mib = "peak above baseline" if device.type == "cuda" else "saved for backward"
    table = format_table(results, args.ms, mib)
    ratios = {f"{k} M=50/M=5": step_ratio(results, k, 50, 5) for k in GUIDES}
    print()
    print(table)
    print()
    for r in results:
        if r.error and r.guide == "MoPoE" and r.num_modalities > MAX_MOPOE_MODALITIES:
            print(f"MoPoE, M = {r.num_modalities}: {r.error}")
    for r in results:
        if r.nonfinite_steps:
            n = len(r.step_ms)
            print(f"M = {r.num_modalities}, {r.guide}: non-finite loss in {r.nonfinite_steps} of {n} steps")
    for k, v in ratios.items():
        print(f"step ratio {k}: " + (f"{v:.2f}" if v is not None else "n/a"))

    meta = run_record(
        command_line("benchmarks/aggregation_scaling.py", argv),
        device=device,
        threads=args.threads,
        load_average_start=load_start,
        load_average_end=load_1min(),
        elbo=ELBO_NAME,
        model=MODEL_NAME,
        memory_method=memory_method,
        settings=asdict(s),
        steps=args.steps,
        warmup=args.warmup,
        ms=list(args.ms),
        max_mopoe_modalities=MAX_MOPOE_MODALITIES,
        wall_seconds=wall,
    )
    report = {**meta, "results": [asdict(r) for r in results], "step_ratio_m50_vs_m5": ratios}
    if args.json:
        atomic_write_json(args.json, report)
    if args.markdown:
        text = markdown_report(meta, results, table, ratios)
        atomic_write(args.markdown, lambda f: f.write(text), binary=False)
    print(last_line(ratios))
    return report


if __name__ == "__main__":
    main()
