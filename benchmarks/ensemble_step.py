"""Per-member training-step time of ``fit_ensemble`` against lone ``fit`` runs (Table 3 setting).

One epoch of the full Table 3 setting (4,000 rows, batch 250, masked objective, Adam, clipping 1000)
is trained by ``fit`` once per seed and by ``fit_ensemble`` for M seeds at once; the script prints
and writes the median over ``--repeats`` of milliseconds per member-step (a full step: loss,
backward, clipping, Adam). Pin threads for stable figures::

    taskset -c 0 python benchmarks/ensemble_step.py --members 1 5 20 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pyro_mmvae.experiments.pi_tables.builders import build_elbo, build_guide, build_model, make_data
from pyro_mmvae.experiments.pi_tables.settings import FULL, Row
from pyro_mmvae.train import fit, fit_ensemble, members_from
from pyro_mmvae.utils import atomic_write, command_line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, nargs="+", default=[1, 5, 20])
    p.add_argument("--aggregator", default="SumPooling")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ensemble_step_cpu.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    s = FULL[3]
    data = make_data(3, "main", 0, s.num_train, None, 20).train
    mods, row = data.modalities, Row(a.aggregator, a.aggregator)
    settings = dict(epochs=1, batch_size=s.batch_size, lr=s.lr, grad_clip=s.clip, progress=False)
    steps = -(-s.num_train // s.batch_size)

    def build(seed):
        return build_model(3, row, mods), build_guide(3, row, mods)

    def lone():
        (m,) = members_from(build, [0])
        t = time.perf_counter()
        fit(m.model, m.guide, data, build_elbo("masked", "paper"), seed=0, **settings)
        return (time.perf_counter() - t) * 1e3 / steps

    def ensemble(n):
        members = members_from(build, range(n))
        t = time.perf_counter()
        fit_ensemble(members, data, build_elbo("masked", "paper"), **settings)
        return (time.perf_counter() - t) * 1e3 / steps / n

    rows = [("fit (one seed)", 1, statistics.median(lone() for _ in range(a.repeats)))]
    for n in a.members:
        rows.append((f"fit_ensemble, {n} members", n, statistics.median(ensemble(n) for _ in range(a.repeats))))
    base = rows[0][2]
    lines = [
        f"# fit_ensemble vs fit: ms per member-step, Table 3 {a.aggregator}, masked objective, {a.threads} thread(s)",
        "",
        f"`{command_line('benchmarks/ensemble_step.py')}`",
        "",
        f"(median of {a.repeats} one-epoch runs of {steps} steps each; data handling, loss, backward, clipping, Adam)",
        "",
        "| run | members | ms per member-step | vs fit |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {n} | {ms:.2f} | {base / ms:.2f}x |" for name, n, ms in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write(a.out, lambda f: f.write(text), binary=False)


if __name__ == "__main__":
    main()
