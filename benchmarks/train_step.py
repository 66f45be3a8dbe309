"""Time one training step of the masked objective at the permutation-invariant paper's settings.

One step is what ``fit`` does per batch after its first: zero the gradients, the loss, backward,
element-wise clipping, an Adam step (fused, as ``fit`` builds it), with Pyro's distribution validation
off (``fit``'s default ``validate_distributions="first_step"``) and the networks read without
``pyro.module`` registration (``fit``'s optimizer holds the parameters:
:func:`~pyro_mmvae.nn.shared_encodings.without_module_registration`). The settings are those of
``pyro_mmvae.experiments.pi_tables`` (data, networks, batch size, learning rate): Table 2 (dense,
SumPooling, masked), Table 3 (SumPooling and PoE, masked, one particle) and Table 4 (SumPooling,
η = 0.5). Each setting is timed in alternating rounds, so that machine noise hits all alike:

- ``library``: the step as ``fit`` runs it by default, eagerly (guide runs sharing one encoding per
  modality, :mod:`pyro_mmvae.nn.shared_encodings`);
- ``compiled``: the step of ``fit(compile=True)``: the same loss and gradients traced into one graph
  and compiled by Inductor (:mod:`pyro_mmvae.train.compiled_step`), then clipping and Adam as above;
- ``validated``: the same with Pyro's validation on (``fit``'s first step, or ``validate_distributions="always"``);
- ``unshared``: validation off, every guide run encoding its own inputs (:func:`no_shared_encodings`);
- ``jax``: with ``jax`` installed (the ``[bench]`` extra), the same computation as one jitted JAX
  function built from the same modules and initial weights
  (:class:`~pyro_mmvae.experiments.jax_train_step.JaxTrainStep`; SumPooling and PoE settings).

Medians over rounds of ``--steps`` steps, one thread (torch and XLA).

    python benchmarks/train_step.py [--steps 30] [--rounds 7] [--threads 1] [--out benchmarks/results/train_step_cpu]
        [--polymnist-root DIR] [--skip-jax] [--skip-compile]

``--polymnist-root`` (a folder built by ``pyro-mmvae data build polymnist``) adds the reduced PolyMNIST
SumPooling run's step (MoPoE's conv nets, D = 32, batch 64, masked objective).

Last lines: ``masked_step_ms_table3_sumpooling_eager=<median ms>`` (the default eager step), then
``masked_step_ms_table3_sumpooling=<median ms>``: the fastest step ``fit`` offers on this machine (the
compiled one, or the eager one where Inductor cannot compile, e.g. without a C++ compiler).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import pyro
import torch

from pyro_mmvae.data import iterate_batches
from pyro_mmvae.experiments.jax_train_step import JaxTrainStep, jax_available
from pyro_mmvae.experiments.pi_tables.builders import build_elbo, build_guide, build_model, make_data
from pyro_mmvae.experiments.pi_tables.settings import FULL, Row
from pyro_mmvae.nn.shared_encodings import no_shared_encodings, without_module_registration
from pyro_mmvae.train.compiled_step import CompiledGradients, StepCompileError
from pyro_mmvae.train.loop import clip_gradients
from pyro_mmvae.train.optim import build_optimizer
from pyro_mmvae.utils import atomic_write, atomic_write_json, command_line, run_record, set_seed

# (key, table, section, aggregator, the authors' jitted JAX step in ms measured on this machine)
SETTINGS = [
    ("table2_dense_sumpooling", 2, "dense", "SumPooling", 106.0),
    ("table3_poe", 3, "main", "PoE", 2.0),
    ("table4_sumpooling_eta0.5", 4, "eta=0.5", "SumPooling", None),
    ("table3_sumpooling", 3, "main", "SumPooling", 7.8),
]


def build(table: int, section: str, aggregator: str):
    """Model, guide, objective, optimizer and a list of batches of one setting."""
    settings = FULL[table]
    data = make_data(table, section, 0, settings.num_train, settings.num_test, 500)
    row = Row(aggregator, aggregator)
    set_seed(0)
    mods = data.modalities
    model, guide = build_model(table, row, mods), build_guide(table, row, mods)
    elbo = build_elbo("masked", "paper")
    params = [*model.parameters(), *guide.parameters()]
    opt = build_optimizer("adam", params, settings.lr, {})  # as fit builds it
    batches = list(iterate_batches(data.train, settings.batch_size, shuffle=True, seed=0))
    return model, guide, elbo, opt, params, batches, settings


def build_polymnist(root: Path):
    """The reduced PolyMNIST SumPooling run's model, guide and objective (``pyro-mmvae train`` presets)."""
    from pyro_mmvae.experiments import recipes
    from pyro_mmvae.experiments.datasets import load_splits
    from pyro_mmvae.experiments.runs import RunConfig, run_modalities

    config = RunConfig(dataset="polymnist", data_root=str(root), model="sumpooling", nets="mopoe", latent_dim=32,
                       beta=1.0, batch_size=64, train_size=640, val_size=0)  # fmt: skip
    settings = config.settings()
    set_seed(0)
    mods = run_modalities("polymnist", settings)
    model, guide, elbo = recipes.build_main_stage("sumpooling", "polymnist", mods, settings, "auto")
    splits = load_splits("polymnist", str(root), train_size=640, val_size=0, seed=0)
    params = [*model.parameters(), *guide.parameters()]
    opt = build_optimizer("adam", params, settings.lr, {})  # as fit builds it
    batches = list(iterate_batches(splits.train, 64, shuffle=True, seed=0))
    return model, guide, elbo, opt, params, batches, None


