"""Subset-posterior sampling benchmark: :class:`~pyro_mmvae.infer.mcmc.BatchedHMC` against stock Pyro NUTS.

The target (:func:`benchmark_target`): N data points, each with |S| experts ``q_j(z | x_j)`` that are
masked autoregressive flows (fixed random weights, conditioned on a random per-point context) pushed
from a Gaussian whose location and scale are random per data point (scales log-uniform, as in the
tests' Gaussian targets), and a standard Normal prior in D dimensions:
``p(z | x_S) ∝ p(z) Π_j q_j(z | x_j) / p(z)^{|S|-1}`` (:class:`~pyro_mmvae.infer.subset_posterior.SubsetPosterior`).

Every sampler starts from the same points and the same initial diagonal metric and reports its own
gradient counts (warm-up and sampling); :func:`benchmark_batched_hmc`, :func:`benchmark_pyro_nuts` and,
for Gaussian experts, :func:`benchmark_blackjax` return one results row each (:func:`summarize_run`,
:func:`with_timings`, :func:`with_efficiency`), and :func:`markdown_report` turns a results record into
the results file.

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
    "IDEAL_ESS_PER_GRADIENT",
    "arviz_cost",
    "benchmark_batched_hmc",
    "benchmark_blackjax",
    "benchmark_pyro_nuts",
    "benchmark_target",
    "diagnostics_cost",
    "diagnostics_line",
    "experts_description",
    "flow_experts",
    "EFFICIENCY_COLUMNS",
    "format_efficiency",
    "format_table",
    "ratio_lines",
    "markdown_report",
    "ess_ratios",
    "starting_state",
    "summarize_run",
    "with_efficiency",
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
# expert scales are log-uniform in this range (the first expert's upper end is at most NARROW_EXPERT)
FLOW_SCALE_RANGE = (0.05, 5.0)
GAUSSIAN_SCALE_RANGE = (0.1, 2.0)
NARROW_EXPERT = 0.35


def flow_experts(n, d, num_experts, context_dim, strength, device, dtype, seed, kind="flow", scale_range=None):
    """``num_experts`` expert distributions with batch ``(n,)``, event ``(d,)``.

    Expert ``j`` pushes ``Normal(loc, scale)`` (``loc``, ``scale`` ``(n, d)``) through a MAF conditioned on a
    random context ``(n, context_dim)``, whose random last layers are multiplied by ``strength``.
    ``kind="gaussian"`` returns the flows' Gaussian bases alone (the same locations and scales).
    Scales are log-uniform in ``scale_range`` (default :data:`FLOW_SCALE_RANGE` for flows,
    :data:`GAUSSIAN_SCALE_RANGE` for Gaussians), the first expert's capped at :data:`NARROW_EXPERT`.
    Everything is drawn from ``seed``: the same arguments give the same experts.
    """
    if scale_range is None:
        scale_range = FLOW_SCALE_RANGE if kind == "flow" else GAUSSIAN_SCALE_RANGE
    low, high_all = (float(v) for v in scale_range)
    if not 0 < low < min(high_all, NARROW_EXPERT):
        raise ValueError(f"scale_range must satisfy 0 < low < min(high, {NARROW_EXPERT}), got {scale_range}")
    g = torch.Generator().manual_seed(seed)
    z_true = torch.randn(n, d, generator=g)
    experts = []
    for j in range(num_experts):
        # scales log-uniform in [low, high] (expert 0's capped at NARROW_EXPERT, which keeps every
        # product proper); each expert's mean is off the truth by about its own scale
        high = min(high_all, NARROW_EXPERT) if j == 0 else high_all
        scale = torch.empty(n, d).uniform_(math.log(low), math.log(high), generator=g).exp()
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


def benchmark_target(
    n, d, num_experts, strength, device, dtype, seed, kind="flow", scale_range=None
) -> SubsetPosterior:
    """The subset posterior of ``num_experts`` :func:`flow_experts` and a standard Normal prior.

    N = ``n`` targets in D = ``d``: ``log_prob`` maps ``(..., N, D)`` to ``(..., N)``.
    """
    experts = flow_experts(n, d, num_experts, CONTEXT_DIM, strength, device, dtype, seed, kind, scale_range)
    prior = dist.Normal(torch.zeros(d, device=device, dtype=dtype), 1.0).to_event(1)
    return SubsetPosterior(prior, experts)


def experts_description(kind: str, strength: float, scale_range=None) -> str:
    """What the experts of :func:`flow_experts` are, in words."""
    if scale_range is None:
        scale_range = FLOW_SCALE_RANGE if kind == "flow" else GAUSSIAN_SCALE_RANGE
    scales = f"scales {scale_range[0]:g}-{scale_range[1]:g}"
    if kind != "flow":
        return f"Gaussian experts ({scales})"
    hidden = "x".join(str(h) for h in FLOW_HIDDEN)
    return f"flow experts (MAF, {FLOW_BLOCKS} blocks, hidden {hidden}, strength {strength}, base {scales})"


def starting_state(target: SubsetPosterior, num_chains: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What both samplers start from: points ``(C, N, D)`` drawn after seeding Pyro with ``seed``, and the
    initial diagonal metric ``(N, D)`` (the target's approximate variance)."""
    pyro.set_rng_seed(seed)
    initial_params = target.initial_points(num_chains)
    return initial_params, target.approximate_variance()


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
    **kernel_kwargs,
):
    """One :func:`~pyro_mmvae.infer.mcmc.sample_subset_posterior` run, summarised.

    Args:
        initial_params: starting points ``(C, N, D)``; inverse_mass_matrix: initial diagonal metric ``(N, D)``.
        kernel_kwargs: :class:`~pyro_mmvae.infer.mcmc.BatchedHMC` options (its defaults otherwise).

    Returns:
        ``(row, draws)``: the results row (:func:`summarize_run`, :func:`with_timings`, :func:`with_efficiency`)
        and the draws ``(C, S, N, D)`` as a NumPy array.
    """
    run = sample_subset_posterior(
        target,
        num_samples,
        warmup_steps,
        num_chains,
        seed=seed,
        progress=progress,
        initial_params=initial_params,
        inverse_mass_matrix=inverse_mass_matrix,
        **kernel_kwargs,
    )
    calls = run.num_grad_evals  # the kernel's own count: every call is one gradient of all C x N targets
    row, draws = summarize_run("BatchedHMC", run, calls, num_chains)
    row["key"] = "batched_hmc"
    with_timings(row, run, calls, warmup_steps, num_samples, sequential_chains=1)
    with_efficiency(
        row,
        run,
        single_target_grads=calls * num_chains,
        warmup_single_target_grads=run.extra["warmup_grad_evals"] * num_chains,
        mean_steps=float(run.num_steps.float().mean()),
        executed_steps=float(run.extra["num_loop_steps"]),
    )
    return row, draws


