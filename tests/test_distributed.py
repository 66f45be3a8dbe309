"""Data-parallel training, sharded sampling and sharded coherence with 2 gloo processes started by torchrun.

Each test launches ``python -m torch.distributed.run --standalone --nproc_per_node N`` on a small
program (``tests/ddp_program.py``, which also runs ``tests/sharded_program.py``) and compares what rank 0 wrote
with the same program run in this process.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyro_mmvae.distributed as procs
from pyro_mmvae.cli import main
from pyro_mmvae.data import MultimodalBatch
from pyro_mmvae.errors import InputTypeError
from pyro_mmvae.train.data_source import DataSource

sys.path.insert(0, str(Path(__file__).parent))
import ddp_program  # noqa: E402
import sharded_program  # noqa: E402

HERE = Path(__file__).parent


def torchrun(script, *args, nproc=2, env=None, check=True, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += [str(HERE / script), *map(str, args)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_MMVAE_KILL")}
    full_env.update({"OMP_NUM_THREADS": "1", **(env or {})})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def test_shard_bounds_cover_every_row_once_with_shares_differing_by_at_most_one():
    for n in (0, 1, 5, 16, 17):
        for size in (1, 2, 3, 5):
            bounds = [procs.shard_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_one_process_is_a_world_of_one():
    w = procs.world()
    assert (w.rank, w.size, w.is_main, w.distributed) == (0, 1, True, False)
    assert procs.init_from_env("cpu") == w  # no WORLD_SIZE: nothing to join
    assert procs.on_main(lambda x: x + 1, 1) == 2


def test_fit_refuses_to_run_alone_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    model, guide = ddp_program.build()
    with pytest.raises(procs.DistributedError, match="init_from_env"):
        ddp_program.fit(model, guide, ddp_program.dataset(), epochs=1, batch_size=16, progress=False)


def test_data_parallel_shards_need_a_dataset_or_a_list():
    batch = MultimodalBatch({"a": torch.zeros(5, 2)})
    shares = list(DataSource([batch], "train_data").shards(5, False, 0, 0, rank=1, size=2))
    assert [(s.batch_size, n) for s, n in shares] == [(2, 5)]  # rows 3..4 of 5
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    with pytest.raises(InputTypeError, match="data-parallel training needs a dataset"):
        list(DataSource(loader, "train_data").shards(5, False, 0, 0, rank=0, size=2))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    torchrun("ddp_program.py", out, 3)
    return out, torch.load(out / "result.pt", weights_only=False)


def test_two_processes_train_like_one_with_the_same_global_batch(two_process_run):
    out, result = two_process_run
    assert result["world"] == 2
    losses, params, _ = ddp_program.train(epochs=3)
    assert len(result["losses"]) == len(losses) == 3 * 7  # 101 rows in batches of 16: 7 steps per epoch
    # float32 rounding only: the batch mean is re-added from two partial sums (see pyro_mmvae.train.data_parallel)
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(losses), rtol=1e-5, atol=1e-5)
    for name, value in params.items():
        torch.testing.assert_close(result["params"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    rows = (out / "run" / "main" / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # one writer: a header and one row per epoch


def test_a_killed_rank_stops_the_others_with_a_clear_error_and_resume_continues(two_process_run, tmp_path):
    _, uninterrupted = two_process_run
    kill = {"PYRO_MMVAE_KILL_AT": "fit_step:main:10", "PYRO_MMVAE_KILL_RANK": "1"}  # mid-epoch 2
    proc = torchrun("ddp_program.py", tmp_path, 3, env=kill, check=False)
    assert proc.returncode != 0
    assert "rank 0:" in proc.stderr and "--resume" in proc.stderr, proc.stderr[-4000:]
    assert "at epoch 2, step 4 of that epoch (global step 11)" in proc.stderr  # rank 1 died after step 10
    saved = torch.load(tmp_path / "run" / "main" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1  # the last checkpoint, intact
    # another world size: this one process continues the 2-process checkpoint (same objective, float32 rounding)
    shutil.copytree(tmp_path / "run", tmp_path / "one" / "run")
    _, params, result = ddp_program.train(tmp_path / "one" / "run", epochs=3, resume=True)
    assert result.resumed_from == 1 and result.epochs_run == 3
    for name, value in uninterrupted["params"].items():
        torch.testing.assert_close(params[name], value, rtol=1e-4, atol=1e-5, msg=name)
    torchrun("ddp_program.py", tmp_path, 3, "resume")
    resumed = torch.load(tmp_path / "result.pt", weights_only=False)
    for name, value in uninterrupted["params"].items():
        assert torch.equal(resumed["params"][name], value), name  # same world size: bit-identical
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in uninterrupted["history"]]


def test_sharded_draws_and_coherence_do_not_depend_on_the_number_of_processes(two_process_run):
    two = two_process_run[1]["sharded"]
    torch.set_num_threads(1)
    one = sharded_program.draws()
    assert two["ranks"] == [0, 1, 0, 1] and one.ranks == [0, 0, 0, 0]
    assert torch.equal(two["samples"], one.samples)
    correct, count = sharded_program.coherence()
    assert (two["correct"], two["count"]) == (correct, count)
    assert sum(count.values()) == 3 * 8 * 9  # every (subset, target) pair of every row counted once


@pytest.mark.slow
def test_the_cli_trains_under_torchrun_and_resumes_after_a_killed_rank(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--dataset", "toy", "--model", "jnf", "--epochs", "2", "--expert-epochs", "1"]
    args += ["--train-size", "600", "--out", str(run), "--no-progress", "--device", "cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pyro_mmvae.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_MMVAE_KILL_AT": "fit_step:joint:7", "PYRO_MMVAE_KILL_RANK": "1"}
    proc = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0 and "rank 0:" in proc.stderr
    env.pop("PYRO_MMVAE_KILL_AT")
    proc = subprocess.run(cmd + args + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run / "metrics.json").exists() and (run / "experts_flow" / "checkpoint.pt").exists()
    # sharded evaluation gives one process's numbers (--run-dir: torchrun's parser would take --run)
    evaluate = ["evaluate", "--num-points", "300", "--batch-size", "100", "--no-progress", "--device", "cpu"]
    sharded = cmd + evaluate + ["--run-dir", str(run)]
    proc = subprocess.run(sharded, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = json.loads((run / "evaluation.json").read_text())
    assert main(evaluate + ["--run", str(run)]) == 0
    one = json.loads((run / "evaluation.json").read_text())
    assert two["coherence"]["per_pair"] == one["coherence"]["per_pair"]
