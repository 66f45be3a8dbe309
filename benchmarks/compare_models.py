"""Every model trained with the same networks, latent size and budget, evaluated the same way: one table.

For each model of ``--models`` (default: JNF and the seven baselines, plus the SumPooling and PoE
aggregation models) this script trains a run with :func:`~pyro_mmvae.experiments.runs.train_run` on the
dataset's published networks (:mod:`pyro_mmvae.nn.architectures`), with the SAME training rows, epochs,
batch size, seed and (with ``--latent-dim``) shared latent size for every model, then evaluates it with
:func:`~pyro_mmvae.experiments.evaluate.evaluate_run` (each model's own "z given S"):

- coherence per conditioning-subset size and its mean, joint coherence of prior samples;
- the importance-sampled joint log-likelihood log p̂(X) (nats per test point, ``--llh-particles`` samples;
  a model whose guide cannot propose for it is recorded as "not supported" instead of stopping the run);
- FID of conditional and prior samples when ``--inception-weights`` gives an Inception-v3 file;
- wall time: training (sum of the epochs' seconds from each stage's ``log.csv``, which survives resumes)
  and evaluation (this script's clock).

Latent capacity: without ``--latent-dim`` each model takes its preset's size
(:mod:`pyro_mmvae.experiments.presets`, the JNF paper's Appendix E). On PolyMNIST that is D = 190 for the
one-latent models, which matches MMVAE+'s TOTAL capacity 32 shared + 5 × 32 private = 192 (the paper's
choice), and MMVAE's own 64. With ``--latent-dim D`` every model's shared z has size D, and MMVAE+ keeps its
private latents on top (32 each on PolyMNIST, D each on the toy data). The table's ``latent`` column
states each model's shared and total size.

Budget: every model trains ``--epochs`` epochs per stage (JNF has two stages: the joint VAE, then its flow
experts with the VAE frozen). A KL warm-up of a preset (JMVAE's 100 of 150 epochs) is scaled to the same
fraction of ``--epochs``.

Resuming: each model's run is ``<runs>/<model>-<key>`` with ``key`` a hash of its training configuration,
and each evaluation ``<run>/compare_eval-<key>.json`` with ``key`` a hash of the evaluation settings. A
re-run with the same options reuses finished runs and evaluations, continues interrupted runs
(``train_run(..., resume=True)``), and retries models that failed. A changed option gives a new folder
or file, never a mixed result.

    python benchmarks/compare_models.py --dataset toy [--epochs 12] [--train-size 20000]
    python benchmarks/compare_models.py --dataset polymnist --data-root /tmp/polymnist_data/polymnist \\
        --nets mopoe --beta 1.0 --latent-dim 32 --batch-size 64 --train-size 5000 --val-size 500 --epochs 4 \\
        --num-points 500 --llh-particles 32 --subset-sizes 1 4   # benchmarks/results/compare_models_polymnist.md

Writes ``<out>.md`` and ``<out>.json`` (default ``benchmarks/results/compare_models_<dataset>``) with the
command, machine and date. Prints the table; last line ``models_compared=<n>`` (models evaluated).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pyro_mmvae.errors import InputError
from pyro_mmvae.experiments import recipes
from pyro_mmvae.experiments.evaluate import evaluate_run
from pyro_mmvae.experiments.presets import preset
from pyro_mmvae.experiments.runs import RunConfig, load_run, train_run
from pyro_mmvae.utils import atomic_write, atomic_write_json, command_line, read_json, resolve_device, run_record

DEFAULT_MODELS = ("jnf", "jmvae", "mvae", "mmvae", "mopoe", "mvtcae", "mmvaeplus", "mmjsd", "sumpooling", "poe")
DATASETS = ("toy", "polymnist")
POLYMNIST_CLASSIFIERS = "../shared/data/pretrained_classifiers/polymnist"  # the shipped classifiers (README)
# RunConfig fields that do not change what a run trains (where and how it runs): left out of its key.
NOT_IN_KEY = {"out", "resume", "no_progress", "device", "download"}
TRAIN_MARKER = "compare_train.json"


def config_key(settings: dict) -> str:
    """A short stable hash of JSON-able settings (the same settings → the same folder/file name)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def scaled_warmup(dataset: str, model: str, epochs: int | None) -> int | None:
    """The preset's KL warm-up scaled to ``epochs`` (same fraction of the budget); None keeps the preset's."""
    p = preset(dataset, model)
    if not p.anneal_epochs or epochs is None:
        return None
    return max(1, min(epochs, round(p.anneal_epochs * epochs / p.epochs)))


