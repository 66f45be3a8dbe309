import json
import os
import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_mmvae.utils import (
    atomic_write,
    atomic_write_json,
    command_line,
    resolve_device,
    run_record,
    set_seed,
    to_jsonable,
)


def _draws():
    return (
        random.random(),
        float(np.random.rand()),
        torch.rand(3).tolist(),
        pyro.sample("x", dist.Normal(0.0, 1.0)).item(),
    )


def test_set_seed_reproduces_every_generator():
    set_seed(123)
    first = _draws()
    set_seed(123)
    assert _draws() == first
    set_seed(124)
    assert _draws() != first


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "3", True], ids=["negative", "too-big", "float", "str", "bool"])
def test_set_seed_rejects_bad_seeds(seed):
    with pytest.raises((TypeError, ValueError), match="seed"):
        set_seed(seed)


def test_resolve_device_auto_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_unknown_name():
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(TypeError, match="device must be"):
        resolve_device(3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without CUDA")
def test_resolve_device_unavailable_cuda():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resolve_device_cuda_index_out_of_range():
    with pytest.raises(RuntimeError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_atomic_write_json_round_trip(tmp_path):
    path = tmp_path / "sub" / "config.json"
    atomic_write_json(path, {"a": [1, 2], "b": None})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": None}
    assert sorted(os.listdir(path.parent)) == ["config.json"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    umask = os.umask(0)  # read the umask: set it, then put it back at once (single-threaded test)
    os.umask(umask)
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    os.chmod(path, 0o640)  # replacing a file keeps its mode, as open(path, "w") does
    atomic_write_json(path, {"a": 2})
    assert path.stat().st_mode & 0o777 == 0o640 and json.loads(path.read_text()) == {"a": 2}


def test_atomic_write_keeps_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"version": 1})

    def half_then_fail(f):
        f.write('{"version": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail, binary=False)
    assert json.loads(path.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["config.json"]  # the temporary file is gone


def test_atomic_write_keeps_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"version": 1})

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_json(path, {"version": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["config.json"]


def test_atomic_write_json_unserialisable_touches_nothing(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"version": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["config.json"]


def test_to_jsonable_gives_plain_json():
    x = {1: (np.float32(0.5), np.int64(3), float("nan")), "t": torch.zeros(2, 3), "o": object()}
    x["ok"] = [True, None, "s"]
    out = to_jsonable(x)
    assert out == {"1": [0.5, 3, None], "t": {"tensor": [2, 3], "dtype": "torch.float32"}, "o": "<object>",
                   "ok": [True, None, "s"]}  # fmt: skip
    assert type(out["1"][1]) is int and json.loads(json.dumps(out, allow_nan=False)) == out
    assert to_jsonable([float("inf"), -float("inf"), float("nan")], non_finite="repr") == ["inf", "-inf", "nan"]
    with pytest.raises(ValueError, match="non_finite"):
        to_jsonable(1.0, non_finite="zero")


def test_run_record_names_command_date_and_machine():
    rec = run_record(command_line("benchmarks/x.py", ["--out", "a b"]), device="cpu", threads=3, workers=2)
    assert rec["command"] == "python benchmarks/x.py --out 'a b'"
    assert list(rec)[:3] == ["command", "date", "machine"] and rec["workers"] == 2
    assert rec["date"].endswith("+00:00")
    m = rec["machine"]
    assert m["threads"] == 3 and m["device"] == "cpu" and m["cpu_count"] == os.cpu_count()
    assert m["torch"] == torch.__version__ and m["pyro"] == pyro.__version__ and m["cpu"]
    assert json.loads(json.dumps(rec)) == rec
