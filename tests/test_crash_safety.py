"""Runs survive SIGKILL exactly: temporary-file sweeps, per-stage seeds, best.pt repair, and the CLI killed
at several points of a ``--model jnf`` run, resumed, and compared bit for bit with an uninterrupted run.

Kill points are deterministic: the CLI subprocess is given ``PYRO_MMVAE_KILL_AT="<event>[:<detail>]:<n>"``
(:func:`pyro_mmvae.utils.kill_point`), and the library SIGKILLs itself at the n-th such event. (Polling the
run folder from the test would race with the writes it wants to interrupt.)
"""

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from pyro_mmvae.data import Modality, MultimodalDataset
from pyro_mmvae.guides import JointGuide
from pyro_mmvae.models import MultimodalVAE
from pyro_mmvae.tempfiles import create_temporary, is_temporary_name, sweep_temporary_files
from pyro_mmvae.train import callbacks, fit
from pyro_mmvae.train.checkpoint import load_checkpoint, save_checkpoint
from pyro_mmvae.train.run_files import StageFiles
from pyro_mmvae.utils import KILL_ENV, atomic_write_json, kill_point, stage_seed

posix_only = pytest.mark.skipif(os.name != "posix" or not hasattr(signal, "SIGKILL"), reason="SIGKILL and flock")


# ---------------------------------------------------------------------- temporary files


def test_temporary_names_are_recognised_and_nothing_else(tmp_path):
    fd, tmp = create_temporary(tmp_path / "checkpoint.pt")
    os.close(fd)
    assert is_temporary_name(Path(tmp).name) and Path(tmp).name.startswith(".checkpoint.pt.pyro-mmvae-")
    assert is_temporary_name(".checkpoint.pt.uiy6zq42.tmp")  # the naming before the pyro-mmvae tag (mkstemp's)
    fd, old = tempfile.mkstemp(prefix=".best.pt.", suffix=".tmp", dir=tmp_path)  # exactly as earlier versions
    os.close(fd)
    assert is_temporary_name(Path(old).name)
    for user_file in (
        "notes.tmp",
        ".checkpoint.pt.backup.tmp",
        ".checkpoint.pt.0123456789AB.tmp",
        ".mydata.npz.uiy6zq42.tmp",  # old naming, but not a file name of the library's
        ".x.pyro-mmvae-0123456789a.tmp",  # 11 hex digits
        "checkpoint.pt.pyro-mmvae-0123456789ab.tmp",  # no leading dot
        ".x.pyro-mmvae-0123456789ab.tmp.keep",
    ):
        assert not is_temporary_name(user_file), user_file


def test_sweep_removes_only_abandoned_library_temporaries(tmp_path):
    stage = tmp_path / "joint"
    stage.mkdir()
    stale = [stage / ".checkpoint.pt.pyro-mmvae-0123456789ab.tmp", tmp_path / ".metrics.json.abc_ef01.tmp"]
    keep = [stage / "notes.tmp", stage / ".best.pt.backup.tmp", tmp_path / ".data.npz.abcdef012345.tmp"]
    for p in stale + keep:
        p.write_bytes(b"partial")
    (stage / ".best.pt.pyro-mmvae-00000000000a.tmp").mkdir()  # a folder with a matching name stays
    (stage / ".log.csv.pyro-mmvae-00000000000b.tmp").symlink_to(stage / "notes.tmp")  # so does a link
    assert sweep_temporary_files(tmp_path) == [stale[1]]  # not recursive: the top folder only
    assert sweep_temporary_files(tmp_path, recursive=True) == [stale[0]]
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert (stage / ".best.pt.pyro-mmvae-00000000000a.tmp").is_dir()
    assert (stage / ".log.csv.pyro-mmvae-00000000000b.tmp").is_symlink()
    assert sweep_temporary_files(tmp_path / "missing") == []


@posix_only
def test_sweep_leaves_the_temporary_file_of_a_live_writer(tmp_path):
    fd, tmp = create_temporary(tmp_path / "checkpoint.pt")  # locked until closed, as inside atomic_write
    try:
        os.write(fd, b"half a checkpoint")
        assert sweep_temporary_files(tmp_path) == [] and Path(tmp).exists()
        os.replace(tmp, tmp_path / "checkpoint.pt")  # the writer finishes undisturbed
    finally:
        os.close(fd)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"half a checkpoint"
    fd, tmp = create_temporary(tmp_path / "best.pt")
    os.close(fd)  # the writer is gone (what a kill does to its lock): the leftover is swept
    assert sweep_temporary_files(tmp_path) == [Path(tmp)]


@posix_only
def test_kill_point_kills_at_the_nth_matching_event_only(monkeypatch):
    code = (
        "from pyro_mmvae.utils import kill_point\n"
        "for i in range(1, 4):\n"
        "    kill_point('atomic_write:mid', 'log.csv'); kill_point('atomic_write:mid', 'best.pt')\n"
        "    print(i, flush=True)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, KILL_ENV: "atomic_write:mid:best.pt:2"}, capture_output=True
    )
    assert run.returncode == -signal.SIGKILL and run.stdout.split() == [b"1"]
    monkeypatch.delenv(KILL_ENV, raising=False)
    kill_point("atomic_write:mid", "best.pt")  # unset: nothing happens


