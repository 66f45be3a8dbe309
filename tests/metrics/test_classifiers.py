"""Classifiers: the shipped pretrained ones on real MNIST digits, training, save/load, errors."""

import gzip
import random

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_mmvae.data import MultimodalDataset
from pyro_mmvae.errors import InputError, InputTypeError, UnknownModalityError
from pyro_mmvae.metrics import (
    ARCHITECTURES,
    Classifier,
    build_network,
    load_classifier,
    load_mnist_svhn_text_classifiers,
    load_polymnist_classifiers,
    save_classifier,
    train_classifier,
)
from tests.common import SHARED_DATA

PRETRAINED = SHARED_DATA / "pretrained_classifiers"
needs_pretrained = pytest.mark.skipif(not PRETRAINED.is_dir(), reason="../shared/data/pretrained_classifiers absent")
# MoPoE's 71-symbol text alphabet and digit words (facts of its MNIST-SVHN-Text data)
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"\\/|_@#$%^&*~`+-=<>()[]{} \n"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def read_idx(path) -> np.ndarray:
    """The array of an IDX file (gzip-compressed), read independently of the library's loader."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="module")
def mnist_test():
    """The first 1000 MNIST test digits, uint8 (1000, 28, 28), and their labels."""
    images = read_idx(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz")[:1000]
    labels = read_idx(SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz")[:1000]
    return images, torch.tensor(labels, dtype=torch.long)


def polymnist_like(digits: np.ndarray, background: np.ndarray, seed: int) -> torch.Tensor:
    """PolyMNIST-style images: a random 28×28 crop of ``background`` with colours inverted at the digit
    (pixels > 128), ``(N, 3, 28, 28)`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for digit in digits:
        r, c = rng.integers(0, background.shape[0] - 28), rng.integers(0, background.shape[1] - 28)
        crop = background[r : r + 28, c : c + 28].astype(np.float32) / 255
        crop[digit > 128] = 1 - crop[digit > 128]
        out.append(crop.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


# ------------------------------------------------------------------------------------- shipped classifiers
@needs_pretrained
def test_polymnist_classifiers_load_and_classify_polymnist_like_digits(mnist_test):
    images, labels = mnist_test
    clfs = load_polymnist_classifiers(PRETRAINED / "polymnist")
    assert list(clfs) == ["m0", "m1", "m2", "m3", "m4"]
    n = 200
    for i, (name, clf) in enumerate(clfs.items()):
        background = np.array(Image.open(SHARED_DATA / "polymnist_backgrounds" / f"{i + 1}.jpg").convert("RGB"))
        x = polymnist_like(images[:n], background, seed=i)
        pred = clf(x)
        assert pred.dtype == torch.int64 and pred.shape == (n,)
        assert clf.logits(x).shape == (n, 10) and clf.features(x).shape == (n, 128)
        # published accuracy 0.94-0.99; 0.88 is > 4 binomial standard errors below 0.94 at n = 200
        assert (pred == labels[:n]).float().mean() > 0.88, name
    # a plain black background (white digit) is outside their training distribution: predictions, no error
    plain = torch.from_numpy(images[:8] > 128).float()[:, None].expand(-1, 3, -1, -1)
    assert clfs["m0"](plain).shape == (8,)


@needs_pretrained
def test_polymnist_loader_accepts_the_parent_folder():
    assert sorted(load_polymnist_classifiers(PRETRAINED)) == ["m0", "m1", "m2", "m3", "m4"]


@needs_pretrained
def test_mnist_svhn_text_classifiers_load_and_classify(mnist_test):
    images, labels = mnist_test
    clfs = load_mnist_svhn_text_classifiers(PRETRAINED)
    assert sorted(clfs) == ["mnist", "svhn", "text"]
    x = torch.from_numpy(images.copy()).float().div(255)[:, None]
    assert clfs["mnist"].accuracy(x, labels) > 0.95  # 98.1 % published on the whole test set
    # text: the digit's word at a random start in 8 characters, one-hot over the alphabet
    rng = random.Random(0)
    text, words = torch.zeros(300, 8, len(ALPHABET)), torch.zeros(300, dtype=torch.long)
    for i in range(300):
        words[i] = rng.randrange(10)
        word = WORDS[words[i]]
        start = rng.randint(0, 8 - 1 - len(word))
        for j, ch in enumerate(" " * start + word + " " * (8 - start - len(word))):
            text[i, j, ALPHABET.index(ch)] = 1.0
    assert clfs["text"].accuracy(text, words) > 0.98
    svhn = clfs["svhn"](torch.rand(4, 3, 32, 32))  # SVHN itself is not available offline
    assert svhn.shape == (4,) and clfs["svhn"].features(torch.rand(4, 3, 32, 32)).shape == (4, 128)


def test_missing_classifier_file_is_named(tmp_path):
    with pytest.raises(InputError, match="pretrained_img_to_digit_clf_m0.*does not exist"):
        load_polymnist_classifiers(tmp_path)
    with pytest.raises(InputError, match="clf_m1.*does not exist"):
        load_mnist_svhn_text_classifiers(tmp_path)


def test_mismatched_state_dict_lists_expected_and_found(tmp_path):
    state = build_network("polymnist", (3, 28, 28)).state_dict()
    state["encoder.7.weight"] = torch.zeros(64, 980)
    state["extra.weight"] = torch.zeros(1)
    del state["encoder.10.bias"]
    for i in range(5):
        torch.save(state, tmp_path / f"pretrained_img_to_digit_clf_m{i}")
    with pytest.raises(InputError) as err:
        load_polymnist_classifiers(tmp_path)
    msg = str(err.value)
    assert "encoder.10.bias" in msg and "extra.weight" in msg and "expected (128, 980), found (64, 980)" in msg
    (tmp_path / "pretrained_img_to_digit_clf_m0").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read"):
        load_polymnist_classifiers(tmp_path)


# ---------------------------------------------------------------------------------------- the wrapper
def test_classifier_checks_inputs_and_batches_internally():
    torch.manual_seed(0)
    clf = Classifier(build_network("mnist", (1, 28, 28)), (1, 28, 28), "mnist", name="mnist", batch_size=3)
    x = torch.rand(10, 1, 28, 28)
    whole = Classifier(clf.network, (1, 28, 28), batch_size=100).logits(x)
    assert torch.allclose(clf.logits(x), whole, atol=1e-6)
    clf.network.train()  # calls still run in eval mode: dropout off, so repeated calls agree
    assert torch.equal(clf.logits(x), clf.logits(x)) and not clf.network.training
    with pytest.raises(InputError, match=r"expected shape \(N, 1, 28, 28\)"):
        clf(torch.rand(2, 3, 28, 28))
    with pytest.raises(InputTypeError, match="uint8"):
        clf(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert clf(torch.rand(0, 1, 28, 28)).shape == (0,)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_builds_with_features_and_logits(architecture):
    shape = {"polymnist": (3, 28, 28), "mnist": (1, 28, 28), "svhn": (3, 32, 32), "text": (8, 71)}.get(
        architecture, (1, 32, 128)
    )
    net = build_network(architecture, shape, num_classes=7)
    clf = Classifier(net, shape, architecture)
    x = torch.rand(3, *shape)
    assert clf.logits(x).shape == (3, 7) and clf.features(x).dim() == 2 and clf.num_classes == 7


# ---------------------------------------------------------------------------------------------- training
def separable_dataset(n: int, seed: int, missing_rate: float = 0.0) -> MultimodalDataset:
    """Ten classes: in "img" (1, 12, 12) class k lights a 3×3 block at one of ten places; "vec" (6,) has
    well-separated class means; some rows of "img" are missing."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    img = 0.1 * torch.rand(n, 1, 12, 12, generator=g)
    for k in range(10):
        r, c = 3 * (k // 4), 3 * (k % 4)
        img[y == k, 0, r : r + 3, c : c + 3] += 1.0
    means = 4.0 * torch.randn(10, 6, generator=torch.Generator().manual_seed(99))
    vec = means[y] + 0.3 * torch.randn(n, 6, generator=g)
    present = {"img": torch.rand(n, generator=g) >= missing_rate}
    return MultimodalDataset({"img": img, "vec": vec}, present=present, labels={"digit": y})


def test_train_classifier_learns_a_separable_dataset_and_is_seeded():
    train, test = separable_dataset(400, 0, missing_rate=0.3), separable_dataset(300, 1)
    clf = train_classifier(train, "img", epochs=4, batch_size=64, lr=3e-3, seed=3, progress=False)
    assert clf.architecture == "conv" and clf.input_shape == (1, 12, 12) and len(clf.history) == 4
    assert clf.accuracy(test.full.data["img"], test.full.labels["digit"]) > 0.95
    vec = train_classifier(train, "vec", epochs=5, batch_size=64, lr=3e-3, seed=3, progress=False)
    assert vec.architecture == "mlp" and vec.accuracy(test.full.data["vec"], test.full.labels["digit"]) > 0.95
    again = train_classifier(train, "vec", epochs=5, batch_size=64, lr=3e-3, seed=3, progress=False)
    for a, b in zip(vec.network.state_dict().values(), again.network.state_dict().values()):
        assert torch.equal(a, b)


def test_train_classifier_skips_missing_rows_and_checks_names():
    data = separable_dataset(40, 0)
    none_present = MultimodalDataset(
        {"img": data.full.data["img"]}, present={"img": torch.zeros(40, dtype=torch.bool)}, labels=data.full.labels
    )
    with pytest.raises(InputError, match="missing in every row"):
        train_classifier(none_present, "img", epochs=1, progress=False)
    with pytest.raises(UnknownModalityError, match="'sound'"):
        train_classifier(data, "sound", epochs=1, progress=False)
    with pytest.raises(InputError, match="no label 'class'"):
        train_classifier(data, "img", label="class", epochs=1, progress=False)


def test_save_load_round_trip_and_errors(tmp_path):
    data = separable_dataset(100, 0)
    clf = train_classifier(data, "img", epochs=1, batch_size=50, seed=0, architecture="polymnist", progress=False)
    path = save_classifier(clf, tmp_path / "img.pt")
    back = load_classifier(path)
    x = data.full.data["img"][:20]
    with pytest.raises(InputError):  # the polymnist layout wants (C, H, W) images: (1, 12, 12) is one
        build_network("polymnist", (12, 12))
    assert torch.equal(back.logits(x), clf.logits(x)) and torch.equal(back.features(x), clf.features(x))
    assert (back.architecture, back.input_shape, back.name) == ("polymnist", (1, 12, 12), "img")
    assert back.history == clf.history
    with pytest.raises(InputError, match="does not exist"):
        load_classifier(tmp_path / "absent.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a pyro_mmvae classifier file"):
        load_classifier(tmp_path / "other.pt")
    with pytest.raises(InputError, match="named architecture"):
        save_classifier(Classifier(torch.nn.Linear(3, 2), (3,)), tmp_path / "x.pt")
