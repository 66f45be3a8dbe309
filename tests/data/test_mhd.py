"""MHD on small generated files of the published format: a ``torch.save``'d 6-tuple (labels, images,
trajectories, sounds, trajectory_normalization, sound_normalization) with min-max normalised values and
sound spectrograms stored as stacks ``(N, C, H, 32)`` with ``C * H = 128``.
"""

import numpy as np
import pytest
import torch

from pyro_mmvae.data import iterate_batches
from pyro_mmvae.data.mhd import DRIVE_IDS, MHD, load_mhd, mhd_file, save_mhd, unstack_sounds
from pyro_mmvae.errors import InputError

TRAJ_NORM = {"min": -1.25, "max": 2.5}
SOUND_NORM = {"min": np.float32(-80.0), "max": np.float64(12.5)}  # NumPy scalars, as a NumPy pipeline leaves them


def fields(n=40, seed=0, stack=(4, 32)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.rand(n, 1, 28, 28, generator=g)
    trajectories = torch.rand(n, 200, generator=g)
    sounds = torch.rand(n, *stack, 32, generator=g)
    return [labels, images, trajectories, sounds, dict(TRAJ_NORM), dict(SOUND_NORM)]


def authors_unstack(item):
    """The authors' per-item transform: concatenate the stack's blocks along dim 0, then swap the axes."""
    return torch.cat([item[i] for i in range(item.size(0))], dim=0).unsqueeze(0).permute(0, 2, 1)


@pytest.fixture
def root(tmp_path):
    for split, n in (("train", 60), ("test", 20)):
        save_mhd(mhd_file(tmp_path, split), *fields(n, seed=n))
    return tmp_path


def test_shapes_dtypes_and_values(root):
    raw = fields(60, seed=60)
    ds = MHD(root, "train")
    assert len(ds) == 60 and ds.names == ["image", "sound", "trajectory"]
    batch = ds.__getitems__(list(range(60)))
    batch.validate(ds.modalities)
    shapes = {k: tuple(v.shape[1:]) for k, v in batch.data.items()}
    assert shapes == {"image": (1, 28, 28), "sound": (1, 32, 128), "trajectory": (200,)}
    assert all(v.dtype == torch.float32 for v in batch.data.values())
    assert batch.labels["digit"].dtype == torch.int64 and torch.equal(batch.labels["digit"], raw[0])
    assert torch.equal(batch.data["image"], raw[1]) and torch.equal(batch.data["trajectory"], raw[2])
    expected_sound = torch.stack([authors_unstack(a) for a in raw[3]])
    assert torch.equal(batch.data["sound"], expected_sound)
    assert ds.trajectory_normalization == TRAJ_NORM
    assert ds.sound_normalization == {"min": -80.0, "max": 12.5}
    assert torch.allclose(ds.denormalize("sound", torch.tensor([0.0, 1.0])), torch.tensor([-80.0, 12.5]))
    assert torch.allclose(ds.denormalize("trajectory", torch.tensor([0.5])), torch.tensor([0.625]))
    with pytest.raises(InputError, match="only 'sound' and 'trajectory'"):
        ds.denormalize("image", batch.data["image"])


@pytest.mark.parametrize("stack", [(4, 32), (1, 128), (2, 64)], ids=["4x32x32", "1x128x32", "2x64x32"])
def test_every_stack_layout_unstacks_like_the_authors_loader(stack):
    sounds = torch.rand(3, *stack, 32)
    out = unstack_sounds(sounds)
    assert out.shape == (3, 1, 32, 128) and out.is_contiguous()
    assert torch.equal(out, torch.stack([authors_unstack(a) for a in sounds]))
    c, h = stack[0] - 1, stack[1]  # the last block
    assert out[1, 0, 5, c * h + 2] == sounds[1, c, 2, 5]  # time 5, mel bin c * H + 2 = block c, row 2


def test_final_layout_passes_through(tmp_path):
    f = fields(10, stack=(1, 32))
    f[3] = torch.rand(10, 1, 32, 128)
    save_mhd(mhd_file(tmp_path, "test"), *f)
    assert torch.equal(load_mhd(mhd_file(tmp_path, "test"))["sound"], f[3])


def test_missingness_size_and_determinism(root):
    ds = MHD(root, "train", missing_rate=0.4, missing_seed=3)
    stacked = torch.stack([ds.full.present[m] for m in ds.names], dim=1)
    assert stacked.any(dim=1).all()
    n = len(ds) * 3
    observed = 1 - stacked.float().mean().item()
    assert abs(observed - 0.4) < 4 * np.sqrt(0.4 * 0.6 / n)
    batch = ds.__getitems__(list(range(len(ds))))
    for name in ds.names:
        assert torch.all(batch.data[name][~batch.present[name]] == 0)
    again = MHD(root, "train", missing_rate=0.4, missing_seed=3)
    assert all(torch.equal(again.full.present[m], ds.full.present[m]) for m in ds.names)
    small, same = MHD(root, "train", size=15, seed=1), MHD(root, "train", size=15, seed=1)
    other = MHD(root, "train", size=15, seed=2)
    full = MHD(root, "train")
    assert len(small) == 15 and torch.equal(small.full.data["image"], same.full.data["image"])
    assert not torch.equal(small.full.labels["digit"], other.full.labels["digit"])
    rows = [int(torch.nonzero((full.full.data["image"] == x).all(dim=(1, 2, 3)))[0]) for x in small.full.data["image"]]
    assert rows == sorted(rows)  # a subset in file order
    with pytest.raises(InputError, match="size=61 exceeds the 60 rows"):
        MHD(root, "train", size=61)
    assert sum(b.batch_size for b in iterate_batches(MHD(root, "test"), 8)) == 20


def test_transform(root):
    plain = MHD(root, "test").__getitems__([0, 1, 2])
    doubled = MHD(root, "test", transform={"trajectory": lambda t: 2 * t}).__getitems__([0, 1, 2])
    assert torch.equal(doubled.data["trajectory"], 2 * plain.data["trajectory"])
    assert torch.equal(doubled.data["sound"], plain.data["sound"])
    shifted = MHD(root, "test", transform=lambda x: x - 0.5).__getitems__([0, 1, 2])
    assert all(torch.equal(shifted.data[k], plain.data[k] - 0.5) for k in plain.data)


def test_missing_file_names_the_path_and_the_url(tmp_path):
    with pytest.raises(InputError, match="mhd_test.pt not found") as info:
        MHD(tmp_path, "test")
    assert DRIVE_IDS["test"] in str(info.value)
    with pytest.raises(InputError, match="split must be one of"):
        MHD(tmp_path, "validation")


def test_download_path(tmp_path, monkeypatch):
    """No internet here: torchvision's Google Drive download is replaced by a writer of a small file."""
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_drive(file_id, root, filename, md5=None):
        calls.append((file_id, filename))
        save_mhd(tmp_path / filename, *fields(7))

    monkeypatch.setattr(tv_utils, "download_file_from_google_drive", fake_drive)
    assert len(MHD(tmp_path, "train", download=True)) == 7
    assert calls == [(DRIVE_IDS["train"], "mhd_train.pt")]

    def no_gdown(*args, **kwargs):
        raise RuntimeError("To download files from GDrive, 'gdown' is required.")

    monkeypatch.setattr(tv_utils, "download_file_from_google_drive", no_gdown)
    with pytest.raises(InputError, match="pip install gdown"):
        MHD(tmp_path, "test", download=True)


def _replace(index, value):
    def change(f):
        f[index] = value(f) if callable(value) else value
        return f

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f[:5], r"expected a 6-tuple .* found a list of 5 items"),
        (lambda f: {"labels": f[0]}, "found a dict"),
        (_replace(1, torch.rand(40, 28, 28)), r"images must have shape \(N, 1, 28, 28\), found \(40, 28, 28\)"),
        (_replace(2, torch.rand(40, 100)), r"trajectories must have shape \(N, 200\)"),
        (_replace(3, torch.rand(40, 3, 32, 32)), r"C \* H = 128"),
        (_replace(0, torch.arange(40) % 11), r"digits 0..9, found values in \[0, 10\]"),
        (_replace(0, lambda f: f[0].float()), "integer class indices"),
        (_replace(0, torch.zeros(39, dtype=torch.long)), r"disagree on the number of rows: .*'labels': 39"),
        (_replace(1, lambda f: f[1].masked_fill(f[1] > 0.99, float("nan"))), "non-finite"),
        (_replace(2, lambda f: f[2].long()), "trajectories must hold floats"),
        (_replace(4, {"lo": 0.0, "hi": 1.0}), r"trajectory_normalization must be a dict with keys 'min' and 'max'"),
        (_replace(5, {"min": 3.0, "max": 1.0}), "finite min < max"),
        (_replace(5, {"min": torch.zeros(2), "max": 1.0}), "single numbers"),
    ],
    ids=[
        "short-tuple",
        "not-a-tuple",
        "image-shape",
        "trajectory-shape",
        "sound-stack",
        "label-range",
        "float-labels",
        "row-counts",
        "nan-image",
        "int-trajectory",
        "norm-keys",
        "norm-order",
        "norm-not-scalar",
    ],
)
def test_content_errors_name_the_file(tmp_path, change, message):
    path = mhd_file(tmp_path, "train")
    torch.save(change(fields()), path)
    with pytest.raises(InputError, match=message) as info:
        MHD(tmp_path, "train")
    assert str(path) in str(info.value)


class Arbitrary:  # any pickled class: refused by weights_only loading
    pass


def test_unsafe_or_corrupt_files_are_refused(tmp_path):
    path = mhd_file(tmp_path, "train")
    f = fields()
    f[4] = Arbitrary()
    torch.save(f, path)
    with pytest.raises(InputError, match="object of class .*Arbitrary.* not loaded, for safety"):
        load_mhd(path)
    path.write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read MHD file"):
        load_mhd(path)


def test_numpy_1_pickles_of_the_bounds_load(tmp_path):
    """Files written under NumPy 1.x name NumPy scalars ``numpy.core.multiarray.scalar``; they must load."""
    import zipfile

    path, old = tmp_path / "new.pt", mhd_file(tmp_path, "test")
    save_mhd(path, *fields(5))
    renamed = False
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for info in src.infolist():
            content = src.read(info)
            if info.filename.endswith("data.pkl"):
                renamed = b"numpy._core.multiarray" in content
                content = content.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info, content)
    assert renamed
    assert MHD(tmp_path, "test").sound_normalization == {"min": -80.0, "max": 12.5}
