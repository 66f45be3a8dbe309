r"""Subset-posterior sampling: BatchedHMC vs stock Pyro NUTS (and vmapped BlackJAX NUTS on Gaussian experts).

The target: N data points, each with |S| = 3 experts q_j(z | x_j) that are masked autoregressive
flows (fixed random weights, conditioned on a random per-point context) pushed from a Gaussian whose
location and scale are random per data point (scales log-uniform in [0.05, 5]), and a standard Normal
prior in D = 20 dimensions: p(z | x_S) ∝ p(z) Π_j q_j(z | x_j) / p(z)^{|S|-1}. The samplers run 4
chains in this process, from the same starting points and the same initial diagonal metric:

- BatchedHMC (its defaults): one ``pyro.infer.MCMC`` run whose state is ``(C, N, D)``; per-target
  accept/reject, step size, diagonal mass matrix; one shared number of leapfrog steps;
- Pyro NUTS: ``potential_fn`` = −Σ_n log p(z_n | x_S) over all N points (one plate), chains one after
  another (``num_chains`` processes would only serialise on a 2-core machine);
- with ``--expert-kind gaussian`` (Gaussian experts, scales 0.1-2 by default, closed form known) also
  BlackJAX: window adaptation + NUTS per target and chain, ``jax.vmap``-ed and jitted, with
  BatchedHMC's warm-up and draw budgets, compile time reported apart; skipped with a message when
  ``jax``/``blackjax`` (the ``[bench]`` extra) are not installed.

Reported per sampler: wall time (warm-up + sampling, and sampling only), gradient evaluations, the
minimum over the N targets of the per-target bulk ESS (each target's ESS is its minimum over the D
dimensions, pooled over the 4 chains), that minimum per second of wall time, the minimum tail ESS,
max R-hat, divergences; and where the work went: ESS per single-target gradient (and its fraction of
0.5), the warm-up's share of time and gradients, mean vs executed leapfrog steps per iteration, cost
per single-target gradient. Stock NUTS is slow on N = 1000: it runs fewer draws (``--nuts-warmup``,
``--nuts-samples``); the comparable figure is ESS per second. The last lines are
``min_ess_per_s_ratio_vs_<sampler>=<x>`` (BatchedHMC over the other, total wall time), Pyro NUTS last.

The target, the sampler runs, their summaries and the report are library code in
:mod:`pyro_mmvae.experiments.subset_posterior_benchmark` (BlackJAX: :mod:`pyro_mmvae.experiments.blackjax_reference`);
this command picks the sizes and writes the results.

    python benchmarks/subset_posterior.py --quick                                   # ~2 minutes
    taskset -c 1 python benchmarks/subset_posterior.py --out benchmarks/results/subset_posterior_cpu
    taskset -c 1 python benchmarks/subset_posterior.py --expert-kind gaussian \
        --out benchmarks/results/subset_posterior_cpu_gaussian
    python benchmarks/subset_posterior.py --device cuda --num-points 10000 --skip-nuts     # on a GPU
"""

from __future__ import annotations

import argparse

import torch

from pyro_mmvae.experiments.blackjax_reference import blackjax_available
from pyro_mmvae.experiments.subset_posterior_benchmark import (
    benchmark_batched_hmc,
    benchmark_blackjax,
    benchmark_pyro_nuts,
    benchmark_target,
    diagnostics_cost,
    diagnostics_line,
    ess_ratios,
    experts_description,
    format_efficiency,
    format_table,
    markdown_report,
    ratio_lines,
    starting_state,
)
from pyro_mmvae.utils import atomic_write, atomic_write_json, command_line, resolve_device, run_record, to_jsonable

