"""MNIST-SVHN(-Text) on small generated files of the real formats: MNIST IDX files and SVHN ``.mat`` files
written with ``scipy.io.savemat`` in SVHN's layout (``X`` uint8 (32, 32, 3, N), ``y`` (N, 1), 10 = digit 0).

Every generated image carries its own identity in its pixels (MNIST: the digit and the row number; SVHN:
the digit, and pixel values that depend on the channel, row and column), so the tests check the pairing
and the axis order from what the batches hold, not only from the index arrays.
"""

import numpy as np
import pytest
import scipy.io
import torch

from pyro_mmvae.data import iterate_batches, save_idx
from pyro_mmvae.data.mnist import FILES
from pyro_mmvae.data.mnist_svhn import (
    ALPHABET,
    DIGIT_WORDS,
    MAX_START,
    MNISTSVHN,
    SVHN_FILES,
    MNISTSVHNText,
    decode_text,
    encode_text,
    load_svhn,
    pair_by_label,
)
from pyro_mmvae.errors import InputError, InputTypeError

# class counts: MNIST has more 0s than SVHN (those surplus MNIST images go unused), SVHN more 1s
MNIST_COUNTS = {"train": [9, 4, 5, 3, 4, 3, 4, 3, 3, 2], "test": [3, 2, 2, 2, 2, 2, 2, 2, 2, 1]}
SVHN_COUNTS = {"train": [5, 8, 5, 4, 3, 3, 4, 3, 3, 3], "test": [3, 3, 2, 2, 2, 2, 2, 2, 2, 2]}


def shuffled_labels(counts, rng):
    return rng.permutation(np.repeat(np.arange(10), counts))


def write_mnist(root, split, rng):
    labels = shuffled_labels(MNIST_COUNTS[split], rng).astype(np.uint8)
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels * 20  # the digit, readable from the batch
    images[:, 0, 1] = np.arange(len(labels))  # the MNIST row
    save_idx(root / (FILES[split][0] + ".gz"), images)
    save_idx(root / FILES[split][1], labels)
    return labels.astype(np.int64)


def svhn_arrays(digits, rng):
    """SVHN layout: X (32, 32, 3, N) uint8 and y (N, 1) uint8 in 1..10 (10 = digit 0)."""
    n = len(digits)
    x = rng.integers(0, 200, (32, 32, 3, n)).astype(np.uint8)
    x[0, 0, 0, :] = np.asarray(digits) * 20  # row 0, column 0, channel 0: the digit
    x[5, 7, 2, :] = 250  # a marker at (channel 2, row 5, column 7) to catch a wrong axis order
    y = np.where(np.asarray(digits) == 0, 10, digits).astype(np.uint8).reshape(n, 1)
    return x, y


def write_svhn(root, split, rng, folder="SVHN"):
    digits = shuffled_labels(SVHN_COUNTS[split], rng)
    x, y = svhn_arrays(digits, rng)
    (root / folder).mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / folder / SVHN_FILES[split], {"X": x, "y": y})
    return digits.astype(np.int64), x


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist_svhn")
    rng = np.random.default_rng(0)
    files = {}
    for split in ("train", "test"):
        files[split] = (write_mnist(root, split, rng), *write_svhn(root, split, rng))
    return root, files


def expected_rows(split, k):
    return k * sum(min(a, b) for a, b in zip(MNIST_COUNTS[split], SVHN_COUNTS[split]))


@pytest.mark.parametrize("k", [1, 5, 20], ids=["k1", "k5", "k20"])
def test_pairs_match_labels_and_use_each_mnist_image_k_times(data_root, k):
    root, files = data_root
    mnist_labels, svhn_labels, _ = files["train"]
    ds = MNISTSVHN(root, "train", pairs_per_mnist=k)
    assert len(ds) == expected_rows("train", k)
    assert torch.equal(torch.from_numpy(mnist_labels)[ds.mnist_index], ds.labels)
    assert torch.equal(torch.from_numpy(svhn_labels)[ds.svhn_index], ds.labels)
    for c in range(10):  # MMVAE's cap: the first n_c images of each side, each used exactly k times
        n = min(MNIST_COUNTS["train"][c], SVHN_COUNTS["train"][c])
        used_mnist = np.flatnonzero(mnist_labels == c)[:n]
        used_svhn = np.flatnonzero(svhn_labels == c)[:n]
        counts_m = torch.bincount(ds.mnist_index, minlength=len(mnist_labels))
        counts_s = torch.bincount(ds.svhn_index, minlength=len(svhn_labels))
        assert counts_m[used_mnist].tolist() == [k] * n
        assert counts_s[used_svhn].tolist() == [k] * n
        assert counts_m[np.flatnonzero(mnist_labels == c)[n:]].sum() == 0  # surplus MNIST 0s unused
    assert (k * 5) in torch.bincount(ds.labels).tolist()  # digit 0: capped by SVHN's 5 images (label 10)


