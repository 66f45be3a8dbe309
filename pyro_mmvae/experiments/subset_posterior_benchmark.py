"""Subset-posterior sampling benchmark: :class:`~pyro_mmvae.infer.mcmc.BatchedHMC` against stock Pyro NUTS.

The target (:func:`benchmark_target`): N data points, each with |S| experts ``q_j(z | x_j)`` that are
masked autoregressive flows (fixed random weights, conditioned on a random per-point context) pushed
from a Gaussian whose location and scale are random per data point (scales log-uniform, as in the
tests' Gaussian targets), and a standard Normal prior in D dimensions:
``p(z | x_S) ∝ p(z) Π_j q_j(z | x_j) / p(z)^{|S|-1}`` (:class:`~pyro_mmvae.infer.subset_posterior.SubsetPosterior`).

Both samplers start from the same points and the same initial diagonal metric and count their
gradient evaluations through :class:`CountingTarget`; :func:`benchmark_batched_hmc` and
:func:`benchmark_pyro_nuts` return one results row each (:func:`summarize_run`), and
:func:`markdown_report` turns a results record into the results file.

The command is ``benchmarks/subset_posterior.py``; its results are in
``benchmarks/results/subset_posterior_cpu.md``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from ..diagnostics import diagnose, import_arviz
from ..infer.mcmc import HMCRun, run_pyro_nuts, sample_subset_posterior
from ..infer.subset_posterior import SubsetPosterior
from ..nn.flows import ConditionalFlow

__all__ = [
    "CONTEXT_DIM",
    "RESULT_COLUMNS",
    "CountingTarget",
    "arviz_cost",
    "benchmark_batched_hmc",
    "benchmark_pyro_nuts",
    "benchmark_target",
    "diagnostics_cost",
    "diagnostics_line",
    "experts_description",
    "flow_experts",
    "format_table",
    "markdown_report",
    "ess_ratios",
    "starting_state",
    "summarize_run",
    "with_timings",
]

CONTEXT_DIM = 8  # per-point context of the conditional flows
FLOW_BLOCKS = 2
FLOW_HIDDEN = (64, 64)

# the results table: (column, format)
RESULT_COLUMNS = (
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
)


# ------------------------------------------------------------------------------------------------ target
def flow_experts(n, d, num_experts, context_dim, strength, device, dtype, seed, kind="flow"):
    """``num_experts`` expert distributions with batch ``(n,)``, event ``(d,)``.

    Expert ``j`` pushes ``Normal(loc, scale)`` (``loc``, ``scale`` ``(n, d)``) through a MAF conditioned on a
    random context ``(n, context_dim)``, whose random last layers are multiplied by ``strength``.
    ``kind="gaussian"`` returns the flows' Gaussian bases alone (the same locations and scales).
    Everything is drawn from ``seed``: the same arguments give the same experts.
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
        experts.append(_random_flow(base, context, d, strength, seed + j, device, dtype))
    return experts


def _random_flow(base, context, d, strength, seed, device, dtype):
    """``base`` (batch ``(n,)``, event ``(d,)``) pushed through a MAF with random weights, given ``context``."""
    flow = ConditionalFlow(
        dim=d,
        kind="maf",
        num_blocks=FLOW_BLOCKS,
        hidden=FLOW_HIDDEN,
        context_dim=context.shape[-1],
        seed=seed,
        identity_init=False,
    )
    with torch.no_grad():  # tame the random last layers: non-Gaussian, but not pathological
        for net in flow.nets:
            net.layers[-1].weight.mul_(strength)
            net.layers[-1].bias.mul_(strength)
        flow = flow.to(device, dtype).requires_grad_(False)
        return flow(base, context=context.to(device, dtype))


