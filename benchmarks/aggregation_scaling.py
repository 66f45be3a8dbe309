"""Cost of one training step of the aggregation guides as the number of modalities M grows.

For M in ``--ms`` (default 2, 5, 10, 12 = the MoPoE cap, 20, 50) small vector modalities
(D_s = 10 each, Normal likelihood), a :class:`~pyro_mmvae.models.MultimodalVAE` with latent D = 10
is trained with batch 250 and each of the guides PoE, MoE, MoPoE, SumPooling and SelfAttention.
One step = zero grads, loss (the masked bound ``MaskedELBO`` when it can be imported, else
``BetaELBO``; the output says which), backward, Adam step. Steps of ALL (M, guide) pairs are
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
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import pyro
import torch

from pyro_mmvae.data.batch import MultimodalBatch
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.distributions.experts import MAX_MOPOE_MODALITIES
from pyro_mmvae.guides import MoEGuide, MoPoEGuide, PoEGuide, SelfAttentionGuide, SumPoolingGuide
from pyro_mmvae.models import MultimodalVAE
from pyro_mmvae.utils import resolve_device

try:
    from pyro_mmvae.infer.masked import MaskedELBO

    ELBO_NAME = "MaskedELBO (mask sampler 'paper', STL, 1 particle)"
except ImportError:  # the masked objective is not available in this checkout
    MaskedELBO = None
    from pyro_mmvae.infer.elbo import BetaELBO

    ELBO_NAME = "BetaELBO (1 particle; MaskedELBO could not be imported)"

GUIDES = ("PoE", "MoE", "MoPoE", "SumPooling", "SelfAttention")
DEFAULT_MS = (2, 5, 10, MAX_MOPOE_MODALITIES, 20, 50)
QUICK_MS = (2, 5, 50)
GRAD_CLIP_VALUE = 100.0
MODEL_NAME = "MultimodalVAE (the library's model)"


@dataclass
class Settings:
    data_dim: int = 10
    latent_dim: int = 10
    batch_size: int = 250
    width: int = 128
    lr: float = 1e-5
    threads: int = 1


@dataclass
class Result:
    """One (M, guide) pair: step times in ms, memory in MiB, or the error that prevented it."""

    num_modalities: int
    guide: str
    parameters: int | None = None
    step_ms: list[float] = field(default_factory=list)
    median_ms: float | None = None
    memory_mib: float | None = None
    nonfinite_steps: int = 0
    error: str | None = None


def make_modalities(num: int, data_dim: int) -> list[Modality]:
    return [Modality(f"m{j}", (data_dim,), scale=1.0) for j in range(num)]


def make_guide(kind: str, modalities, s: Settings):
    """The guide ``kind`` with every hidden width set to ``s.width`` (encoders ``D_s → H → H → ·``)."""
    hidden = (s.width, s.width)
    if kind == "PoE":
        return PoEGuide(modalities, s.latent_dim, hidden=hidden)
    if kind == "MoE":
        return MoEGuide(modalities, s.latent_dim, hidden=hidden)
    if kind == "MoPoE":
        return MoPoEGuide(modalities, s.latent_dim, hidden=hidden)
    if kind == "SumPooling":
        return SumPoolingGuide(modalities, s.latent_dim, hidden=hidden, width=s.width, pooled_dim=s.width)
    if kind == "SelfAttention":
        return SelfAttentionGuide(modalities, s.latent_dim, hidden=hidden, width=s.width, dim=s.width)
    raise ValueError(f"unknown guide {kind!r}; expected one of {GUIDES}")


def make_batch(modalities, batch_size: int, device, seed: int) -> MultimodalBatch:
    """Standard-normal data, every modality present (the objective samples the subsets)."""
    g = torch.Generator().manual_seed(seed)
    data = {m.name: torch.randn(batch_size, *m.shape, generator=g) for m in modalities}
    return MultimodalBatch(data).to(device)


class Pair:
    """A model/guide pair with its loss module, optimiser and batch; ``step()`` runs one training step."""

    def __init__(self, num: int, kind: str, s: Settings, device: torch.device, seed: int):
        mods = make_modalities(num, s.data_dim)
        self.guide = make_guide(kind, mods, s).to(device)  # raises for MoPoE above its cap
        self.model = MultimodalVAE(mods, s.latent_dim, hidden=(s.width, s.width)).to(device)
        elbo = MaskedELBO() if MaskedELBO is not None else BetaELBO()
        self.loss = elbo(self.model, self.guide)
        self.params = list(self.loss.parameters())
        # The step's arithmetic does not depend on the learning rate; a small one keeps the
        # untrained networks (and their unnormalised set sums at large M) in a tame range.
        self.optimizer = torch.optim.Adam(self.params, lr=s.lr)
        self.batch = make_batch(mods, s.batch_size, device, seed)
        self.device = device

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _forward_backward(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.batch)
        loss.backward()
        # The paper's training recipe (Table 2): NaN-zeroing and element-wise clipping at ±100.
        # It would also keep a pair whose loss turned non-finite (see the module docstring)
        # stepping on finite parameters, so its cost could still be timed.
        for p in self.params:
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0).clamp_(-GRAD_CLIP_VALUE, GRAD_CLIP_VALUE)
        self.optimizer.step()
        return loss.detach()

    def step(self) -> tuple[float, bool]:
        """Wall time of one training step in seconds, and whether its loss was finite."""
        self._sync()
        t0 = time.perf_counter()
        loss = self._forward_backward()
        self._sync()
        elapsed = time.perf_counter() - t0
        return elapsed, bool(torch.isfinite(loss))

    def memory_bytes(self) -> int:
        """Peak memory of one step (CUDA) or the bytes autograd saves for backward (CPU); see module doc."""
        if self.device.type == "cuda":
            self._sync()
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._forward_backward()
            self._sync()
            return torch.cuda.max_memory_allocated(self.device) - base
        param_ptrs = {p.untyped_storage().data_ptr() for p in self.params}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in param_ptrs:
                saved[ptr] = storage.nbytes()
            return t  # held until backward, so no saved storage is freed and reused meanwhile

        self.optimizer.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.loss(self.batch)
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(saved.values())


def machine_description(device: torch.device, threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def run(ms, steps: int, warmup: int, s: Settings, device: torch.device, seed: int, log=print) -> list[Result]:
    """Build every pair, then time interleaved steps; returns one :class:`Result` per (M, guide)."""
    results: dict[tuple[int, str], Result] = {}
    pairs: dict[tuple[int, str], Pair] = {}
    pyro.set_rng_seed(seed)
    for num in ms:
        for kind in GUIDES:
            res = results[(num, kind)] = Result(num, kind)
            try:
                pairs[(num, kind)] = pair = Pair(num, kind, s, device, seed + num)
                res.parameters = pair.num_parameters
            except ValueError as err:
                res.error = str(err)
                log(f"M={num:>3} {kind:<13} not run: {err}")
    order = list(pairs)
    rng = random.Random(seed)
    for r in range(warmup + steps):
        rng.shuffle(order)  # a fresh order each round: no pair always runs right after another
        for key in order:
            if results[key].error is not None:
                continue
            try:
                t, finite = pairs[key].step()
            except (ValueError, RuntimeError) as err:
                results[key].error = f"failed at round {r}: {type(err).__name__}: {str(err).splitlines()[0]}"
                log(f"M={key[0]:>3} {key[1]:<13} {results[key].error}")
                continue
            if r >= warmup:
                results[key].step_ms.append(1e3 * t)
                results[key].nonfinite_steps += not finite
        if r == 0 or (r + 1) % 5 == 0:
            log(f"round {r + 1}/{warmup + steps} done (load average {load_average()})")
    for key, pair in pairs.items():
        res = results[key]
        if res.error is None:
            res.median_ms = statistics.median(res.step_ms)
            res.memory_mib = pair.memory_bytes() / 2**20
    return [results[(num, kind)] for num in ms for kind in GUIDES]


def step_ratio(results: list[Result], kind: str, num_hi: int, num_lo: int) -> float | None:
    med = {r.num_modalities: r.median_ms for r in results if r.guide == kind}
    if med.get(num_hi) is None or med.get(num_lo) is None:
        return None
    return med[num_hi] / med[num_lo]


def format_table(results: list[Result], ms, memory_label: str) -> str:
    head = "| M | " + " | ".join(GUIDES) + " |"
    lines = ["Median step time, ms (memory, MiB: " + memory_label + ")", "", head, "|---" * (len(GUIDES) + 1) + "|"]
    by_key = {(r.num_modalities, r.guide): r for r in results}
    for num in ms:
        cells = []
        for kind in GUIDES:
            r = by_key[(num, kind)]
            if r.error is not None:
                cells.append("capped" if kind == "MoPoE" and num > MAX_MOPOE_MODALITIES else "failed")
            else:
                mark = "*" if r.nonfinite_steps else ""
                cells.append(f"{r.median_ms:.1f} ({r.memory_mib:.1f}){mark}")
        lines.append(f"| {num} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def last_line(ratios: dict) -> str:
    """The run's final output line: the SumPooling step-time ratio M = 50 / M = 5 (``nan`` if either was not run)."""
    sp = ratios["SumPooling M=50/M=5"]
    return f"sumpooling_step_ratio_m50_vs_m5={sp:.3f}" if sp is not None else "sumpooling_step_ratio_m50_vs_m5=nan"