def run_config(args, model: str) -> RunConfig:
    """The :class:`RunConfig` of ``model`` under the shared budget, in its per-configuration folder."""
    shared = dict(
        dataset=args.dataset,
        model=model,
        data_root=args.data_root,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        latent_dim=args.latent_dim,
        base_channels=args.base_channels,
        nets=args.nets,
        beta=args.beta,
        anneal_epochs=scaled_warmup(args.dataset, model, args.epochs),
        seed=args.seed,
        device=args.device,
        no_progress=not args.progress,
    )
    probe = RunConfig(**shared)  # validates the options before anything is written
    # the resolved preset is part of the key: a changed preset never reuses a run trained under the old one
    fields = {k: v for k, v in asdict(probe).items() if k not in NOT_IN_KEY}
    key = config_key({**fields, "settings": probe.settings().to_dict()})
    return RunConfig(**shared, out=str(Path(args.runs) / f"{model}-{key}"))


# ------------------------------------------------------------------------------------------- training
def epoch_seconds(run: Path) -> float:
    """Σ of the ``seconds`` column of every stage's ``log.csv`` (the full history, also after resumes)."""
    total = 0.0
    for log in sorted(run.glob("*/log.csv")):
        with open(log, newline="") as f:
            total += sum(float(row["seconds"]) for row in csv.DictReader(f) if row.get("seconds"))
    return total


def latent_capacity(model) -> dict:
    """Shared z size, private size per modality and the total latent dimensions of a trained model."""
    shared = int(model.latent_dim)
    private = int(getattr(model, "private_dim", 0) or 0)
    return {"shared": shared, "private_per_modality": private, "total": shared + private * len(model.names)}


def parameter_count(modules) -> int:
    """Trainable-or-not parameters of a run's modules, each tensor once."""
    seen = {}
    for module in modules:
        if module is not None:
            for p in module.parameters():
                seen[id(p)] = p.numel()
    return sum(seen.values())


def ensure_trained(config: RunConfig) -> dict:
    """Train ``config``'s run unless it is finished; ``{"status": trained|resumed|reused, ...}``.

    A run folder with ``train.json`` is finished; one with only ``config.json`` was interrupted and is
    continued with ``resume=True``. The marker file records this script's wall time of the finishing call.
    """
    run = config.run_dir
    marker = run / TRAIN_MARKER
    if (run / "train.json").exists() and marker.exists():
        return {**read_json(marker), "status": "reused"}
    status = "reused"
    start = time.perf_counter()
    if not (run / "train.json").exists():
        resume = (run / "config.json").exists()
        train_run(RunConfig(**{**asdict(config), "resume": resume}), command="benchmarks/compare_models.py")
        status = "resumed" if resume else "trained"
    wall = time.perf_counter() - start
    saved, modules = load_run(run, device="cpu")
    stages = read_json(run / "train.json", required=("stages",), what="train summary")["stages"]
    record = {
        "run": str(run),
        "last_call_wall_s": wall if status != "reused" else None,
        "epochs_run": {name: s.get("epochs_run") for name, s in stages.items()},
        "latent": latent_capacity(modules.model),
        "parameters": parameter_count(modules),
        "settings": saved["settings"],
    }
    atomic_write_json(marker, record)
    return {**record, "status": status}


# ------------------------------------------------------------------------------------------ evaluation
def eval_settings(args) -> dict:
    return dict(
        num_points=args.num_points,
        num_prior=args.num_prior,
        mcmc_warmup=args.mcmc_warmup,
        llh_particles=args.llh_particles,
        subset_sizes=None if args.subset_sizes is None else sorted(set(args.subset_sizes)),
        classifiers=args.classifiers,
        inception_weights=args.inception_weights,
        batch_size=args.eval_batch_size,
        seed=args.seed,
    )


