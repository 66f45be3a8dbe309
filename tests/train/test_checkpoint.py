import os
import random

import numpy as np
import pytest
import torch

from pyro_mmvae.train.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    check_plain,
    check_signature,
    get_rng_state,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    set_rng_state,
    state_signature,
)


def _draws():
    return (
        torch.randn(4).tolist(),
        np.random.randn(3).tolist(),
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
    )


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    np.random.randn()  # and one in NumPy's
    save_checkpoint({"rng": get_rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    _draws()  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == expected


def test_rng_state_holds_only_plain_values():
    state = get_rng_state()
    check_plain(state)
    assert state["torch"].dtype == torch.uint8
    assert state["numpy"]["keys"].shape == (624,)
    assert len(state["python"]["state"]) == 625


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def partial_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # a half-written file...
        raise OSError("disk full")  # ...and the writer dies

    monkeypatch.setattr(torch, "save", partial_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    saved = load_checkpoint(path)
    assert saved["epoch"] == 1 and torch.equal(saved["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_save_checkpoint_refuses_pickled_objects(tmp_path):
    class Thing:
        pass

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(TypeError, match=r"checkpoint\['cfg'\]\['thing'\] is a .*Thing"):
        save_checkpoint({"cfg": {"thing": Thing()}}, path)
    with pytest.raises(TypeError, match="TorchVersion"):
        save_checkpoint({"version": torch.__version__}, path)
    assert not path.exists()


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(corrupt)
    good = tmp_path / "good.pt"
    save_checkpoint({"w": torch.ones(2)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(truncated)
    pickled = tmp_path / "pickled.pt"
    torch.save({"f": np.float64}, pickled)  # a global that weights_only refuses
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(pickled)
    not_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_dict)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(not_dict)


def test_signature_check_names_the_differences():
    saved = state_signature(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)))
    check_signature(saved, torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)), "model")
    with pytest.raises(
        CheckpointMismatchError, match=r"shape mismatches: 0.weight: checkpoint \(4, 3\) vs model \(5, 3\)"
    ):
        check_signature(saved, torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)), "model")
    with pytest.raises(CheckpointMismatchError, match=r"in the checkpoint but not in the guide: 1.weight, 1.bias"):
        check_signature(saved, torch.nn.Sequential(torch.nn.Linear(3, 4)), "guide", "ck.pt")


def test_load_weights():
    src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    load_weights(dst, src.state_dict(), "model")
    assert torch.equal(dst.weight, src.weight)
    with pytest.raises(CheckpointMismatchError, match="does not match this model"):
        load_weights(torch.nn.Linear(2, 2), src.state_dict(), "model")
