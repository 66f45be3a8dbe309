"""Cost of one gradient of the subset-posterior benchmark target: autograd vs the target's own sweep.

``python benchmarks/target_gradient.py`` builds the target of ``benchmarks/subset_posterior.py``
(N = 1000, D = 20, |S| = 3 MAF experts, 4 chains, float32, one thread) and times, in alternating
rounds, ``torch.autograd.grad`` of ``log_prob`` against ``SubsetPosterior.log_prob_and_grad`` (closed-form
Gaussian prior, fused MAF sweeps), after checking that both give the same value and gradient.
Prints the medians and ``gradient_speedup=<x>`` last.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pyro_mmvae.experiments.subset_posterior_benchmark import benchmark_target, starting_state


def autograd_gradient(target, z):
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = target.log_prob(z)
        (g,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), g


def median_ms(fn, target, z, steps):
    start = time.perf_counter()
    for _ in range(steps):
        fn(target, z)
    return (time.perf_counter() - start) / steps * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-points", type=int, default=1000)
    parser.add_argument("--d", type=int, default=20)
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    target = benchmark_target(args.num_points, args.d, args.experts, 0.3, "cpu", torch.float32, 0)
    z, _ = starting_state(target, args.chains, 0)
    (lp_a, g_a), (lp_f, g_f) = autograd_gradient(target, z), target.log_prob_and_grad(z)
    rel = float((g_a - g_f).abs().max() / g_a.abs().max())
    print(f"max |Δ log_prob| = {float((lp_a - lp_f).abs().max()):.3g}, max |Δ grad| / max |grad| = {rel:.3g}")

    def own(t, x):
        return t.log_prob_and_grad(x)

    for fn in (autograd_gradient, own):  # warm up allocator and caches
        median_ms(fn, target, z, 5)
    timings = {"autograd": [], "own": []}
    for _ in range(args.rounds):
        timings["autograd"].append(median_ms(autograd_gradient, target, z, args.steps))
        timings["own"].append(median_ms(own, target, z, args.steps))
    a, f = statistics.median(timings["autograd"]), statistics.median(timings["own"])
    n = args.chains * args.num_points
    print(f"autograd: {a:.2f} ms per gradient of {n} targets ({a / n * 1e3:.2f} us per target)")
    print(f"log_prob_and_grad: {f:.2f} ms per gradient of {n} targets ({f / n * 1e3:.2f} us per target)")
    print(f"gradient_speedup={a / f:.2f}")


if __name__ == "__main__":
    main()