def test_batches_hold_the_paired_images(data_root):
    root, files = data_root
    mnist_labels, svhn_labels, svhn_x = files["test"]
    ds = MNISTSVHN(root, "test", pairs_per_mnist=3)
    batch = ds.__getitems__(list(range(len(ds))))
    batch.validate(ds.modalities)
    assert batch.data["mnist"].shape == (len(ds), 1, 28, 28) and batch.data["svhn"].shape == (len(ds), 3, 32, 32)
    assert batch.data["mnist"].dtype == torch.float32 and batch.labels["digit"].dtype == torch.int64
    for name in ("mnist", "svhn"):
        x = batch.data[name]
        assert 0 <= float(x.min()) and float(x.max()) <= 1
    digit_in_mnist = (batch.data["mnist"][:, 0, 0, 0] * 255 / 20).round().long()
    digit_in_svhn = (batch.data["svhn"][:, 0, 0, 0] * 255 / 20).round().long()
    assert torch.equal(digit_in_mnist, batch.labels["digit"]) and torch.equal(digit_in_svhn, batch.labels["digit"])
    rows = (batch.data["mnist"][:, 0, 0, 1] * 255).round().long()
    assert torch.equal(rows, ds.mnist_index)
    assert torch.all(batch.data["svhn"][:, 2, 5, 7] == 250 / 255)  # (H, W, C, N) -> (N, C, H, W)
    expected = torch.from_numpy(svhn_x.transpose(3, 2, 0, 1)[ds.svhn_index.numpy()]).float() / 255
    assert torch.equal(batch.data["svhn"], expected)


def test_seeded_determinism_and_size(data_root):
    root, _ = data_root
    a, b = MNISTSVHN(root, "train", seed=3), MNISTSVHN(root, "train", seed=3)
    c = MNISTSVHN(root, "train", seed=4)
    assert torch.equal(a.mnist_index, b.mnist_index) and torch.equal(a.svhn_index, b.svhn_index)
    assert not torch.equal(a.mnist_index, c.mnist_index)
    small = MNISTSVHN(root, "train", seed=3, size=40)
    assert len(small) == 40 and torch.equal(small.mnist_index, a.mnist_index[:40])
    assert len(small.labels.unique()) >= 8  # the rows are shuffled: a prefix spans the classes
    with pytest.raises(InputError, match="size=100000 exceeds"):
        MNISTSVHN(root, "train", size=100_000)


def test_pair_by_label_cap_and_disjoint_classes():
    a = np.array([0, 0, 0, 1, 2])
    b = np.array([0, 0, 1, 1, 1, 3])
    ia, ib = pair_by_label(a, b, k=2, seed=0, max_per_class=1)
    assert sorted(zip(a[ia].tolist(), b[ib].tolist())) == [(0, 0), (0, 0), (1, 1), (1, 1)]
    assert set(ia.tolist()) == {0, 3} and set(ib.tolist()) == {0, 2}  # the first image of each class