__all__ = ["main", "parse_args"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-points", "--n", dest="n", type=int, default=1000, help="data points (independent targets)")
    p.add_argument("--d", type=int, default=20, help="latent dimension")
    p.add_argument("--experts", type=int, default=3, help="|S|")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=250, help="BatchedHMC (and BlackJAX) warm-up iterations")
    p.add_argument("--samples", type=int, default=2000, help="BatchedHMC (and BlackJAX) draws per chain")
    p.add_argument("--nuts-warmup", type=int, default=200)
    p.add_argument("--nuts-samples", type=int, default=200)
    p.add_argument("--flow-strength", type=float, default=0.3, help="scale of the flows' random last layers")
    p.add_argument(
        "--expert-kind",
        default="flow",
        choices=["flow", "gaussian"],
        help="gaussian: Gaussian experts (closed form known), compared with BlackJAX too when it imports",
    )
    p.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="expert scales, log-uniform (default 0.05 5 for flows, 0.1 2 for Gaussians)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-nuts", action="store_true")
    p.add_argument("--skip-blackjax", action="store_true", help="Gaussian experts: do not run BlackJAX")
    p.add_argument("--arviz-targets", type=int, default=20, help="targets timed with ArviZ's own diagnostics")
    p.add_argument("--quick", action="store_true", help="N=200, 150+500 BatchedHMC, 60+60 NUTS (~2 minutes)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.warmup, args.samples, args.nuts_warmup, args.nuts_samples = 200, 150, 500, 60, 60
    return args


def run_samplers(args, target) -> tuple:
    """The results rows (BatchedHMC; Pyro NUTS unless ``--skip-nuts``; BlackJAX for Gaussian experts when it
    imports, unless ``--skip-blackjax``) and BatchedHMC's draws ``(C, S, N, D)``."""
    init, metric = starting_state(target, args.chains, args.seed)  # every sampler starts from these
    hmc, draws = benchmark_batched_hmc(
        target, init, metric, args.samples, args.warmup, args.chains, args.seed, args.progress
    )
    results = [hmc]
    if not args.skip_nuts:
        nuts, _ = benchmark_pyro_nuts(
            target, init, metric, args.nuts_samples, args.nuts_warmup, args.chains, args.seed, args.progress
        )
        results.append(nuts)
    if args.expert_kind == "gaussian" and not args.skip_blackjax:
        missing = blackjax_available()
        if missing:
            print(f"BlackJAX comparison skipped: {missing}")
        else:
            bj, _ = benchmark_blackjax(target, init, metric, args.samples, args.warmup, args.chains, args.seed)
            results.append(bj)
    return results, draws


def target_line(args, device) -> str:
    """The target and run settings in one line (printed first, and the report's ``target`` entry)."""
    return (
        f"N={args.n} D={args.d} |S|={args.experts} "
        f"{experts_description(args.expert_kind, args.flow_strength, args.scale_range)}, "
        f"{args.chains} chains, device={device}, dtype={args.dtype}, threads={args.threads}"
    )


def write_results(out: str, record: dict, header: str) -> None:
    """``<out>.json`` (the record) and ``<out>.md`` (the report)."""
    atomic_write_json(f"{out}.json", to_jsonable(record))
    text = markdown_report(record, header)
    atomic_write(f"{out}.md", lambda f: f.write(text), binary=False)


def main(argv=None) -> dict:
    """Run the benchmark, print its tables and ratios, write ``--out`` files; returns the results record."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    target = benchmark_target(
        args.n, args.d, args.experts, args.flow_strength, device, dtype, args.seed, args.expert_kind, args.scale_range
    )
    results, draws = run_samplers(args, target)
    diag_cost = diagnostics_cost(draws, results[0]["diagnostics_time_s"], args.arviz_targets)
    ratios = ess_ratios(results)

    header = target_line(args, device)
    print(header)
    print(format_table(results))
    print(format_efficiency(results))
    print(diagnostics_line(diag_cost))
    record = run_record(
        command_line("benchmarks/subset_posterior.py", argv),
        device=device,
        threads=args.threads,
        args=vars(args),
        results=results,
        diagnostics_cost=diag_cost,
        ratios=ratios,
        min_ess_per_s_ratio_vs_pyro_nuts=ratios["pyro_nuts"][0] if "pyro_nuts" in ratios else None,
    )
    if args.out:
        write_results(args.out, record, header)
    for line in ratio_lines(ratios):
        print(line)
    return record


if __name__ == "__main__":
    main()