def test_kill_point_rejects_a_malformed_setting(monkeypatch):
    monkeypatch.setenv(KILL_ENV, "stage_end")
    with pytest.raises(ValueError, match=KILL_ENV):
        kill_point("stage_end", "joint")


# ---------------------------------------------------------------------- stage seeds


def test_stage_seed_is_stable_and_depends_on_run_seed_and_stage():
    assert stage_seed(0, "joint") == 192966970  # a fixed hash: the same in every process and version
    seeds = {stage_seed(s, st) for s in (0, 1, 2) for st in ("joint", "experts_gaussian", "experts_flow")}
    assert len(seeds) == 9 and all(0 <= s < 2**32 for s in seeds)
    with pytest.raises(TypeError, match="run_seed"):
        stage_seed(1.5, "joint")
    with pytest.raises(TypeError, match="stage"):
        stage_seed(0, "")


# ---------------------------------------------------------------------- best.pt follows checkpoint.pt

LINEAR = (Modality("a", (3,), likelihood="normal", scale=0.1), Modality("b", (2,), likelihood="normal", scale=0.1))


def _linear_fit(run_dir, epochs, resume=False):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(96, 2, generator=g)
    data = MultimodalDataset({"a": z @ torch.ones(2, 3), "b": z @ torch.ones(2, 2)}, modalities=LINEAR)
    torch.manual_seed(0)
    model = MultimodalVAE(LINEAR, 2, hidden=(8,))
    guide = JointGuide(LINEAR, 2, head_dim=4, hidden=(8,), merge_hidden=(8,))
    common = dict(batch_size=32, lr=1e-2, seed=0, progress=False, run_dir=run_dir, resume=resume)
    return fit(model, guide, data, val_data=data, epochs=epochs, **common)


def test_resume_rewrites_a_best_pt_that_disagrees_with_the_checkpoint(tmp_path):
    _linear_fit(tmp_path, epochs=3)
    stage = tmp_path / "main"
    ck = load_checkpoint(stage / "checkpoint.pt")
    best_epoch = ck["early_stopping"]["best_epoch"]
    good = torch.load(stage / "best.pt", weights_only=True)
    assert good["epoch"] == best_epoch
    # a kill between the checkpoint write and the best.pt write of the old order: best.pt one epoch behind
    stale = {**good, "epoch": max(best_epoch - 1, 0), "model": {k: v + 1 for k, v in good["model"].items()}}
    save_checkpoint(stale, stage / "best.pt")
    _linear_fit(tmp_path, epochs=3, resume=True)  # the finished stage is loaded, best.pt repaired
    repaired = torch.load(stage / "best.pt", weights_only=True)
    assert repaired["epoch"] == best_epoch and repaired["val_loss"] == good["val_loss"]
    for key in ("model", "guide"):
        assert repaired[key].keys() == good[key].keys()
        assert all(torch.equal(repaired[key][k], good[key][k]) for k in good[key])
    # without a best epoch (a checkpoint that never validated), a best.pt is stale and removed
    atomic_write_json(stage / "unrelated.json", {"kept": True})
    assert StageFiles(tmp_path, "main").repair_best({**ck, "early_stopping": {"best_epoch": None}, "best": None})
    assert not (stage / "best.pt").exists() and (stage / "unrelated.json").exists()


def test_best_pt_is_written_before_the_checkpoint(tmp_path, monkeypatch):
    order = []
    real_save = callbacks.save_checkpoint
    monkeypatch.setattr(
        callbacks, "save_checkpoint", lambda obj, path: order.append(Path(path).name) or real_save(obj, path)
    )
    _linear_fit(tmp_path, epochs=2)
    assert order == ["best.pt", "checkpoint.pt"] * 2


# ---------------------------------------------------------------------- the CLI killed and resumed

TINY = [
    "--model",
    "jnf",
    "--epochs",
    "2",
    "--expert-epochs",
    "2",
    "--train-size",
    "64",  # 2 steps per epoch
    "--val-size",
    "32",
    "--test-size",
    "32",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--no-progress",
]
STAGES = ("joint", "experts_gaussian", "experts_flow")


def _cli(out: Path, args=TINY, kill: str | None = None, resume: bool = False, background: bool = False):
    """``python -m pyro_mmvae.cli train`` in a subprocess with one thread (same numbers in every process)."""
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    if kill is not None:
        env[KILL_ENV] = kill
    cmd = [sys.executable, "-m", "pyro_mmvae.cli", "train", *args, "--out", str(out), *(["--resume"] if resume else [])]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc if background else _finish(proc)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> int:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"the CLI failed with {proc.returncode}:\n{out.decode(errors='replace')[-3000:]}")
    return proc.returncode