def time_steps(setup, steps: int, shared: bool = True, validate: bool = False, compiled=None) -> float:
    """Median ms of ``steps`` training steps (``validate``: Pyro's validation on; ``compiled``: a
    :class:`CompiledGradients` of the setting, the step of ``fit(compile=True)``)."""
    model, guide, elbo, opt, params, batches, settings = setup
    times = []
    sharing = contextlib.nullcontext() if shared else no_shared_encodings()
    with sharing, pyro.validation_enabled(validate), without_module_registration():  # as fit runs a step
        for i in range(steps):
            batch = batches[i % len(batches)]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            if compiled is not None:
                float(compiled(batch, {}))  # fit reads the loss value every step; the graph clips
            else:
                loss = elbo.differentiable_loss(model, guide, batch)
                float(loss.detach())
                loss.backward()
                if settings is not None:
                    clip_gradients(params, True, settings.clip, None)
            opt.step()
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def compiled_step(setup):
    """``(CompiledGradients, seconds to trace and compile)`` of a setting; ``(None, None)`` where it cannot compile."""
    model, guide, elbo, opt, params, batches, settings = setup
    clip = None if settings is None else settings.clip  # clip_gradients as time_steps applies it eagerly
    compiled = CompiledGradients(elbo, model, guide, params, zero_nan_grads=clip is not None, grad_clip_value=clip)
    t0 = time.perf_counter()
    try:
        with pyro.validation_enabled(False):
            compiled(batches[0], {})
    except StepCompileError as err:
        print(f"compiled step skipped: {err}")
        return None, None
    opt.zero_grad(set_to_none=True)
    return compiled, time.perf_counter() - t0


