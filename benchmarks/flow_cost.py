"""Cost of the flow experts' two directions: log_prob + grad at ARBITRARY z, and sampling.

The subset-posterior sampler evaluates log q_j(z | x_j) and its gradient at arbitrary z on every
leapfrog step; stage-2 training evaluates it at joint-encoder samples. Sampling q_j is only needed
for single-modality conditional generation. This script times both directions for every flow kind
of :class:`pyro_mmvae.nn.flows.ConditionalFlow` (and for Pyro's IAF direction, for comparison)
with the encoder outputs fixed, exactly as a sampler sees them.

    python benchmarks/flow_cost.py                       # prints a markdown table
    python benchmarks/flow_cost.py --out benchmarks/results/flow_cost_cpu.md

Timings: minimum and median over ``--repeats`` runs after a warm-up, with ``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import AutoRegressiveNN

from pyro_mmvae.nn.flows import ConditionalFlow
from pyro_mmvae.utils import atomic_write, command_line, run_record


def _time_ms(fn, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(minimum, median) wall time of ``fn`` in ms; the minimum is the least disturbed by other jobs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times), 1e3 * statistics.median(times)


def _make_q(kind: str, dim: int, n: int, blocks: int, hidden, conditional: bool, seed: int):
    """A flow expert with fixed (already computed) encoder outputs: batch (n,), event (dim,)."""
    g = torch.Generator().manual_seed(seed)
    loc, scale = torch.randn(n, dim, generator=g), 0.5 + torch.rand(n, dim, generator=g)
    base = dist.Normal(loc, scale).to_event(1)
    context = torch.randn(n, 2 * dim, generator=g) if conditional else None
    torch.manual_seed(seed)
    if kind == "gaussian":
        return base
    if kind == "iaf (pyro forward)":
        return dist.TransformedDistribution(
            base, [T.AffineAutoregressive(AutoRegressiveNN(dim, list(hidden))) for _ in range(blocks)]
        )
    flow = ConditionalFlow(
        dim, kind, blocks, hidden, context_dim=2 * dim if conditional else 0, seed=seed, identity_init=False
    )
    return flow(base, context)


def measure(
    kind: str, dim: int, n: int, chains: int, blocks: int, hidden, conditional: bool, repeats: int, seed: int = 0
):
    q = _make_q(kind, dim, n, blocks, hidden, conditional, seed)
    shape = (chains, n, dim) if chains > 1 else (n, dim)
    z0 = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 1))

    def log_prob_and_grad():
        z = z0.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(q.log_prob(z).sum(), z)
        return grad

    def sample():
        with torch.no_grad():
            return q.sample((chains,) if chains > 1 else ())

    return _time_ms(log_prob_and_grad, repeats), _time_ms(sample, repeats)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="data points (independent experts)")
    p.add_argument("--dims", type=int, nargs="+", default=[20, 2])
    p.add_argument("--chains", type=int, nargs="+", default=[1, 4], help="leading z dimension C (1: z is (N, D))")
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the markdown report here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = run_record(command_line("benchmarks/flow_cost.py", argv), device="cpu", threads=args.threads)
    m = record["machine"]
    load = m["load_average"][0] if m["load_average"] else float("nan")

    kinds = [("gaussian", False), ("maf", False), ("maf", True), ("coupling", False), ("coupling", True)]
    kinds.append(("iaf (pyro forward)", False))
    rows = []
    for dim in args.dims:
        for chains in args.chains:
            for kind, cond in kinds:
                lp, smp = measure(kind, dim, args.n, chains, args.blocks, args.hidden, cond, args.repeats)
                label = kind + (" (conditional)" if cond else "")
                rows.append(f"| {dim} | {chains} | {label} | {lp[0]:.2f} ({lp[1]:.2f}) | {smp[0]:.2f} ({smp[1]:.2f}) |")
                print(rows[-1], file=sys.stderr, flush=True)

    report = "\n".join(
        [
            "# Flow-expert cost: log_prob + grad at arbitrary z, and sampling",
            "",
            f"- command: `{record['command']}`",
            f"- date: {record['date']}",
            f"- machine: {m['cpu']}, {m['cpu_count']} cores, load average {load:.1f} at start (the host is shared "
            f"with other jobs); torch {m['torch']}, pyro {m['pyro']}, {m['threads']} thread(s)",
            f"- N = {args.n} independent experts (one per data point, encoder outputs fixed), "
            f"{args.blocks} blocks, hidden {tuple(args.hidden)}; conditional flows read a context of size 2D",
            "- `log_prob + grad`: log q(z) at a fresh z of shape (C, N, D) (or (N, D) when C = 1) and its gradient "
            "with respect to z, as an HMC leapfrog step needs; `sample`: one draw per expert and chain "
            "(no gradient). Milliseconds: minimum over the repeats (median in brackets; the gap shows how much "
            "other jobs on the host disturbed the run).",
            "- `iaf (pyro forward)`: Pyro's `AffineAutoregressive` used in its own direction (fast sampling); "
            "for comparison only, the library does not offer it.",
            "",
            "| D | C | flow | log_prob + grad, ms: min (median) | sample, ms: min (median) |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    if args.out:
        atomic_write(args.out, lambda f: f.write(report), binary=False)
    print(report)
    return report


if __name__ == "__main__":
    main()