def benchmark_pyro_nuts(
    target, initial_params, inverse_mass_matrix, num_samples, warmup_steps, num_chains, seed, progress=False
):
    """One :func:`~pyro_mmvae.infer.mcmc.run_pyro_nuts` run (chains one after another), summarised.

    Arguments and return value as :func:`benchmark_batched_hmc`.
    """
    run = run_pyro_nuts(
        target,
        num_samples,
        warmup_steps,
        num_chains,
        seed=seed,
        progress=progress,
        initial_params=initial_params,
        inverse_mass_matrix=inverse_mass_matrix,
    )
    calls = run.num_grad_evals  # each: one gradient of the joint potential of all N targets, one chain
    row, draws = summarize_run("Pyro NUTS (one plate)", run, calls, num_chains)
    row["key"] = "pyro_nuts"
    with_timings(row, run, calls, warmup_steps, num_samples, sequential_chains=num_chains)
    steps = (calls - run.extra["warmup_grad_evals"]) / (num_chains * num_samples)
    with_efficiency(row, run, calls, run.extra["warmup_grad_evals"], mean_steps=steps, executed_steps=steps)
    return row, draws


def benchmark_blackjax(target, initial_params, inverse_mass_matrix, num_samples, warmup_steps, num_chains, seed):
    """One :func:`~pyro_mmvae.experiments.blackjax_reference.run_blackjax_nuts` run (Gaussian targets), summarised.

    Arguments and return value as :func:`benchmark_batched_hmc`; the row also has ``compile_s``.
    """
    from .blackjax_reference import run_blackjax_nuts

    run = run_blackjax_nuts(target, initial_params, inverse_mass_matrix, num_samples, warmup_steps, seed=seed)
    n = target.num_data
    row, draws = summarize_run("BlackJAX NUTS (vmap, jit)", run, run.extra["executed_grad_evals"] // n, num_chains)
    with_timings(row, run, run.extra["executed_grad_evals"] / (n * num_chains), warmup_steps, num_samples, 1)
    with_efficiency(
        row,
        run,
        single_target_grads=run.extra["executed_grad_evals"] / n,
        warmup_single_target_grads=run.extra["executed_warmup_grad_evals"] / n,
        mean_steps=run.extra["sampling_grad_evals"] / (n * num_chains * num_samples),
        executed_steps=run.extra["executed_steps_per_sampling_iteration"],
    )
    row["compile_s"] = run.extra["compile_s"]
    row["key"] = "blackjax"
    row["own_grad_evals"] = run.num_grad_evals
    return row, draws


def with_timings(res: dict, run: HMCRun, calls: int, warmup: int, samples: int, sequential_chains: int) -> dict:
    """``res`` plus per-iteration and per-gradient times in ms.

    ``sequential_chains`` chains ran one after another (NUTS), 1 when the chains are a batch dimension (BatchedHMC).
    """
    res["warmup"], res["samples"] = warmup, samples
    res["ms_per_iteration"] = 1e3 * run.wall_time / (sequential_chains * (warmup + samples))
    res["ms_per_sampling_iteration"] = 1e3 * run.sampling_time / (sequential_chains * samples)
    res["ms_per_grad_eval"] = 1e3 * run.wall_time / calls
    return res


# ESS per single-target gradient of an ideal sampler on a near-Gaussian target: an independent draw
# every ~2 gradients
IDEAL_ESS_PER_GRADIENT = 0.5


def with_efficiency(
    res: dict,
    run: HMCRun,
    single_target_grads: float,
    warmup_single_target_grads: float,
    mean_steps: float,
    executed_steps: float,
) -> dict:
    """``res`` plus where the work went, per target (every figure counts gradients of ONE target and chain).

    Args:
        single_target_grads: gradients of one target summed over its chains, whole run.
        warmup_single_target_grads: the same, warm-up only.
        mean_steps: leapfrog steps per iteration a chain needed (its own trajectory), averaged.
        executed_steps: leapfrog steps per iteration the sampler executed for every chain (lockstep cost).

    Adds ``ess_per_grad`` (worst target's bulk ESS per single-target gradient) and its fraction of
    :data:`IDEAL_ESS_PER_GRADIENT`, ``sampling_ess_per_grad`` (sampling gradients only), the warm-up's
    share of wall time and of gradients, ``mean_steps``/``executed_steps`` and
    ``us_per_single_target_grad`` (wall time over every single-target gradient computed, all targets).
    """
    ess = res["min_target_ess_bulk"]
    sampling = single_target_grads - warmup_single_target_grads
    num_targets = run.samples.shape[2]
    res.update(
        ess_per_grad=ess / single_target_grads,
        ess_per_grad_fraction_of_ideal=ess / single_target_grads / IDEAL_ESS_PER_GRADIENT,
        sampling_ess_per_grad=ess / sampling if sampling > 0 else float("nan"),
        warmup_share_of_time=1.0 - run.sampling_time / run.wall_time,
        warmup_share_of_grads=warmup_single_target_grads / single_target_grads,
        mean_steps=mean_steps,
        executed_steps=executed_steps,
        us_per_single_target_grad=1e6 * run.wall_time / (single_target_grads * num_targets),
    )
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
    if run.diverging is not None:  # per target and chain (BatchedHMC, BlackJAX)
        out["divergent_transitions"] = int(run.diverging.sum())
        out["mean_leapfrog_steps"] = float(run.num_steps.float().mean())
        out["step_size_median"] = float(run.step_size.median())
    else:  # one joint trajectory per chain (Pyro NUTS)
        out["divergent_transitions"] = int(sum(len(d) for d in run.extra["divergences"]))
        out["step_size_per_chain"] = [float(s) for s in run.step_size]
    if run.accept_prob is not None:
        out["mean_accept_prob"] = float(run.accept_prob.float().mean())
    if "num_loop_steps" in run.extra:
        out["loop_steps_after_warmup"] = run.extra["num_loop_steps"]
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


def ess_ratios(results: list[dict]) -> dict[str, tuple[float, float]]:
    """Worst-target ESS per second, BatchedHMC (row 0) over each other sampler, by the other's ``key``:
    ``{key: (total wall time, sampling only)}`` (``pyro_nuts``, ``blackjax``)."""
    hmc, out = results[0], {}
    for other in results[1:]:
        out[other["key"]] = (
            hmc["min_ess_per_s"] / other["min_ess_per_s"],
            hmc["min_ess_per_sampling_s"] / other["min_ess_per_sampling_s"],
        )
    return out


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
# where the work goes, per sampler: (column, format)
EFFICIENCY_COLUMNS = (
    ("sampler", "{}"),
    ("ess_per_grad", "{:.4f}"),
    ("ess_per_grad_fraction_of_ideal", "{:.3f}"),
    ("sampling_ess_per_grad", "{:.4f}"),
    ("warmup_share_of_time", "{:.2f}"),
    ("warmup_share_of_grads", "{:.2f}"),
    ("mean_steps", "{:.2f}"),
    ("executed_steps", "{:.2f}"),
    ("us_per_single_target_grad", "{:.2f}"),
)


def format_efficiency(results: list[dict]) -> str:
    """Markdown table of :func:`with_efficiency`'s figures, one line per sampler."""
    lines = ["| " + " | ".join(c for c, _ in EFFICIENCY_COLUMNS) + " |", "|" + "---|" * len(EFFICIENCY_COLUMNS)]
    for r in results:
        lines.append("| " + " | ".join(f.format(r[c]) for c, f in EFFICIENCY_COLUMNS) + " |")
    return "\n".join(lines)


def ratio_lines(ratios: dict[str, tuple[float, float]]) -> list[str]:
    """``min_ess_per_s_ratio_vs_<key>=<x>`` lines (the Pyro NUTS one last), with the sampling-phase ratios."""
    keys = sorted(ratios, key=lambda k: k == "pyro_nuts")
    lines = [f"sampling phase only, vs {k}: {ratios[k][1]:.1f}" for k in keys]
    return lines + [f"min_ess_per_s_ratio_vs_{k}={ratios[k][0]:.2f}" for k in keys]


def markdown_report(record: dict, header: str) -> str:
    """The results file of a run record (:func:`~pyro_mmvae.utils.run_record` with ``args``, ``results``,
    ``diagnostics_cost`` and ``ratios``), given the target line."""
    a, m, results = record["args"], record["machine"], record["results"]
    hmc = results[0]
    budgets = [f"BatchedHMC: {a['warmup']} warm-up + {a['samples']} draws per chain, chains batched in one run"]
    for r in results[1:]:
        chains = "one after another" if r["key"] == "pyro_nuts" else "vmapped with the targets"
        budgets.append(f"{r['sampler']}: {r['warmup']} warm-up + {r['samples']} draws per chain, chains {chains}")
    md = [
        "# Subset-posterior sampling: " + " vs ".join(r["sampler"] for r in results),
        "",
        f"- command: `{record['command']}`",
        f"- date: {record['date']}",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPU cores, {m['platform']}; torch {m['torch']}, pyro {m['pyro']}",
        f"- target: {header}",
        *[f"- {b}" for b in budgets],
        "- every sampler starts from the same points and the same initial diagonal metric; ESS and R-hat by one "
        "vectorised implementation (rank-normalised split R-hat, bulk and tail ESS, as ArviZ)",
        "",
        format_table(results),
        "",
        "Where the work goes (gradients of one target and chain; `ess_per_grad`: worst target's bulk ESS per "
        f"gradient it was charged, ideal ≈ {IDEAL_ESS_PER_GRADIENT}; `executed_steps`: leapfrog steps per "
        "sampling iteration computed for every chain, `mean_steps`: those a chain needed):",
        "",
        format_efficiency(results),
        "",
        f"BatchedHMC after warm-up: {hmc['loop_steps_after_warmup']} leapfrog steps per iteration, mean "
        f"acceptance {hmc['mean_accept_prob']:.3f}, median step size {hmc['step_size_median']:.3f}, "
        f"{hmc['ms_per_sampling_iteration']:.1f} ms per sampling iteration, "
        f"{hmc['ms_per_grad_eval']:.2f} ms per gradient of all {a['chains']}x{a['n']} targets.",
    ]
    for r in results[1:]:
        if r["key"] == "blackjax":
            md.append(f"BlackJAX: compile time {r['compile_s']:.1f} s (not in its wall time).")
    cost = record["diagnostics_cost"]
    md += [
        "",
        f"Diagnostics of {cost['series']} series (R-hat, bulk and tail ESS): vectorised "
        f"{cost['vectorised_s']:.1f} s; ArviZ {cost['arviz_s_for_targets']:.2f} s for {cost['arviz_targets']} "
        f"targets, ~{cost['arviz_s_extrapolated']:.0f} s extrapolated to all.",
        "",
        *ratio_lines(record["ratios"]),
    ]
    return "\n".join(md) + "\n"
