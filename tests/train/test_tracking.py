"""MLflow and W&B trackers: what reaches the tracked run, one run per run folder, no repeated epochs."""

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from pyro_mmvae.data import Modality, MultimodalDataset
from pyro_mmvae.guides import JointGuide
from pyro_mmvae.models import MultimodalVAE
from pyro_mmvae.train import fit
from pyro_mmvae.train.tracking import METRIC_COLUMNS, TRACKING_FILE, MLflowLogger, WandbLogger, flatten, tracker
from tests.common import Interrupt, interrupt_after

MODS = (Modality("a", (3,), likelihood="normal", scale=0.1), Modality("b", (2,), likelihood="normal", scale=0.1))


def tiny_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    data = {
        "a": z @ torch.ones(2, 3) + 0.1 * torch.randn(n, 3, generator=g),
        "b": z + 0.1 * torch.randn(n, 2, generator=g),
    }
    return MultimodalDataset(data, modalities=MODS)


def train(run_dir, callbacks, stage="main", **settings):
    """A fresh tiny model/guide pair fitted in ``run_dir`` (2 steps per epoch, with validation)."""
    torch.manual_seed(0)
    model = MultimodalVAE(MODS, 2, hidden=(8,))
    guide = JointGuide(MODS, 2, head_dim=4, hidden=(8,), merge_hidden=(8,))
    return fit(
        model,
        guide,
        tiny_data(),
        val_data=tiny_data(16, seed=1),
        batch_size=16,
        lr=1e-2,
        progress=False,
        run_dir=run_dir,
        stage=stage,
        callbacks=callbacks,
        **settings,
    )


@pytest.fixture
def png(tmp_path):
    from PIL import Image

    path = tmp_path / "figs" / "recon.png"
    path.parent.mkdir()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)
    return path


def saved_entry(run_dir, backend):
    return json.loads((Path(run_dir) / TRACKING_FILE).read_text())[backend]


# ---------------------------------------------------------------------- MLflow


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # read when mlflow is imported: no network
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # the logger opts into MLflow's file store through this variable; monkeypatch undoes that
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    pytest.importorskip("mlflow", reason="MLflow tests need: pip install mlflow")
    return tmp_path / "mlruns"  # a plain folder: turned into a file:// URI


def points(log, key):
    return [(m.step, m.value) for m in log.client.get_metric_history(log.run_id, key)]


def expected(history, column):
    return [(r["epoch"], float(r[column])) for r in history if r[column] is not None]


def runs_of(log):
    exp = log.client.get_experiment_by_name(log.experiment)
    return log.client.search_runs([exp.experiment_id])


def test_mlflow_params_metrics_and_figures(tmp_path, mlflow_uri, png, monkeypatch):
    monkeypatch.setattr("mlflow.utils.validation.MAX_PARAM_VAL_LENGTH", 40)  # the logger truncates to it
    run_dir = tmp_path / "run"
    log = tracker("mlflow", run_dir, tracking_uri=mlflow_uri)
    assert isinstance(log, MLflowLogger)
    res = train(run_dir, [log], epochs=3)
    assert log.client.tracking_uri == mlflow_uri.resolve().as_uri()
    run = log.client.get_run(log.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["main.epochs"] == "3" and params["main.batch_size"] == "16" and params["main.lr"] == "0.01"
    assert params["main.optimizer.name"] == "adam" and params["main.beta.kind"] == "constant"
    assert params["main.trained_parameters"].startswith('["') and len(params["main.trained_parameters"]) == 40
    assert run.data.tags["versions.torch"] == str(torch.__version__)
    for column in METRIC_COLUMNS:
        assert points(log, f"main/{column}") == expected(res.history, column), column
    assert saved_entry(run_dir, "mlflow")["run_id"] == log.run_id
    assert saved_entry(run_dir, "mlflow")["logged"] == {"main": 3}

    assert log.log_figures([png]) == ["figures/recon.png"]
    (png.parent / "sub").mkdir()
    (png.parent / "sub" / "b.png").write_bytes(png.read_bytes())
    assert log.log_artifacts(png.parent, prefix="plots") == ["plots/recon.png", "plots/sub/b.png"]
    artifacts = Path(unquote(urlparse(run.info.artifact_uri).path))
    assert (artifacts / "figures" / "recon.png").read_bytes() == png.read_bytes()
    assert (artifacts / "plots" / "sub" / "b.png").is_file()
    with pytest.raises(FileNotFoundError, match="missing.png"):
        log.log_figures([tmp_path / "missing.png"])


def test_mlflow_resume_continues_the_same_run(tmp_path, mlflow_uri):
    run_dir = tmp_path / "run"
    first = tracker("mlflow", run_dir, tracking_uri=mlflow_uri)
    train(run_dir, [first], epochs=2)
    second = tracker("mlflow", run_dir, tracking_uri=mlflow_uri)  # as a new process would
    res = train(run_dir, [second], epochs=4, resume=True)
    assert res.resumed_from == 2 and second.run_id == first.run_id and len(runs_of(second)) == 1
    for column in METRIC_COLUMNS:
        assert points(second, f"main/{column}") == expected(res.history, column), column
    run = second.client.get_run(second.run_id)
    # params are immutable in MLflow: the setting changed on resume is a tag
    assert run.data.params["main.epochs"] == "2" and run.data.tags["main.epochs"] == "4"


def test_mlflow_epochs_rerun_after_the_checkpoint_are_not_repeated(tmp_path, mlflow_uri):
    run_dir = tmp_path / "run"
    log = tracker("mlflow", run_dir, tracking_uri=mlflow_uri)
    with pytest.raises(Interrupt):  # epoch 3 is sent, the checkpoint stays at epoch 2
        train(run_dir, [log, interrupt_after(3)], epochs=4, checkpoint_every=2)
    assert log.client.get_run(log.run_id).info.status == "FAILED"
    res = train(
        run_dir, [tracker("mlflow", run_dir, tracking_uri=mlflow_uri)], epochs=4, checkpoint_every=2, resume=True
    )
    assert res.resumed_from == 2
    # exact resume: the re-run epoch 3 has the values sent before the interruption
    assert points(log, "main/train_loss") == expected(res.history, "train_loss")


def test_mlflow_stages_of_one_run_folder_share_one_run(tmp_path, mlflow_uri):
    run_dir = tmp_path / "run"
    log = tracker("mlflow", run_dir, tracking_uri=mlflow_uri)
    joint = train(run_dir, [log], stage="joint", epochs=2)
    flows = train(run_dir, [log], stage="flows", epochs=1)
    other = tracker("mlflow", run_dir, tracking_uri=mlflow_uri)  # a new logger, same folder
    last = train(run_dir, [other], stage="last", epochs=1)
    assert other.run_id == log.run_id and len(runs_of(log)) == 1
    for stage, res in (("joint", joint), ("flows", flows), ("last", last)):
        assert points(log, f"{stage}/val_loss") == expected(res.history, "val_loss")
    params = log.client.get_run(log.run_id).data.params
    assert (params["joint.epochs"], params["flows.epochs"], params["last.epochs"]) == ("2", "1", "1")
    assert saved_entry(run_dir, "mlflow")["logged"] == {"joint": 2, "flows": 1, "last": 1}


def test_mlflow_refuses_a_run_folder_tracked_elsewhere(tmp_path, mlflow_uri, png):
    run_dir = tmp_path / "run"
    tracker("mlflow", run_dir, tracking_uri=mlflow_uri).log_figures([png])
    other = tracker("mlflow", run_dir, tracking_uri=f"file://{tmp_path}/elsewhere")
    with pytest.raises(ValueError, match="pass that tracking_uri"):
        other.log_figures([png])


def test_flatten_gives_dotted_keys_and_string_values():
    assert dict(flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}})) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "None",
        "e": "{}",
    }


