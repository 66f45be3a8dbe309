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

    python benchmarks/subset_posterior.py --quick                       # ~2 minutes
    nice python benchmarks/subset_posterior.py --out benchmarks/results/subset_posterior_cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from pyro_mmvae.diagnostics import diagnose, import_arviz
from pyro_mmvae.infer.hmc import run_pyro_nuts, sample_subset_posterior
from pyro_mmvae.infer.subset_posterior import SubsetPosterior
from pyro_mmvae.nn.flows import ConditionalFlow
from pyro_mmvae.utils import resolve_device


def flow_experts(n, d, num_experts, context_dim, strength, device, dtype, seed, kind="flow"):
    """``num_experts`` expert distributions with batch ``(n,)``, event ``(d,)``.

    ``kind="gaussian"`` returns the flows' Gaussian bases alone (the same locations and scales).
    """
    g = torch.Generator().manual_seed(seed)
    z_true = torch.randn(n, d, generator=g)
    experts = []
    for j in range(num_experts):
        # the tests' |S| = 3 target: scales log-uniform in [0.05, 5] (expert 0 in [0.05, 0.35], which
        # keeps every product proper); each expert's mean is off the truth by about its own scale
        high = 0.35 if j == 0 else 5.0
        scale = torch.empty(n, d).uniform_(math.log(0.05), math.log(high), generator=g).exp()
        loc = z_true + scale * torch.randn(n, d, generator=g)
        context = torch.randn(n, context_dim, generator=g)
        base = dist.Normal(loc.to(device, dtype), scale.to(device, dtype)).to_event(1)
        torch.manual_seed(seed + 100 + j)
        if kind == "gaussian":
            experts.append(base)
            continue
        flow = ConditionalFlow(
            dim=d,
            kind="maf",
            num_blocks=2,
            hidden=(64, 64),
            context_dim=context_dim,
            seed=seed + j,
            identity_init=False,
        )
        with torch.no_grad():  # tame the random last layers: non-Gaussian, but not pathological
            for net in flow.nets:
                net.layers[-1].weight.mul_(strength)
                net.layers[-1].bias.mul_(strength)
            flow = flow.to(device, dtype).requires_grad_(False)
            experts.append(flow(base, context=context.to(device, dtype)))
    return experts


class CountingTarget:
    """Wraps a target and counts ``log_prob`` calls (= gradient evaluations of the whole batch)."""

    def __init__(self, target):
        self.target, self.calls = target, 0

    def log_prob(self, z):
        self.calls += 1
        return self.target.log_prob(z)

    def __getattr__(self, name):
        return getattr(self.target, name)


def with_timings(res, run, calls, warmup, samples, sequential_chains):
    """``res`` plus per-iteration and per-gradient times; ``sequential_chains`` chains ran one after another
    (NUTS), 1 when the chains are a batch dimension (BatchedHMC)."""
    res["warmup"], res["samples"] = warmup, samples
    res["ms_per_iteration"] = 1e3 * run.wall_time / (sequential_chains * (warmup + samples))
    res["ms_per_sampling_iteration"] = 1e3 * run.sampling_time / (sequential_chains * samples)
    res["ms_per_grad_eval"] = 1e3 * run.wall_time / calls
    return res


def summarize(name, run, calls, num_chains):
    x = run.samples.numpy()
    t0 = time.perf_counter()
    diag = diagnose(x)
    diag_time = time.perf_counter() - t0
    per_target_ess = diag["ess_bulk"].min(-1)  # (N,)
    min_ess = float(np.nanmin(per_target_ess))
    out = {
        "sampler": name,
        "chains": num_chains,
        "draws_per_chain": x.shape[1],
        "wall_time_s": run.wall_time,
        "sampling_time_s": run.sampling_time,
        "grad_evals": calls,
        "min_target_ess_bulk": min_ess,
        "median_target_ess_bulk": float(np.nanmedian(per_target_ess)),
        "min_target_ess_tail": float(np.nanmin(diag["ess_tail"].min(-1))),
        "max_rhat": float(np.nanmax(diag["rhat"])),
        "min_ess_per_s": min_ess / run.wall_time,
        "min_ess_per_sampling_s": min_ess / run.sampling_time,
        "diagnostics_time_s": diag_time,
    }
    if run.diverging is not None:
        out["divergent_transitions"] = int(run.diverging.sum())
        out["mean_accept_prob"] = float(run.accept_prob.float().mean())
        out["mean_leapfrog_steps"] = float(run.num_steps.float().mean())
        out["loop_steps_after_warmup"] = run.extra["num_loop_steps"]
        out["step_size_median"] = float(run.step_size.median())
    else:
        out["divergent_transitions"] = int(sum(len(d) for d in run.extra["divergences"]))
        out["step_size_per_chain"] = [float(s) for s in run.step_size]
    return out, x


