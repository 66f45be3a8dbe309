"""load_mnist on small generated IDX files (plain, gzip, torchvision layout) and, when present, the real files."""

import gzip

import numpy as np
import pytest

from pyro_mmvae.data import load_mnist, save_idx
from pyro_mmvae.data.mnist import FILES, read_idx
from pyro_mmvae.errors import InputError
from tests.common import SHARED_DATA


def write_split(folder, split, n=50, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    suffix = ".gz" if gz else ""
    save_idx(folder / (FILES[split][0] + suffix), images)
    save_idx(folder / (FILES[split][1] + suffix), labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_round_trip_dtypes_and_shapes(tmp_path, gz):
    images, labels = write_split(tmp_path, "test", n=37, gz=gz)
    x, y = load_mnist(tmp_path, "test")
    assert x.dtype == np.uint8 and x.shape == (37, 28, 28) and np.array_equal(x, images)
    assert y.dtype == np.int64 and np.array_equal(y, labels)


def test_torchvision_raw_layout(tmp_path):
    images, _ = write_split(tmp_path / "MNIST" / "raw", "train", n=12, gz=False)
    x, _ = load_mnist(tmp_path, "train")
    assert np.array_equal(x, images)


def test_gzip_is_recognised_by_content_not_suffix(tmp_path):
    name = FILES["test"][1]
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write((0x801).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    (tmp_path / name).write_bytes((tmp_path / "x.gz").read_bytes())  # compressed bytes, no .gz suffix
    assert read_idx(tmp_path / name, 1).tolist() == [1, 2, 3]


def test_content_errors_name_the_file(tmp_path):
    write_split(tmp_path, "test", n=10)
    labels = tmp_path / (FILES["test"][1] + ".gz")
    save_idx(labels, np.zeros(9, dtype=np.uint8))  # count mismatch
    with pytest.raises(InputError, match="10 images but .* 9 labels"):
        load_mnist(tmp_path, "test")
    save_idx(labels, np.zeros((10, 1), dtype=np.uint8))  # labels with two axes: wrong magic
    with pytest.raises(InputError, match="magic number"):
        load_mnist(tmp_path, "test")
    save_idx(labels, np.full(10, 11, dtype=np.uint8))
    with pytest.raises(InputError, match="digits 0..9"):
        load_mnist(tmp_path, "test")
    raw = gzip.decompress((tmp_path / (FILES["test"][0] + ".gz")).read_bytes())
    (tmp_path / (FILES["test"][0] + ".gz")).write_bytes(gzip.compress(raw[:-5]))  # truncated payload
    with pytest.raises(InputError, match="truncated"):
        load_mnist(tmp_path, "test")
    with pytest.raises(InputError, match="train-images-idx3-ubyte.*not found"):
        load_mnist(tmp_path, "train")
    with pytest.raises(InputError, match="split"):
        load_mnist(tmp_path, "validation")


def test_verify_rejects_a_non_official_file(tmp_path):
    write_split(tmp_path, "test", n=10)
    with pytest.raises(InputError, match="MD5"):
        load_mnist(tmp_path, "test", verify=True)


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="shared MNIST files absent")
def test_real_files_match_the_official_md5_and_sizes():
    x, y = load_mnist(SHARED_DATA / "mnist", "test", verify=True)
    assert x.shape == (10_000, 28, 28) and np.bincount(y).tolist()[:2] == [980, 1135]