def benchmark_target(n, d, num_experts, strength, device, dtype, seed, kind="flow") -> SubsetPosterior:
    """The subset posterior of ``num_experts`` :func:`flow_experts` and a standard Normal prior.

    N = ``n`` targets in D = ``d``: ``log_prob`` maps ``(..., N, D)`` to ``(..., N)``.
    """
    experts = flow_experts(n, d, num_experts, CONTEXT_DIM, strength, device, dtype, seed, kind)
    prior = dist.Normal(torch.zeros(d, device=device, dtype=dtype), 1.0).to_event(1)
    return SubsetPosterior(prior, experts)


def experts_description(kind: str, strength: float) -> str:
    """What the experts of :func:`flow_experts` are, in words."""
    if kind != "flow":
        return "Gaussian experts"
    hidden = "x".join(str(h) for h in FLOW_HIDDEN)
    return f"flow experts (MAF, {FLOW_BLOCKS} blocks, hidden {hidden}, strength {strength})"


def starting_state(target: SubsetPosterior, num_chains: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What both samplers start from: points ``(C, N, D)`` drawn after seeding Pyro with ``seed``, and the
    initial diagonal metric ``(N, D)`` (the target's approximate variance)."""
    pyro.set_rng_seed(seed)
    initial_params = target.initial_points(num_chains)
    return initial_params, target.approximate_variance()


class CountingTarget:
    """Wraps a target and counts ``log_prob`` calls (= gradient evaluations of the whole ``(C, N, D)`` batch)."""

    def __init__(self, target):
        self.target, self.calls = target, 0

    def log_prob(self, z):
        self.calls += 1
        return self.target.log_prob(z)

    def __getattr__(self, name):
        return getattr(self.target, name)


# ---------------------------------------------------------------------------------------------- samplers
def benchmark_batched_hmc(
    target,
    initial_params,
    inverse_mass_matrix,
    num_samples,
    warmup_steps,
    num_chains,
    seed,
    progress=False,
    pool_metric=False,
):
    """One :func:`~pyro_mmvae.infer.mcmc.sample_subset_posterior` run, summarised.

    Args:
        initial_params: starting points ``(C, N, D)``; inverse_mass_matrix: initial diagonal metric ``(N, D)``.
        pool_metric: pool each adaptation window's metric over the C chains.

    Returns:
        ``(row, draws)``: the results row (:func:`summarize_run` plus :func:`with_timings`) and the draws
        ``(C, S, N, D)`` as a NumPy array.
    """
    counted = CountingTarget(target)
    run = sample_subset_posterior(
        counted,
        num_samples,
        warmup_steps,
        num_chains,
        seed=seed,
        progress=progress,
        initial_params=initial_params,
        inverse_mass_matrix=inverse_mass_matrix,
        pool_metric_dim=0 if pool_metric else None,
    )
    name = "BatchedHMC" + (" (pooled metric)" if pool_metric else "")
    row, draws = summarize_run(name, run, counted.calls, num_chains)
    return with_timings(row, run, counted.calls, warmup_steps, num_samples, sequential_chains=1), draws


def benchmark_pyro_nuts(
    target, initial_params, inverse_mass_matrix, num_samples, warmup_steps, num_chains, seed, progress=False
):
    """One :func:`~pyro_mmvae.infer.mcmc.run_pyro_nuts` run (chains one after another), summarised.

    Arguments and return value as :func:`benchmark_batched_hmc`.
    """
    counted = CountingTarget(target)
    run = run_pyro_nuts(
        counted,
        num_samples,
        warmup_steps,
        num_chains,
        seed=seed,
        progress=progress,
        initial_params=initial_params,
        inverse_mass_matrix=inverse_mass_matrix,
    )
    row, draws = summarize_run("Pyro NUTS (one plate)", run, counted.calls, num_chains)
    timed = with_timings(row, run, counted.calls, warmup_steps, num_samples, sequential_chains=num_chains)
    return timed, draws


def with_timings(res: dict, run: HMCRun, calls: int, warmup: int, samples: int, sequential_chains: int) -> dict:
    """``res`` plus per-iteration and per-gradient times in ms.

    ``sequential_chains`` chains ran one after another (NUTS), 1 when the chains are a batch dimension (BatchedHMC).
    """
    res["warmup"], res["samples"] = warmup, samples
    res["ms_per_iteration"] = 1e3 * run.wall_time / (sequential_chains * (warmup + samples))
    res["ms_per_sampling_iteration"] = 1e3 * run.sampling_time / (sequential_chains * samples)
    res["ms_per_grad_eval"] = 1e3 * run.wall_time / calls
    return res


def summarize_run(name: str, run: HMCRun, calls: int, num_chains: int) -> tuple[dict, np.ndarray]:
    """A results row for ``run`` (draws ``(C, S, N, D)``) and its draws as a NumPy array.

    A target's ESS is its minimum over the D dimensions (pooled over the C chains); the row reports the
    minimum and median over the N targets, that minimum per second of wall time, max R-hat and divergences,
    plus BatchedHMC's per-target statistics or NUTS's per-chain step sizes.
    """
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


# ----------------------------------------------------------------------------------------------- summary
def arviz_cost(x: np.ndarray, num_targets: int) -> float:
    """Seconds ArviZ needs for rhat + bulk ESS + tail ESS of the first ``num_targets`` targets of ``x``.

    ``x``: draws ``(C, S, N, D)``; the timing is extrapolated to all N by :func:`diagnostics_cost`.
    """
    az = import_arviz()
    sub = x[:, :, :num_targets]
    idata = az.from_dict(posterior={"z": sub}, dims={"z": ["target", "zdim"]})
    t0 = time.perf_counter()
    az.rhat(idata)
    az.ess(idata, method="bulk")
    az.ess(idata, method="tail")
    return time.perf_counter() - t0


def diagnostics_cost(x: np.ndarray, vectorised_s: float, arviz_targets: int) -> dict:
    """The vectorised diagnostics' time against ArviZ's on ``arviz_targets`` targets, extrapolated to all N.

    ``x``: draws ``(C, S, N, D)``; ``vectorised_s``: seconds :func:`~pyro_mmvae.diagnostics.diagnose` took on all.
    """
    n, d = x.shape[2], x.shape[3]
    k = min(arviz_targets, n)
    az_time = arviz_cost(x, k)
    return {
        "series": n * d,
        "vectorised_s": vectorised_s,
        "arviz_s_for_targets": az_time,
        "arviz_targets": k,
        "arviz_s_extrapolated": az_time * n / k,
    }


def ess_ratios(results: list[dict]) -> tuple[float | None, float | None]:
    """Worst-target ESS per second, BatchedHMC (row 0) over NUTS (row 1): ``(total wall time, sampling only)``."""
    if len(results) != 2:
        return None, None
    hmc, nuts = results
    return (
        hmc["min_ess_per_s"] / nuts["min_ess_per_s"],
        hmc["min_ess_per_sampling_s"] / nuts["min_ess_per_sampling_s"],
    )


def format_table(results: list[dict]) -> str:
    """Markdown table of the results rows, one line per sampler (columns :data:`RESULT_COLUMNS`)."""
    lines = ["| " + " | ".join(c for c, _ in RESULT_COLUMNS) + " |", "|" + "---|" * len(RESULT_COLUMNS)]
    for r in results:
        lines.append("| " + " | ".join(f.format(r[c]) for c, f in RESULT_COLUMNS) + " |")
    return "\n".join(lines)


def diagnostics_line(cost: dict) -> str:
    """One printed line: the vectorised diagnostics' time against ArviZ's."""
    return (
        f"diagnostics of {cost['series']} series: vectorised {cost['vectorised_s']:.2f} s; ArviZ "
        f"{cost['arviz_s_for_targets']:.2f} s for {cost['arviz_targets']} targets "
        f"-> ~{cost['arviz_s_extrapolated']:.0f} s for all"
    )


# -------------------------------------------------------------------------------------------- the report
def markdown_report(record: dict, header: str, table: str) -> str:
    """The results file of a run record (:func:`~pyro_mmvae.utils.run_record` with ``args``, ``results``,
    ``diagnostics_cost`` and ``min_ess_per_s_ratio_vs_pyro_nuts``), given the target line and the table."""
    a, m, results = record["args"], record["machine"], record["results"]
    hmc = results[0]
    md = [
        "# Subset-posterior sampling: BatchedHMC vs stock Pyro NUTS",
        "",
        f"- command: `{record['command']}`",
        f"- date: {record['date']}",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPU cores, {m['platform']} (shared with other jobs); "
        f"torch {m['torch']}, pyro {m['pyro']}",
        f"- target: {header}",
        f"- BatchedHMC: {a['warmup']} warmup + {a['samples']} draws per chain, chains batched in one run; "
        f"Pyro NUTS: {a['nuts_warmup']} warmup + {a['nuts_samples']} draws per chain, chains one after another; "
        "both from the same starting points and the same initial diagonal metric",
        "",
        table,
        "",
        f"BatchedHMC after warmup: {hmc['loop_steps_after_warmup']} leapfrog steps per iteration for all targets "
        f"(mean per target {hmc['mean_leapfrog_steps']:.2f}), mean acceptance {hmc['mean_accept_prob']:.3f}, "
        f"{hmc['ms_per_sampling_iteration']:.1f} ms per sampling iteration, "
        f"{hmc['ms_per_grad_eval']:.2f} ms per gradient of all {a['chains']}x{a['n']} targets.",
    ]
    if len(results) == 2:
        md += _nuts_comparison(hmc, results[1], a)
    cost, ratio = record["diagnostics_cost"], record["min_ess_per_s_ratio_vs_pyro_nuts"]
    md += [
        "",
        f"Diagnostics of {cost['series']} series (R-hat, bulk and tail ESS): vectorised "
        f"{cost['vectorised_s']:.1f} s; ArviZ {cost['arviz_s_for_targets']:.2f} s for {cost['arviz_targets']} "
        f"targets, ~{cost['arviz_s_extrapolated']:.0f} s extrapolated to all.",
        "",
        f"min_ess_per_s_ratio_vs_pyro_nuts={ratio:.2f}" if ratio is not None else "",
    ]
    return "\n".join(md) + "\n"


def _nuts_comparison(hmc: dict, nuts: dict, a: dict) -> list[str]:
    """The report's lines on Pyro NUTS and on where BatchedHMC's speed-up comes from."""
    per_iteration = nuts["grad_evals"] / (a["chains"] * (a["nuts_warmup"] + a["nuts_samples"]))
    lines = [
        f"Pyro NUTS: {per_iteration:.1f} gradients per iteration, {nuts['ms_per_iteration']:.1f} ms per iteration, "
        f"{nuts['ms_per_grad_eval']:.2f} ms per gradient of {a['n']} targets."
    ]
    # where the speed-up comes from: work per unit of worst-target ESS, in gradients of one target
    # (the CPU's cost model: a gradient of B targets costs ~B times one) and in batched calls
    # (a GPU's, while the batch is small against the device: a call costs ~the same for any B)
    h_calls, h_ms = hmc["grad_evals"] / hmc["min_target_ess_bulk"], hmc["ms_per_grad_eval"]
    n_calls, n_ms = nuts["grad_evals"] / nuts["min_target_ess_bulk"], nuts["ms_per_grad_eval"]
    batch, n = a["chains"] * a["n"], a["n"]
    return lines + [
        "",
        f"Work per unit of worst-target bulk ESS: BatchedHMC {h_calls:.2f} batched gradient calls "
        f"({h_calls * batch:.3g} single-target gradients), Pyro NUTS {n_calls:.1f} calls "
        f"({n_calls * n:.3g} single-target gradients): {n_calls / h_calls:.1f}x fewer calls, "
        f"{n_calls * n / (h_calls * batch):.1f}x fewer single-target gradients. Cost per single-target "
        f"gradient here: {1e3 * h_ms / batch:.2f} us vs {1e3 * n_ms / n:.2f} us.",
    ]