def _feature_extractor(weights, device):
    if weights is None:
        return None
    from pyro_mmvae.metrics.fid import InceptionFeatures

    return InceptionFeatures(weights, device=device, progress=False)


def ensure_evaluated(run: Path, settings: dict, device, progress: bool) -> dict:
    """The evaluation of ``run`` under ``settings``: read back if its file exists, else computed and saved.

    The log-likelihood is computed inside the evaluation; if that evaluation fails and the same
    evaluation without it succeeds, the failure was the likelihood's and is recorded as not supported.
    """
    path = run / f"compare_eval-{config_key(settings)}.json"
    if path.exists():
        return {**read_json(path, required=("evaluation",), what="comparison evaluation"), "status": "reused"}
    options = dict(
        classifiers_dir=settings["classifiers"],
        num_points=settings["num_points"],
        batch_size=settings["batch_size"],
        mcmc_warmup=settings["mcmc_warmup"],
        num_prior=settings["num_prior"],
        subset_sizes=settings["subset_sizes"],
        seed=settings["seed"],
        feature_extractor=_feature_extractor(settings["inception_weights"], device),
        device=device,
        progress=progress,
    )
    start = time.perf_counter()
    llh = "not computed (--llh-particles 0)"
    try:
        result = evaluate_run(run, llh_particles=settings["llh_particles"], **options)
    except Exception as err:  # retried without the likelihood below; a second failure propagates
        if not settings["llh_particles"]:
            raise
        result = evaluate_run(run, llh_particles=0, **options)
        llh = f"not supported: {type(err).__name__}: {err}"
    if "log_likelihood" in result:
        llh = result["log_likelihood"]["joint"]
    record = {"settings": settings, "evaluation": result, "log_likelihood": llh, "wall_s": time.perf_counter() - start}
    atomic_write_json(path, record)
    return {**record, "status": "evaluated"}


# ------------------------------------------------------------------------------------------------ rows
def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def table_row(model: str, trained: dict, evaluated: dict) -> dict:
    """One JSON row of the comparison from a model's training marker and evaluation record."""
    ev = evaluated["evaluation"]
    fid = ev.get("fid")
    return {
        "model": model,
        "run": trained["run"],
        "latent": trained["latent"],
        "parameters": trained["parameters"],
        "epochs_run": trained["epochs_run"],
        "coherence_per_size": ev["coherence"]["per_size"],
        "coherence_per_subset": ev["coherence"]["per_subset"],
        "coherence_mean": ev["coherence"]["mean_over_sizes"],
        "joint_coherence": ev["joint_coherence"],
        "log_likelihood": evaluated["log_likelihood"],
        "fid_conditional": None if fid is None else _mean(fid["conditional"].values()),
        "fid_prior": None if fid is None else _mean(fid["prior"].values()),
        "train_epoch_s": epoch_seconds(Path(trained["run"])),
        "eval_s": evaluated["wall_s"],
        "train_status": trained["status"],
        "eval_status": evaluated["status"],
        "error": None,
    }


def compare_one(args, model: str, device) -> dict:
    """Train (or reuse) and evaluate (or reuse) one model; a failure becomes a row with ``error``."""
    config = run_config(args, model)
    try:
        trained = ensure_trained(config)
        evaluated = ensure_evaluated(config.run_dir, eval_settings(args), device, args.progress)
    except Exception as err:  # one model's failure is reported; the others still run
        return {"model": model, "run": str(config.run_dir), "error": f"{type(err).__name__}: {err}"}
    return table_row(model, trained, evaluated)