def arviz_cost(x, num_targets):
    """Seconds ArviZ needs for rhat + bulk ESS + tail ESS of ``num_targets`` targets (to extrapolate)."""
    az = import_arviz()
    sub = x[:, :, :num_targets]
    idata = az.from_dict(posterior={"z": sub}, dims={"z": ["target", "zdim"]})
    t0 = time.perf_counter()
    az.rhat(idata)
    az.ess(idata, method="bulk")
    az.ess(idata, method="tail")
    return time.perf_counter() - t0


def main(argv=None):
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
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)

    experts = flow_experts(
        args.n, args.d, args.experts, 8, args.flow_strength, device, dtype, args.seed, args.expert_kind
    )
    prior = dist.Normal(torch.zeros(args.d, device=device, dtype=dtype), 1.0).to_event(1)
    target = SubsetPosterior(prior, experts)
    pyro.set_rng_seed(args.seed)
    init = target.initial_points(args.chains)
    metric = target.approximate_variance()  # both samplers start from this diagonal metric
    results = []

    counted = CountingTarget(target)
    run = sample_subset_posterior(
        counted,
        args.samples,
        args.warmup,
        args.chains,
        seed=args.seed,
        progress=args.progress,
        initial_params=init,
        inverse_mass_matrix=metric,
        pool_metric_dim=0 if args.pool_metric else None,
    )
    res, x_hmc = summarize(
        "BatchedHMC" + (" (pooled metric)" if args.pool_metric else ""), run, counted.calls, args.chains
    )
    results.append(with_timings(res, run, counted.calls, args.warmup, args.samples, sequential_chains=1))

    if not args.skip_nuts:
        counted = CountingTarget(target)
        run = run_pyro_nuts(
            counted,
            args.nuts_samples,
            args.nuts_warmup,
            args.chains,
            seed=args.seed,
            progress=args.progress,
            initial_params=init,
            inverse_mass_matrix=metric,
        )
        res, _ = summarize("Pyro NUTS (one plate)", run, counted.calls, args.chains)
        results.append(
            with_timings(res, run, counted.calls, args.nuts_warmup, args.nuts_samples, sequential_chains=args.chains)
        )

    k = min(args.arviz_targets, args.n)
    az_time = arviz_cost(x_hmc, k)
    diag_cost = {
        "series": args.n * args.d,
        "vectorised_s": results[0]["diagnostics_time_s"],
        "arviz_s_for_targets": az_time,
        "arviz_targets": k,
        "arviz_s_extrapolated": az_time * args.n / k,
    }

    cols = [
        ("sampler", "{}"),
        ("wall_time_s", "{:.1f}"),
        ("sampling_time_s", "{:.1f}"),
        ("grad_evals", "{}"),
        ("ms_per_iteration", "{:.1f}"),
        ("min_target_ess_bulk", "{:.1f}"),
        ("median_target_ess_bulk", "{:.0f}"),
        ("min_target_ess_tail", "{:.1f}"),
        ("max_rhat", "{:.3f}"),
        ("divergent_transitions", "{}"),
        ("min_ess_per_s", "{:.3f}"),
        ("min_ess_per_sampling_s", "{:.3f}"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append("| " + " | ".join(f.format(r[c]) for c, f in cols) + " |")
    table = "\n".join(lines)
    experts_desc = (
        f"flow experts (MAF, 2 blocks, hidden 64x64, strength {args.flow_strength})"
        if args.expert_kind == "flow"
        else "Gaussian experts"
    )
    header = (
        f"N={args.n} D={args.d} |S|={args.experts} {experts_desc}, {args.chains} chains, "
        f"device={device}, dtype={args.dtype}, threads={args.threads}"
    )
    print(header)
    print(table)
    print(
        f"diagnostics of {diag_cost['series']} series: vectorised {diag_cost['vectorised_s']:.2f} s; ArviZ "
        f"{diag_cost['arviz_s_for_targets']:.2f} s for {k} targets "
        f"-> ~{diag_cost['arviz_s_extrapolated']:.0f} s for all"
    )
    ratio = None
    if len(results) == 2:
        ratio = results[0]["min_ess_per_s"] / results[1]["min_ess_per_s"]
        ratio_sampling = results[0]["min_ess_per_sampling_s"] / results[1]["min_ess_per_sampling_s"]
        print(f"ratio (sampling phase only): {ratio_sampling:.1f}")
    if args.out:
        record = {
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, {platform.platform()}",
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "args": vars(args),
            "results": results,
            "diagnostics_cost": diag_cost,
            "min_ess_per_s_ratio_vs_pyro_nuts": ratio,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(record, indent=2))
        hmc = results[0]
        md = [
            "# Subset-posterior sampling: BatchedHMC vs stock Pyro NUTS",
            "",
            f"- command: `{record['command']}`",
            f"- date: {record['date']}",
            f"- machine: {record['machine']} (shared with other jobs); "
            f"torch {torch.__version__}, pyro {pyro.__version__}",
            f"- target: {header}",
            f"- BatchedHMC: {args.warmup} warmup + {args.samples} draws per chain, chains batched in one run; "
            f"Pyro NUTS: {args.nuts_warmup} warmup + {args.nuts_samples} draws per chain, chains one after another; "
            "both from the same starting points and the same initial diagonal metric",
            "",
            table,
            "",
            f"BatchedHMC after warmup: {hmc['loop_steps_after_warmup']} leapfrog steps per iteration for all targets "
            f"(mean per target {hmc['mean_leapfrog_steps']:.2f}), mean acceptance {hmc['mean_accept_prob']:.3f}, "
            f"{hmc['ms_per_sampling_iteration']:.1f} ms per sampling iteration, "
            f"{hmc['ms_per_grad_eval']:.2f} ms per gradient of all {args.chains}x{args.n} targets.",
        ]
        if len(results) == 2:
            nuts = results[1]
            md.append(
                f"Pyro NUTS: {nuts['grad_evals'] / (args.chains * (args.nuts_warmup + args.nuts_samples)):.1f} "
                f"gradients per iteration, {nuts['ms_per_iteration']:.1f} ms per iteration, "
                f"{nuts['ms_per_grad_eval']:.2f} ms per gradient of {args.n} targets."
            )
            # where the speed-up comes from: work per unit of worst-target ESS, in gradients of one target
            # (the CPU's cost model: a gradient of B targets costs ~B times one) and in batched calls
            # (a GPU's, while the batch is small against the device: a call costs ~the same for any B)
            per = {r["sampler"]: (r["grad_evals"] / r["min_target_ess_bulk"], r["ms_per_grad_eval"]) for r in results}
            (h_calls, h_ms), (n_calls, n_ms) = per[hmc["sampler"]], per[nuts["sampler"]]
            batch = args.chains * args.n
            md += [
                "",
                f"Work per unit of worst-target bulk ESS: BatchedHMC {h_calls:.2f} batched gradient calls "
                f"({h_calls * batch:.3g} single-target gradients), Pyro NUTS {n_calls:.1f} calls "
                f"({n_calls * args.n:.3g} single-target gradients): {n_calls / h_calls:.1f}x fewer calls, "
                f"{n_calls * args.n / (h_calls * batch):.1f}x fewer single-target gradients. Cost per single-target "
                f"gradient here: {1e3 * h_ms / batch:.2f} us vs {1e3 * n_ms / args.n:.2f} us.",
            ]
        md += [
            "",
            f"Diagnostics of {diag_cost['series']} series (R-hat, bulk and tail ESS): vectorised "
            f"{diag_cost['vectorised_s']:.1f} s; ArviZ {diag_cost['arviz_s_for_targets']:.2f} s for {k} targets, "
            f"~{diag_cost['arviz_s_extrapolated']:.0f} s extrapolated to all.",
            "",
            f"min_ess_per_s_ratio_vs_pyro_nuts={ratio:.2f}" if ratio is not None else "",
        ]
        out.with_suffix(".md").write_text("\n".join(md) + "\n")
    if ratio is not None:
        print(f"min_ess_per_s_ratio_vs_pyro_nuts={ratio:.2f}")


if __name__ == "__main__":
    main()