def test_missingness_rates_and_zero_rows(data_root):
    root, _ = data_root
    ds = MNISTSVHNText(root, "train", pairs_per_mnist=20, missing_rate={"svhn": 0.3, "text": 0.5}, missing_seed=1)
    n = len(ds)
    for name, rate in (("mnist", 0.0), ("svhn", 0.3), ("text", 0.5)):
        observed = 1 - ds.full.present[name].float().mean().item()
        assert abs(observed - rate) < 4 * np.sqrt(rate * (1 - rate) / n) + 1e-9, (name, observed)
    stacked = torch.stack([ds.full.present[m] for m in ds.names], dim=1)
    assert stacked.any(dim=1).all()
    batch = ds.__getitems__(list(range(n)))
    for name in ds.names:
        gone = ~batch.present[name]
        assert torch.all(batch.data[name][gone] == 0)
        assert torch.all(batch.data[name][~gone].flatten(1).amax(dim=1) > 0)
    again = MNISTSVHNText(root, "train", pairs_per_mnist=20, missing_rate={"svhn": 0.3, "text": 0.5}, missing_seed=1)
    assert all(torch.equal(again.full.present[m], ds.full.present[m]) for m in ds.names)


def test_text_modality_spells_the_digit(data_root):
    root, _ = data_root
    ds = MNISTSVHNText(root, "train", pairs_per_mnist=20, seed=2)
    batch = ds.__getitems__(list(range(len(ds))))
    batch.validate(ds.modalities)
    text = batch.data["text"]
    assert text.shape == (len(ds), 8, 71) and text.dtype == torch.float32
    assert torch.all(text.sum(-1) == 1)  # one-hot at every position
    words = decode_text(text)
    assert [w.strip() for w in words] == [DIGIT_WORDS[d] for d in batch.labels["digit"].tolist()]
    starts = torch.tensor([len(w) - len(w.lstrip(" ")) for w in words])
    assert torch.equal(starts, ds.text_starts)
    assert torch.all(starts <= MAX_START[batch.labels["digit"]])  # MoPoE: the last position stays blank
    three = starts[batch.labels["digit"] == 3]
    assert set(three.tolist()) == {0, 1, 2}  # every allowed start occurs for "three" (MAX_START 2)
    again = MNISTSVHNText(root, "train", pairs_per_mnist=20, seed=2)
    assert torch.equal(again.text_starts, ds.text_starts)


def test_text_encoding_round_trip_and_alphabet():
    assert len(ALPHABET) == 71 and ALPHABET.index(" ") == 69 and ALPHABET[:3] == "abc" and ALPHABET[26:28] == "01"
    words = ["  seven ", "one", "{x}-9"]
    codes = encode_text(words)
    assert codes.shape == (3, 8, 71) and torch.all(codes.sum(-1) == 1)
    assert decode_text(codes) == [w.ljust(8) for w in words]
    assert decode_text(encode_text("two")) == "two     "
    logits = torch.randn(2, 8, 71)
    assert decode_text(logits) == ["".join(ALPHABET[i] for i in row) for row in logits.argmax(-1).tolist()]
    with pytest.raises(InputError, match="not in the 71-symbol"):
        encode_text("ÄÖ")
    with pytest.raises(InputError, match="more than length=8"):
        encode_text("seventeen")
    with pytest.raises(InputError, match=r"shape \(B, L, 71\)"):
        decode_text(torch.zeros(2, 8, 70))
    with pytest.raises(InputTypeError):
        decode_text(np.zeros((8, 71)))


def test_loader_and_iterate_batches(data_root):
    root, _ = data_root
    ds = MNISTSVHN(root, "test")
    batches = list(iterate_batches(ds, 7, seed=0))
    assert sum(b.batch_size for b in batches) == len(ds)
    assert torch.equal(torch.cat([b.labels["digit"] for b in batches]).sort().values, ds.labels.sort().values)
    first = next(iter(MNISTSVHN(root, "test").loader(batch_size=5)))
    assert first.data["mnist"].shape == (5, 1, 28, 28)
    item = MNISTSVHN(root, "test")[3]
    assert item["data"]["svhn"].shape == (3, 32, 32) and item["labels"]["digit"].dim() == 0


# ----------------------------------------------------------------------------------------- errors


def save_mat(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, arrays)