# ----------------------------------------------------------------------------------------------- table
def _num(value, digits: int = 3) -> str:
    if isinstance(value, str):
        return "not supported" if value.startswith("not supported") else "—"
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _latent_text(latent: dict) -> str:
    if not latent["private_per_modality"]:
        return str(latent["shared"])
    return f"{latent['shared']} + {latent['private_per_modality']}/mod = {latent['total']}"


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a Markdown table, one row per model, one coherence column per subset size."""
    done = [r for r in rows if not r["error"]]
    sizes = sorted({int(k) for r in done for k in r["coherence_per_size"]})
    with_fid = any(r["fid_conditional"] is not None or r["fid_prior"] is not None for r in done)
    head = ["model", "latent", "params", "epochs"]
    head += [f"coh \\|S\\|={k}" for k in sizes]
    head += ["coh mean", "joint coh", "log p(X) IS"] + (["FID cond", "FID prior"] if with_fid else [])
    head += ["train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["error"]:
            error = " ".join(r["error"].split()).replace("|", "/")[:120]  # one line, no cell breaks
            lines.append(f"| {r['model']} | failed: {error} |" + " |" * (len(head) - 2))
            continue
        epochs = " + ".join(str(n) for n in r["epochs_run"].values())
        cells = [r["model"], _latent_text(r["latent"]), f"{r['parameters']:,}", epochs]
        cells += [_num(r["coherence_per_size"].get(str(k))) for k in sizes]
        cells += [_num(r["coherence_mean"]), _num(r["joint_coherence"]), _num(r["log_likelihood"], 1)]
        if with_fid:
            cells += [_num(r["fid_conditional"], 1), _num(r["fid_prior"], 1)]
        cells += [f"{r['train_epoch_s']:.1f}", f"{r['eval_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(args, rows: list[dict]) -> list[str]:
    """What the reader needs to read the table: capacity differences, budgets, reused work, failures."""
    out = []
    totals = {r["model"]: r["latent"]["total"] for r in rows if not r["error"]}
    if len(set(totals.values())) > 1:
        listed = ", ".join(f"{m} {t}" for m, t in totals.items())
        out.append(f"total latent capacity differs between models ({listed}): see the script's docstring")
    for r in rows:
        if r["error"]:
            out.append(f"{r['model']}: failed ({r['error']}); a re-run retries it")
            continue
        if len(r["epochs_run"]) > 1:
            stages = ", ".join(f"{s} {n}" for s, n in r["epochs_run"].items())
            out.append(f"{r['model']}: {len(r['epochs_run'])} training stages ({stages} epochs)")
        warmup = scaled_warmup(args.dataset, r["model"], args.epochs)
        if warmup is not None:
            p = preset(args.dataset, r["model"])
            budget = f"preset {p.anneal_epochs} of {p.epochs}"
            out.append(f"{r['model']}: KL warm-up over {warmup} of {args.epochs} epochs ({budget})")
        if isinstance(r["log_likelihood"], str) and r["log_likelihood"].startswith("not supported"):
            out.append(f"{r['model']}: log-likelihood {r['log_likelihood']}")
        if r["train_status"] != "trained" or r["eval_status"] != "evaluated":
            out.append(f"{r['model']}: training {r['train_status']}, evaluation {r['eval_status']} ({r['run']})")
    return out


def markdown_report(record: dict, rows: list[dict], note_lines: list[str]) -> str:
    m = record["machine"]
    a = record["args"]
    latent = a["latent_dim"] if a["latent_dim"] is not None else "each model's preset"
    lines = [
        f"# Model comparison on `{a['dataset']}`",
        "",
        f"- command: `{record['command']}`",
        f"- date: {record['date']}",
        f"- machine: {m['cpu']}, {m['cpu_count']} cores (load average {m['load_average']}), torch {m['torch']}, "
        f"pyro {m['pyro']}, {m['threads']} torch thread(s), device {m['device']}",
        f"- budget (every model): train rows {a['train_size'] or 'all'} (validation {a['val_size']}), "
        f"epochs {a['epochs'] or 'preset'} per stage, batch {a['batch_size'] or 'preset'}, seed {a['seed']}, "
        f"latent size {latent}, networks {a.get('nets') or 'published'}, "
        f"base channels {a['base_channels'] or 'published'}, β {a.get('beta') or 'preset'}",
        f"- evaluation: {a['num_points']} test points, {a['num_prior']} prior samples, IS log-likelihood with "
        f"{a['llh_particles']} particles (nats per point), subset sizes {a['subset_sizes'] or 'all'}, "
        f"JNF subset-posterior HMC warm-up {a['mcmc_warmup']}, FID "
        f"{'with ' + a['inception_weights'] if a['inception_weights'] else 'not computed (no --inception-weights)'}",
        "- columns: coherence is plain accuracy of the classifiers on generated modalities (per conditioning-subset "
        "size, their mean, joint = agreement of prior samples); latent = shared z (+ private per modality = total); "
        "epochs per stage; train s = Σ of the epochs' seconds; eval s = wall time of the evaluation",
        "",
        markdown_table(rows),
        "",
    ]
    if note_lines:
        lines += ["Notes:", "", *[f"- {n}" for n in note_lines], ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="toy", choices=DATASETS)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help=f"of {list(recipes.MODELS)}")
    p.add_argument("--data-root", default=None, help="the dataset folder (polymnist)")
    p.add_argument("--train-size", type=int, default=None, help="training rows (default: every row)")
    p.add_argument("--val-size", type=int, default=1_000, help="rows held out for early stopping")
    p.add_argument("--test-size", type=int, default=None, help="toy test rows (default 2000)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per stage (default: the dataset preset)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the dataset preset")
    p.add_argument("--latent-dim", type=int, default=None, help="shared z size of every model (default: presets)")
    p.add_argument("--base-channels", type=int, default=None, help="PolyMNIST ResNet width (default: published)")
    p.add_argument("--nets", default=None, help="PolyMNIST networks: 'mmvaeplus' ResNets (published) or 'mopoe'")
    p.add_argument("--beta", type=float, default=None, help="KL weight of every model (default: each preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-points", type=int, default=1_000, help="test points evaluated")
    p.add_argument("--num-prior", type=int, default=1_000, help="prior samples for joint coherence / FID")
    p.add_argument("--llh-particles", type=int, default=64, help="IS particles per point (0: skip)")
    p.add_argument("--mcmc-warmup", type=int, default=200, help="JNF subset-posterior HMC warm-up")
    p.add_argument("--subset-sizes", type=int, nargs="+", default=None, help="conditioning subset sizes")
    p.add_argument("--eval-batch-size", type=int, default=250)
    p.add_argument("--classifiers", default=None, help=f"polymnist classifiers (default {POLYMNIST_CLASSIFIERS})")
    p.add_argument("--inception-weights", default=None, help="Inception-v3 weights file: adds FID columns")
    p.add_argument("--runs", default=None, help="run folders (default runs/compare_<dataset>)")
    p.add_argument("--out", default=None, help="writes <out>.md and <out>.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    for name in args.models:
        recipes.check_model(name)
    if len(set(args.models)) != len(args.models):
        raise InputError(f"--models lists a model twice: {args.models}")
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    if args.dataset == "polymnist":
        if args.data_root is None:
            raise InputError("--dataset polymnist needs --data-root (built by 'pyro-mmvae data build polymnist')")
        args.classifiers = args.classifiers or POLYMNIST_CLASSIFIERS
    args.runs = args.runs or f"runs/compare_{args.dataset}"
    args.out = args.out or f"benchmarks/results/compare_models_{args.dataset}"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    record = run_record(command_line("benchmarks/compare_models.py", argv), device=device, threads=args.threads)
    rows = []
    for model in args.models:
        print(f"{model}: ...", flush=True)
        rows.append(compare_one(args, model, device))
        print(f"{model}: {rows[-1].get('train_status', 'failed')}", flush=True)
    note_lines = notes(args, rows)
    record.update(args=vars(args), rows=rows, notes=note_lines)
    atomic_write_json(f"{args.out}.json", record)
    text = markdown_report(record, rows, note_lines)
    atomic_write(f"{args.out}.md", lambda f: f.write(text), binary=False)
    print(markdown_table(rows))
    for n in note_lines:
        print(f"note: {n}")
    compared = sum(1 for r in rows if not r["error"])
    print(f"models_compared={compared}")
    return record


if __name__ == "__main__":
    main()
