"""Cost of one training step: the library's Pyro β-ELBO vs the same ELBO written in plain PyTorch.

Both sides use the SAME networks (the toy experiment's joint VAE: MLP heads, merge MLP, MLP
decoders, Bernoulli likelihoods, batch 128) and the same optimiser. Steps alternate between the two
implementations so that machine noise hits both alike; the medians are compared.

    python benchmarks/elbo_overhead.py [--steps 200] [--batch-size 128] [--threads 2] [--json results.json]

The first line names the machine (:func:`pyro_mmvae.utils.run_record`); ``--json`` also writes the
medians with the command, date and machine.

Last line: ``elbo_step_ratio_pyro_vs_torch=<median Pyro step / median torch step>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributions as td

from pyro_mmvae.data import iterate_batches
from pyro_mmvae.experiments import toy
from pyro_mmvae.infer.elbo import BetaELBO
from pyro_mmvae.utils import atomic_write_json, command_line, run_record


def torch_elbo_loss(model, guide, batch, beta: float) -> torch.Tensor:
    """The β-ELBO of the joint VAE written directly with torch.distributions (one particle)."""
    h = [guide.heads[n](batch.data[n]) for n in guide.names]
    loc, scale = guide.gaussian(guide.merge(torch.cat(h, -1)))
    q = td.Normal(loc, scale)
    z = q.rsample()
    log_q = q.log_prob(z).sum(-1)
    log_p = td.Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(-1)
    recon = 0.0
    for n in model.names:
        logits = model.decoders[n](z)
        recon = recon + td.Bernoulli(logits=logits).log_prob(batch.data[n]).flatten(1).sum(-1)
    return -(recon + beta * (log_p - log_q)).mean()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--json", default=None, help="write the medians, command, date and machine here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = run_record(command_line("benchmarks/elbo_overhead.py", argv), device="cpu", threads=args.threads)
    m = record["machine"]
    print(
        f"machine: {m['cpu']}, {m['cpu_count']} cores (load average {m['load_average']}), torch {m['torch']}, "
        f"pyro {m['pyro']}, {m['threads']} torch thread(s); {record['date']}"
    )
    torch.manual_seed(0)

    train = toy.CirclesSquares("train", size=args.batch_size * 16, seed=0)
    batches = list(iterate_batches(train, args.batch_size, shuffle=True, seed=0))
    model, guide = toy.build_joint_vae(latent_dim=2)
    params = list(model.parameters()) + list(guide.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    pyro_loss = BetaELBO()(model, guide)

    def step(kind: str, batch) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if kind == "pyro":
            loss = pyro_loss(batch, beta=args.beta)
        else:
            loss = torch_elbo_loss(model, guide, batch, args.beta)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    # Same value check: with the same RNG state both implementations give the same loss.
    torch.manual_seed(1)
    a = pyro_loss(batches[0], beta=args.beta).item()
    torch.manual_seed(1)
    b = torch_elbo_loss(model, guide, batches[0], args.beta).item()
    print(f"same-seed loss: pyro {a:.4f}  torch {b:.4f}  |diff| {abs(a - b):.2e}")

    times = {"pyro": [], "torch": []}
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        order = ("pyro", "torch") if i % 2 == 0 else ("torch", "pyro")
        for kind in order:
            t = step(kind, batch)
            if i >= args.warmup:
                times[kind].append(t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"steps per side: {args.steps}, batch {args.batch_size}, threads {args.threads}")
    overhead = med["pyro"] - med["torch"]
    print(f"median step: pyro {med['pyro']:.2f} ms, torch {med['torch']:.2f} ms, overhead {overhead:.2f} ms")

    # Where the overhead goes: forward passes only (no backward), Pyro's traced loss vs plain torch.
    fwd = {"pyro": [], "torch": []}
    with torch.no_grad():
        for i in range(100):
            for kind in ("pyro", "torch") if i % 2 == 0 else ("torch", "pyro"):
                t0 = time.perf_counter()
                if kind == "pyro":
                    pyro_loss(batches[0], beta=args.beta)
                else:
                    torch_elbo_loss(model, guide, batches[0], args.beta)
                fwd[kind].append(time.perf_counter() - t0)
    fmed = {k: statistics.median(v) * 1e3 for k, v in fwd.items()}
    print(
        f"forward only: pyro {fmed['pyro']:.2f} ms, torch {fmed['torch']:.2f} ms "
        f"(tracing, replay and site bookkeeping: {fmed['pyro'] - fmed['torch']:.2f} ms per step)"
    )
    ratio = med["pyro"] / med["torch"]
    if args.json:
        atomic_write_json(
            args.json,
            {**record, "args": vars(args), "median_step_ms": med, "median_forward_ms": fmed, "step_ratio": ratio},
        )
    print(f"elbo_step_ratio_pyro_vs_torch={ratio:.3f}")


if __name__ == "__main__":
    main()
