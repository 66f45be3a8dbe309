"""Subset-posterior sampling: BatchedHMC vs stock Pyro NUTS on the same flow-expert target.

The target: N data points, each with |S| = 3 experts q_j(z | x_j) that are masked autoregressive
flows (fixed random weights, conditioned on a random per-point context) pushed from a Gaussian whose
location and scale are random per data point (scales log-uniform in [0.05, 5], as in the tests'
Gaussian targets), and a standard Normal prior in D = 20 dimensions:
p(z | x_S) ∝ p(z) Π_j q_j(z | x_j) / p(z)^{|S|-1}. Both samplers run 4 chains in this process:

- BatchedHMC: one ``pyro.infer.MCMC`` run whose state is ``(C, N, D)``; per-target accept/reject,
  step size, diagonal mass matrix and trajectory length;
- Pyro NUTS: ``potential_fn`` = −Σ_n log p(z_n | x_S) over all N points (one plate), chains one after
  another (``num_chains`` processes would only serialise on a 2-core machine).

Reported per sampler: wall time (warmup + sampling, and sampling only), gradient evaluations, the
minimum over the N targets of the per-target bulk ESS (each target's ESS is its minimum over the D
dimensions, pooled over the 4 chains), that minimum per second of wall time, max R-hat, divergences.
Stock NUTS is slow on N = 1000: it may run fewer draws (``--nuts-warmup``/``--nuts-samples``); the
comparable figure is ESS per second. The last line is ``min_ess_per_s_ratio_vs_pyro_nuts=<x>``
(BatchedHMC over NUTS, total wall time).

The target, the two sampler runs, their summaries and the report are library code in
:mod:`pyro_mmvae.experiments.subset_posterior_benchmark`; this command picks the sizes and writes the results.

    python benchmarks/subset_posterior.py --quick                       # ~2 minutes
    nice python benchmarks/subset_posterior.py --out benchmarks/results/subset_posterior_cpu
"""

from __future__ import annotations

import argparse

import torch

from pyro_mmvae.experiments.subset_posterior_benchmark import (
    benchmark_batched_hmc,
    benchmark_pyro_nuts,
    benchmark_target,
    diagnostics_cost,
    diagnostics_line,
    ess_ratios,
    experts_description,
    format_table,
    markdown_report,
    starting_state,
)
from pyro_mmvae.utils import atomic_write, atomic_write_json, command_line, resolve_device, run_record, to_jsonable

__all__ = ["main", "parse_args"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="data points (independent targets)")
    p.add_argument("--d", type=int, default=20, help="latent dimension")
    p.add_argument("--experts", type=int, default=3, help="|S|")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500, help="BatchedHMC warmup iterations")
    p.add_argument("--samples", type=int, default=500, help="BatchedHMC draws per chain")
    p.add_argument("--nuts-warmup", type=int, default=200)
    p.add_argument("--nuts-samples", type=int, default=200)
    p.add_argument("--flow-strength", type=float, default=0.3, help="scale of the flows' random last layers")
    p.add_argument(
        "--expert-kind", default="flow", choices=["flow", "gaussian"], help="gaussian: the flows' bases alone"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-nuts", action="store_true")
    p.add_argument("--pool-metric", action="store_true", help="BatchedHMC: pool each window's metric over the chains")
    p.add_argument("--arviz-targets", type=int, default=20, help="targets timed with ArviZ's own diagnostics")
    p.add_argument("--quick", action="store_true", help="N=200, 200+200 BatchedHMC, 60+60 NUTS (~2 minutes)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.warmup, args.samples, args.nuts_warmup, args.nuts_samples = 200, 200, 200, 60, 60
    return args


def run_samplers(args, target) -> tuple:
    """The results rows (BatchedHMC, then Pyro NUTS unless ``--skip-nuts``) and BatchedHMC's draws ``(C, S, N, D)``."""
    init, metric = starting_state(target, args.chains, args.seed)  # both samplers start from these
    hmc, draws = benchmark_batched_hmc(
        target, init, metric, args.samples, args.warmup, args.chains, args.seed, args.progress, args.pool_metric
    )
    results = [hmc]
    if not args.skip_nuts:
        nuts, _ = benchmark_pyro_nuts(
            target, init, metric, args.nuts_samples, args.nuts_warmup, args.chains, args.seed, args.progress
        )
        results.append(nuts)
    return results, draws


def target_line(args, device) -> str:
    """The target and run settings in one line (printed first, and the report's ``target`` entry)."""
    return (
        f"N={args.n} D={args.d} |S|={args.experts} {experts_description(args.expert_kind, args.flow_strength)}, "
        f"{args.chains} chains, device={device}, dtype={args.dtype}, threads={args.threads}"
    )


def write_results(out: str, record: dict, header: str, table: str) -> None:
    """``<out>.json`` (the record) and ``<out>.md`` (the report)."""
    atomic_write_json(f"{out}.json", to_jsonable(record))
    text = markdown_report(record, header, table)
    atomic_write(f"{out}.md", lambda f: f.write(text), binary=False)


def main(argv=None) -> dict:
    """Run the benchmark, print its table and ratios, write ``--out`` files; returns the results record."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    target = benchmark_target(
        args.n, args.d, args.experts, args.flow_strength, device, dtype, args.seed, args.expert_kind
    )
    results, draws = run_samplers(args, target)
    diag_cost = diagnostics_cost(draws, results[0]["diagnostics_time_s"], args.arviz_targets)
    ratio, ratio_sampling = ess_ratios(results)

    header, table = target_line(args, device), format_table(results)
    print(header)
    print(table)
    print(diagnostics_line(diag_cost))
    if ratio_sampling is not None:
        print(f"ratio (sampling phase only): {ratio_sampling:.1f}")
    record = run_record(
        command_line("benchmarks/subset_posterior.py", argv),
        device=device,
        threads=args.threads,
        args=vars(args),
        results=results,
        diagnostics_cost=diag_cost,
        min_ess_per_s_ratio_vs_pyro_nuts=ratio,
    )
    if args.out:
        write_results(args.out, record, header, table)
    if ratio is not None:
        print(f"min_ess_per_s_ratio_vs_pyro_nuts={ratio:.2f}")
    return record


if __name__ == "__main__":
    main()