# ---------------------------------------------------------------------- W&B (offline)


def wandb_records(path):
    """The protobuf records of a ``.wandb`` file (a LevelDB-style log: 7-byte header, 32 KiB blocks of
    chunks ``crc32 | length u16 | type u8 | data`` with types full=1, first=2, middle=3, last=4)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        pytest.skip(f"unknown .wandb file format in this wandb version ({data[:7]!r})")
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def finished_records(path, timeout=30.0):
    """The records of a ``.wandb`` file once W&B's writer has appended the run's exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)  # the writer is a separate process: finish() may return before its last flush


def offline_history(run_dir):
    """``(run ids, history rows, config keys)`` of every offline W&B folder under ``run_dir``."""
    ids, rows, config = [], [], set()
    for path in sorted((Path(run_dir) / "wandb").glob("offline-run-*/*.wandb")):
        for record in finished_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.append(record.run.run_id)
            elif kind == "history":
                items = record.history.item
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
            elif kind == "config":
                config |= {i.key or i.nested_key[0] for i in record.config.update}
    return ids, rows, config


def test_wandb_offline_history_resume_and_figures(tmp_path, monkeypatch, png):
    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(var, value)  # offline: files only, no account, no network
    pytest.importorskip("wandb", reason="W&B tests need: pip install wandb")
    run_dir = tmp_path / "run"
    log = tracker("wandb", run_dir)
    assert isinstance(log, WandbLogger)
    train(run_dir, [log], epochs=2)
    res = train(run_dir, [tracker("wandb", run_dir)], epochs=3, resume=True)
    assert log.log_figures([png]) == ["figures/recon.png"]

    ids, rows, config = offline_history(run_dir)
    assert len(ids) == 3 and set(ids) == {log.run_id}  # two fits and the figures: one run id
    assert saved_entry(run_dir, "wandb") == {"run_id": log.run_id, "logged": {"main": 3}, "project": "pyro-mmvae"}
    epochs = sorted((r for r in rows if "main/epoch" in r), key=lambda r: r["main/epoch"])
    assert [r["main/epoch"] for r in epochs] == [1, 2, 3]  # each exactly once
    for column in ("step", "train_loss", "val_loss", "beta", "lr"):
        assert [r[f"main/{column}"] for r in epochs] == [h[column] for h in res.history], column
    assert any(key.startswith("figures/recon/") for r in rows for key in r)  # an image: nested keys
    assert {"main", "versions"} <= config


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("name, cls", [("mlflow", "MLflowLogger"), ("wandb", "WandbLogger")])
def test_missing_package_names_the_pip_command(tmp_path, monkeypatch, name, cls):
    monkeypatch.setitem(sys.modules, name, None)  # import name -> ImportError
    with pytest.raises(ImportError, match=rf"{cls} needs .*pip install {name} .*pyro-mmvae\[{name}\]"):
        tracker(name, tmp_path)


def test_module_imports_without_the_packages():
    code = (
        "import sys; sys.modules['mlflow'] = sys.modules['wandb'] = None\n"
        "import pyro_mmvae.train.tracking as t\n"
        "assert t.tracker and t.MLflowLogger and t.WandbLogger\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_unknown_tracker_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"'bogus'.*mlflow, wandb"):
        tracker("bogus", tmp_path)
