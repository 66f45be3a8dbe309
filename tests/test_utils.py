import json
import os
import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_mmvae.utils import atomic_write, atomic_write_json, resolve_device, set_seed


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
