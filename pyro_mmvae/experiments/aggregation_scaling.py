"""Cost of one training step of the aggregation guides as the number of modalities M grows.

For M small vector modalities (D_s = 10 each, Normal likelihood), a
:class:`~pyro_mmvae.models.MultimodalVAE` with latent D = 10 is trained with each of the guides PoE,
MoE, MoPoE, SumPooling and SelfAttention. One step = zero grads, loss (the masked bound
``MaskedELBO`` of "Learning multi-modal generative models with permutation-invariant encoders and
tighter variational objectives"), backward, NaN-zeroing and element-wise clipping to ±100, Adam step.
:func:`run` interleaves the steps of ALL (M, guide) pairs in a freshly shuffled order every round,
so machine noise (other jobs on a shared host) hits every pair alike.

Memory per step (:meth:`Pair.memory_bytes`): on CUDA the step's own peak above the memory allocated
before it; on CPU the bytes of the tensors autograd saves for the backward pass (unique storages,
parameters excluded), i.e. the activation memory a step holds at its peak.

The command is ``benchmarks/aggregation_scaling.py``; its results are in
``benchmarks/results/aggregation_scaling_cpu.md``.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field

import pyro
import torch

from ..data.batch import MultimodalBatch
from ..data.modality import Modality
from ..distributions.experts import MAX_MOPOE_MODALITIES
from ..guides import MoEGuide, MoPoEGuide, PoEGuide, SelfAttentionGuide, SumPoolingGuide
from ..infer.masked import MaskedELBO
from ..models import MultimodalVAE
from ..utils import load_average

ELBO_NAME = "MaskedELBO (mask sampler 'paper', STL, 1 particle)"

GUIDES = ("PoE", "MoE", "MoPoE", "SumPooling", "SelfAttention")
DEFAULT_MS = (2, 5, 10, MAX_MOPOE_MODALITIES, 20, 50)
QUICK_MS = (2, 5, 50)
GRAD_CLIP_VALUE = 100.0
MODEL_NAME = "MultimodalVAE (the library's model)"


@dataclass
class Settings:
    """Sizes of every pair: D_s per modality, latent D, batch, hidden width H, Adam lr, torch threads."""

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
    """``num`` vector modalities ``m0, m1, ...`` of shape ``(data_dim,)``."""
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
        self.loss = MaskedELBO()(self.model, self.guide)
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
            log(f"round {r + 1}/{warmup + steps} done (load average {load_1min()})")
    for key, pair in pairs.items():
        res = results[key]
        if res.error is None:
            res.median_ms = statistics.median(res.step_ms)
            res.memory_mib = pair.memory_bytes() / 2**20
    return [results[(num, kind)] for num in ms for kind in GUIDES]


def step_ratio(results: list[Result], kind: str, num_hi: int, num_lo: int) -> float | None:
    """Median step time of ``kind`` at M = ``num_hi`` over that at M = ``num_lo`` (None if either did not run)."""
    med = {r.num_modalities: r.median_ms for r in results if r.guide == kind}
    if med.get(num_hi) is None or med.get(num_lo) is None:
        return None
    return med[num_hi] / med[num_lo]


def format_table(results: list[Result], ms, memory_label: str) -> str:
    """Markdown table: one line per M, one column per guide, ``median ms (MiB)``; ``capped``/``failed`` otherwise."""
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
    """The results file: how it was measured (command, machine, settings), the table, the ratios, failures."""
    m, st = meta["machine"], meta["settings"]
    errors = sorted({r.error for r in results if r.error})
    lines = [
        "# Aggregation guides: training-step cost against the number of modalities",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- machine: {m['cpu']}, {m['cpu_count']} cores shared with other jobs at the time (load average "
        f"{meta['load_average_start']} at start, {meta['load_average_end']} at the end); torch {m['torch']}, "
        f"pyro {m['pyro']}, {m['threads']} torch thread(s), device {m['device']}",
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


def load_1min() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    load = load_average()
    return None if load is None else load[0]