def markdown_report(meta: dict, results: list[Result], table: str, ratios: dict) -> str:
    m, st = meta["machine"], meta["settings"]
    errors = sorted({r.error for r in results if r.error})
    lines = [
        "# Aggregation guides: training-step cost against the number of modalities",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- machine: {m['cpu']}, {m['cpu_count']} cores shared with other jobs at the time (load average "
        f"{meta['load_average_start']} at start, {meta['load_average_end']} at the end); torch {m['torch']}, "
        f"pyro {m['pyro']}, {m['torch_threads']} torch thread(s), device {m['device']}",
        f"- model: {meta['model']}",
        f"- objective: {meta['elbo']}; Adam (lr {st['lr']}), gradients NaN-zeroed and clipped to ±{GRAD_CLIP_VALUE:g}; "
        f"batch {st['batch_size']}; D_s = {st['data_dim']} per modality (Normal, σ = 1), "
        f"latent D = {st['latent_dim']}; "
        f"every hidden width H = {st['width']} (encoders D_s→H→H→·, decoders D→H→H→D_s, χ/ρ/attention width H, "
        "1 attention block, 4 heads)",
        f"- timing: median over {meta['steps']} interleaved rounds after {meta['warmup']} warm-up rounds; every round "
        "steps all (M, guide) pairs once in a fresh random order",
        f"- memory: {meta['memory_method']}",
        f"- wall time of the whole run: {meta['wall_seconds']:.0f} s",
        "",
        table,
        "",
        "Step-time ratio M = 50 vs M = 5 (linear growth in M gives about 10):",
        "",
        *[f"- {k}: {v:.2f}" if v is not None else f"- {k}: n/a" for k, v in ratios.items()],
        "",
        f"Last line of the run's output: `{last_line(ratios)}`",
        "",
    ]
    flagged = [r for r in results if r.nonfinite_steps]
    if flagged:
        lines += [
            "`*`: the loss was non-finite in some timed steps (NaN-zeroed gradients kept the parameters finite):",
            "",
            *[f"- M = {r.num_modalities}, {r.guide}: {r.nonfinite_steps} of {len(r.step_ms)} steps" for r in flagged],
            "",
        ]
    if errors:
        lines += ["Pairs that did not run:", "", *[f"- {e}" for e in errors], ""]
    return "\n".join(lines)


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
    load_start, t0 = load_average(), time.perf_counter()
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

    meta = {
        "command": "python benchmarks/aggregation_scaling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_description(device, args.threads),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "elbo": ELBO_NAME,
        "model": MODEL_NAME,
        "memory_method": memory_method,
        "settings": asdict(s),
        "steps": args.steps,
        "warmup": args.warmup,
        "ms": list(args.ms),
        "max_mopoe_modalities": MAX_MOPOE_MODALITIES,
        "wall_seconds": wall,
    }
    meta["command"] = meta["command"].strip()
    report = {**meta, "results": [asdict(r) for r in results], "step_ratio_m50_vs_m5": ratios}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(markdown_report(meta, results, table, ratios))
    print(last_line(ratios))
    return report


if __name__ == "__main__":
    main()