def jax_step(setup):
    """The jitted JAX step of a setting, or None where it has no JAX counterpart."""
    model, guide, elbo, opt, params, batches, settings = setup
    if settings is None:
        return None
    try:
        return JaxTrainStep(model, guide, settings.lr, settings.clip)
    except ValueError:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="steps per round")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (shared / not shared)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    p.add_argument("--polymnist-root", type=Path, default=None, help="also time the reduced PolyMNIST SumPooling step")
    p.add_argument("--skip-jax", action="store_true", help="do not time the jitted JAX reference step")
    p.add_argument("--skip-compile", action="store_true", help="do not time the step of fit(compile=True)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = run_record(command_line("benchmarks/train_step.py", argv), "cpu", args.threads)
    print(f"machine: {record['machine']}")
    rows = []
    plan = [(key, lambda t=table, s=section, a=aggregator: build(t, s, a), FULL[table].batch_size, jax)
            for key, table, section, aggregator, jax in SETTINGS]  # fmt: skip
    if args.polymnist_root is not None:
        plan.insert(0, ("polymnist_sumpooling_mopoe_nets", lambda: build_polymnist(args.polymnist_root), 64, None))
    jax_reason = None if args.skip_jax else jax_available()
    if jax_reason is not None and not args.skip_jax:
        print(f"JAX reference skipped: {jax_reason}")
    for key, make, batch_size, jax_ms in plan:
        setup = make()
        time_steps(setup, 2)  # warm-up
        jax = None if args.skip_jax or jax_reason is not None else jax_step(setup)
        if jax is not None:
            jax.step(setup[5][0])  # compiles
        compiled, compile_s = (None, None) if args.skip_compile else compiled_step(setup)
        timed = {"library": [], "compiled": [], "validated": [], "unshared": [], "jax": []}
        for _ in range(args.rounds):
            timed["library"].append(time_steps(setup, args.steps))
            if compiled is not None:
                timed["compiled"].append(time_steps(setup, args.steps, compiled=compiled))
            timed["validated"].append(time_steps(setup, args.steps, validate=True))
            timed["unshared"].append(time_steps(setup, args.steps, shared=False))
            if jax is not None:
                timed["jax"].append(jax.time_steps(setup[5], args.steps))
        row = {
            "setting": key,
            "batch_size": batch_size,
            **{f"{k}_ms": statistics.median(v) if v else None for k, v in timed.items()},
            "library_vs_jax": statistics.median(a / b for a, b in zip(timed["library"], timed["jax"]))
            if timed["jax"]
            else None,
            "compiled_vs_jax": statistics.median(a / b for a, b in zip(timed["compiled"], timed["jax"]))
            if timed["jax"] and timed["compiled"]
            else None,
            "compile_s": compile_s,
            "jax_compile_s": None if jax is None else jax.compile_seconds,
            "authors_jax_ms_reference_machine": jax_ms,
        }
        rows.append(row)
        print(
            f"{key}: library {row['library_ms']:.2f} ms, "
            + ("" if compiled is None else f"compiled {row['compiled_ms']:.2f} ms (compiling {compile_s:.0f} s), ")
            + f"validated {row['validated_ms']:.2f} ms, unshared {row['unshared_ms']:.2f} ms"
            + ("" if jax is None else f", JAX {row['jax_ms']:.2f} ms (library/JAX x{row['library_vs_jax']:.2f})")
        )
    last = next(r for r in rows if r["setting"] == "table3_sumpooling")
    eager_line = f"masked_step_ms_table3_sumpooling_eager={last['library_ms']:.2f}"
    best = last["compiled_ms"] if last["compiled_ms"] is not None else last["library_ms"]
    line = f"masked_step_ms_table3_sumpooling={best:.2f}"  # the fastest step fit offers here
    if args.out is not None:
        result = {**record, "steps": args.steps, "rounds": args.rounds, "rows": rows}
        atomic_write_json(args.out.with_suffix(".json"), result)
        table = ["| setting | batch | library (ms) | compiled (ms) | validated (ms) | unshared (ms) | JAX here (ms) "
                 "| library / JAX | compiled / JAX | compiling (s) | authors' JAX, reference machine (ms) |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

        def ms(v):
            return "—" if v is None else f"{v:.2f}"

        for r in rows:
            table.append(
                f"| {r['setting']} | {r['batch_size']} | {ms(r['library_ms'])} | {ms(r['compiled_ms'])} | "
                f"{ms(r['validated_ms'])} | {ms(r['unshared_ms'])} | {ms(r['jax_ms'])} | {ms(r['library_vs_jax'])} | "
                f"{ms(r['compiled_vs_jax'])} | {ms(r['compile_s'])} | {ms(r['authors_jax_ms_reference_machine'])} |"
            )
        text = "\n".join(
            [
                "# Masked-objective training step (permutation-invariant paper settings)",
                "",
                f"- command: `{result['command']}`",
                f"- date: {record['date']}",
                f"- machine: {record['machine']}",
                f"- medians over {args.rounds} alternating rounds of {args.steps} steps",
                "",
                *table,
                "",
                eager_line,
                line,
                "",
            ]
        )
        atomic_write(args.out.with_suffix(".md"), lambda f: f.write(text), binary=False)
    print(eager_line)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