def _temporaries(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if is_temporary_name(p.name) or p.name.endswith(".tmp")]


def _assert_same(a, b, where: str) -> None:
    """Bit-equal nested checkpoint contents (tensors with torch.equal, dtype and shape)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _assert_runs_identical(resumed: Path, reference: Path, stages=STAGES) -> None:
    for stage in stages:
        ck = torch.load(resumed / stage / "checkpoint.pt", weights_only=True)
        ref = torch.load(reference / stage / "checkpoint.pt", weights_only=True)
        assert ck["finished"], stage
        ck["history"], ref["history"] = _untimed(ck["history"]), _untimed(ref["history"])
        _assert_same(ck, ref, f"{stage}/checkpoint.pt")  # weights, optimizer, best weights, RNG states, history
        if ck["early_stopping"]["best_epoch"] is None:  # no validation data (the projectors): no best.pt
            assert not (resumed / stage / "best.pt").exists() and not (reference / stage / "best.pt").exists()
        else:
            best = torch.load(resumed / stage / "best.pt", weights_only=True)
            assert best["epoch"] == ck["early_stopping"]["best_epoch"], f"{stage}: best.pt disagrees with checkpoint"
            _assert_same(best, torch.load(reference / stage / "best.pt", weights_only=True), f"{stage}/best.pt")
        with open(resumed / stage / "log.csv") as f, open(reference / stage / "log.csv") as g:
            assert _untimed(list(csv.DictReader(f))) == _untimed(list(csv.DictReader(g))), f"{stage}/log.csv"
    metrics, expected = (json.loads((run / "metrics.json").read_text()) for run in (resumed, reference))
    for m in (metrics, expected):
        del m["train"]["seconds"]
    assert metrics == expected
    assert _temporaries(resumed) == []


@posix_only
def test_jnf_run_killed_at_several_points_resumes_bit_exactly(tmp_path):
    """One uninterrupted run (in the background) and one run killed four times, each resume killed at the next point."""
    reference = _cli(tmp_path / "reference", background=True)
    run = tmp_path / "killed"
    # 1. mid-write of the joint stage's epoch-2 checkpoint: a partial temporary file is left
    assert _cli(run, kill="atomic_write:mid:checkpoint.pt:2") == -signal.SIGKILL
    assert [p.parent.name for p in _temporaries(run)] == ["joint"]
    assert load_checkpoint(run / "joint" / "checkpoint.pt")["epoch"] == 1
    # 2. just after the Gaussian-expert stage finished, before the flow-expert stage begins
    assert _cli(run, resume=True, kill="stage_end:experts_gaussian:1") == -signal.SIGKILL
    assert _temporaries(run) == [] and load_checkpoint(run / "experts_gaussian" / "checkpoint.pt")["finished"]
    assert not (run / "experts_flow").exists()
    # 3. mid-epoch: after the first step of the flow stage's second epoch
    assert _cli(run, resume=True, kill="fit_step:experts_flow:3") == -signal.SIGKILL
    assert load_checkpoint(run / "experts_flow" / "checkpoint.pt")["epoch"] == 1
    # 4. the flow stage's last checkpoint complete in its temporary file, not yet renamed (best.pt already is)
    assert _cli(run, resume=True, kill="atomic_write:before_replace:checkpoint.pt:1") == -signal.SIGKILL
    assert [p.parent.name for p in _temporaries(run)] == ["experts_flow"]
    # the resume to the end (the finished stages are loaded, not retrained)
    assert _cli(run, resume=True) == 0
    assert _finish(reference) == 0
    _assert_runs_identical(run, tmp_path / "reference")


@posix_only
@pytest.mark.slow
def test_more_kill_points_with_projectors_resume_bit_exactly(tmp_path):
    """jnf-shared (projector stage too): kills during best.pt writes, in the joint stage and between stages."""
    args = [*TINY[2:], "--model", "jnf-shared", "--projector-epochs", "2"]
    stages = ("joint", "projectors", "experts_gaussian", "experts_flow", "experts_shared")
    reference = _cli(tmp_path / "reference", args=args, background=True)
    run = tmp_path / "killed"
    kills = (
        "fit_step:joint:1",  # the very first step: no checkpoint yet
        "atomic_write:mid:best.pt:1",  # the joint stage's first best.pt
        "atomic_write:before_replace:best.pt:2",  # best.pt of epoch 2 ready, not renamed
        "stage_end:joint:1",  # the joint stage finished, before its evaluation and the projectors
        "atomic_write:before_replace:checkpoint.pt:1",  # the projectors' epoch-1 checkpoint
        "stage_end:projectors:1",
        "fit_step:experts_shared:2",
    )
    for i, kill in enumerate(kills):
        assert _cli(run, args=args, resume=i > 0, kill=kill) == -signal.SIGKILL, kill
    assert _cli(run, args=args, resume=True) == 0
    assert _finish(reference) == 0
    _assert_runs_identical(run, tmp_path / "reference", stages)