def test_svhn_label_10_is_digit_0_and_torchvision_layout(tmp_path):
    rng = np.random.default_rng(0)
    x, y = svhn_arrays(np.array([0, 1, 9, 0]), rng)
    assert y[:, 0].tolist() == [10, 1, 9, 10]
    save_mat(tmp_path / SVHN_FILES["test"], X=x, y=y)  # torchvision's SVHN(root): the file directly in root
    images, labels = load_svhn(tmp_path, "test")
    assert labels.tolist() == [0, 1, 9, 0] and labels.dtype == np.int64
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images, x.transpose(3, 2, 0, 1))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"X": np.zeros((32, 32, 3, 4), np.uint8)}, r"lacks the key\(s\) \['y'\]"),
        ({"X": np.zeros((3, 32, 32, 4), np.uint8), "y": np.ones((4, 1))}, r"X must have shape \(32, 32, 3, N\)"),
        ({"X": np.zeros((32, 32, 3, 4), np.float32), "y": np.ones((4, 1))}, "uint8"),
        ({"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((3, 1))}, r"y must have shape \(4, 1\)"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [3]])}, r"1..10 .* \[0, 3\]"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[11], [3]])}, r"1..10"),
    ],
    ids=["no-y", "wrong-X-shape", "float-X", "count-mismatch", "label-0", "label-11"],
)
def test_svhn_content_errors_name_the_file(tmp_path, arrays, message):
    save_mat(tmp_path / "SVHN" / SVHN_FILES["train"], **arrays)
    with pytest.raises(InputError, match=message) as info:
        load_svhn(tmp_path, "train")
    assert "train_32x32.mat" in str(info.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="test_32x32.mat not found .* download=True"):
        load_svhn(tmp_path, "test")
    (tmp_path / "SVHN").mkdir()
    (tmp_path / "SVHN" / SVHN_FILES["test"]).write_bytes(b"not a mat file at all")
    with pytest.raises(InputError, match="cannot read SVHN file"):
        load_svhn(tmp_path, "test")
    with pytest.raises(InputError, match="MNIST file .* not found"):
        MNISTSVHN(tmp_path, "test")
    with pytest.raises(InputError, match="split must be one of"):
        MNISTSVHN(tmp_path, "extra")


def test_download_fetches_missing_files_into_torchvision_layout(tmp_path, monkeypatch):
    """No internet here: the download calls are replaced by writers of small files of the real formats."""
    import torchvision
    import torchvision.datasets.utils as tv_utils

    fetched = []

    def fake_download_url(url, root, filename, md5):
        fetched.append(url)
        rng = np.random.default_rng(1)
        x, y = svhn_arrays(shuffled_labels(SVHN_COUNTS["test"], rng), rng)
        save_mat(tmp_path / "SVHN" / filename, X=x, y=y)
        assert root == str(tmp_path / "SVHN")

    class FakeMNIST:
        def __init__(self, root, train, download):
            fetched.append("mnist")
            raw = tmp_path / "MNIST" / "raw"
            raw.mkdir(parents=True)
            write_mnist(raw, "train" if train else "test", np.random.default_rng(2))

    monkeypatch.setattr(tv_utils, "download_url", fake_download_url)
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    with pytest.raises(InputError, match="not found"):
        MNISTSVHN(tmp_path, "test")
    ds = MNISTSVHN(tmp_path, "test", download=True, pairs_per_mnist=2)
    assert fetched == ["mnist", "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"]
    assert len(ds) == expected_rows("test", 2)


def test_transform_applies_to_the_float_images_or_per_modality(data_root):
    root, _ = data_root
    plain = MNISTSVHNText(root, "test").__getitems__(list(range(10)))
    inverted = MNISTSVHNText(root, "test", transform=lambda x: 1 - x).__getitems__(list(range(10)))
    assert torch.equal(inverted.data["mnist"], 1 - plain.data["mnist"])
    assert torch.equal(inverted.data["svhn"], 1 - plain.data["svhn"])
    assert torch.equal(inverted.data["text"], plain.data["text"])  # a plain callable leaves the text alone
    flipped = MNISTSVHNText(root, "test", transform={"text": lambda t: t.flip(-2)})
    item = flipped[0]
    assert torch.equal(item["data"]["text"], plain.data["text"][0].flip(-2))
    assert torch.equal(item["data"]["mnist"], plain.data["mnist"][0])
    with pytest.raises(InputTypeError, match="transform must be a callable"):
        MNISTSVHN(root, "test", transform=3)
    with pytest.raises(InputError, match="expected shape"):  # a transform must keep the modality's shape
        MNISTSVHN(root, "test", transform={"svhn": lambda x: x[:, :1]})
