"""PolyMNIST / Translated PolyMNIST: the offline builder, the compact format, the PNG-archive loader, the datasets.

Small generated inputs: random "digits" in tiny IDX files, and PNG backgrounds whose pixel (y, x) holds
(y, x, b_k) with b_k unique per background, so every output pixel tells where its crop was taken, whether
it was inverted, and from which background it came.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_mmvae.data import (
    MultimodalDataset,
    PolyMNIST,
    TranslatedPolyMNIST,
    build_polymnist,
    iterate_batches,
    load_mnist,
    random_missing,
    save_idx,
    unit_interval,
)
from pyro_mmvae.data import polymnist as pm
from pyro_mmvae.errors import InputError
from pyro_mmvae.train.data_source import DataSource
from tests.common import SHARED_DATA

H, W = 40, 50  # background size: crop corners y in [0, 12), x in [0, 22)
BLUE = [10, 30, 50, 70, 90]  # background k's constant blue channel (inverted: 245, 225, ...)
SIZES = {"train": 240, "test": 60}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    mnist = base / "mnist"
    for split, n in SIZES.items():
        images, image_name = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), pm.MNIST_FILES[split][0]
        save_idx(mnist / f"{image_name}.gz", images)
        save_idx(mnist / f"{pm.MNIST_FILES[split][1]}.gz", (np.arange(n) % 10).astype(np.uint8)[rng.permutation(n)])
    backgrounds = base / "backgrounds"
    backgrounds.mkdir()
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    for k in (3, 0, 4, 1, 2):  # written out of order: the sorted names decide m0..m4
        image = np.stack([yy, xx, np.full_like(yy, BLUE[k])], -1).astype(np.uint8)
        Image.fromarray(image).save(backgrounds / f"{k + 1}.png")
    return mnist, backgrounds


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    mnist, backgrounds = sources
    roots = {}
    for variant in ("polymnist", "translated"):
        roots[variant] = tmp_path_factory.mktemp(variant)
        build_polymnist(roots[variant], mnist, backgrounds, translated=variant == "translated", progress=False)
    return roots


def decode_pixels(image: np.ndarray, k: int):
    """Digit mask and crop corner of a uint8 (3, 28, 28) image built over the coded background k."""
    mask = image[2] == 255 - BLUE[k]
    assert np.all(mask | (image[2] == BLUE[k])), "a pixel is neither background k nor its inversion"
    plain = np.where(mask, 255 - image[:2], image[:2])  # undo the inversion: (y, x) coordinates everywhere
    y0, x0 = int(plain[0, 0, 0]), int(plain[1, 0, 0])
    expected = np.stack(np.meshgrid(np.arange(28) + y0, np.arange(28) + x0, indexing="ij"))
    assert np.array_equal(plain, expected), "the image is not one contiguous 28x28 crop"
    return mask, y0, x0


def match_digits(masks, candidates, labels, source_labels):
    """The source digit of every mask (exactly one candidate per mask), checked to have the tuple's label."""
    flat = candidates.reshape(len(candidates), -1)
    out = []
    for mask, label in zip(masks, labels):
        hits = np.flatnonzero((flat == mask.reshape(1, -1)).all(1))
        assert len(hits) == 1 and source_labels[hits[0]] == label
        out.append(hits[0])
    return np.array(out)


@pytest.mark.parametrize("split", ["train", "test"])
def test_polymnist_pairs_inverts_and_crops_like_the_generator(sources, built, split):
    mnist, _ = sources
    images, labels = load_mnist(mnist, split)
    arrays, stored_labels = pm.load_split(built["polymnist"] / split, "polymnist")
    assert np.array_equal(stored_labels, labels)  # tuple i has MNIST digit i's label
    for k in range(5):
        x = arrays[f"m{k}"]
        assert x.dtype == np.uint8 and x.shape == (SIZES[split], 3, 28, 28)
        decoded = [decode_pixels(img, k) for img in x]  # also: modality k uses background k (sorted order)
        corners = np.array([(y0, x0) for _, y0, x0 in decoded])
        assert corners[:, 0].max() < H - 28 and corners[:, 1].max() < W - 28  # the generator's exclusive bounds
        assert len(np.unique(corners[:, 1])) > 10  # the corners vary
        # inverted exactly at the pixels > 128 of one same-label MNIST digit; each digit used once per modality
        source = match_digits([m for m, _, _ in decoded], images > 128, labels, labels)
        assert sorted(source) == list(range(len(labels)))
        if k == 0:
            first = source
        else:
            assert not np.array_equal(source, first)  # independent permutations per modality


def test_translated_digits_are_downscaled_and_placed_at_offsets_0_to_6(sources, built):
    mnist, _ = sources
    images, labels = load_mnist(mnist, "train")
    small = pm.downscale_digits(images) > 128
    assert small.shape == (len(images), 21, 21)
    arrays, _ = pm.load_split(built["translated"] / "train", "translated")
    offsets = []
    for k in range(5):
        windows = []
        for image in arrays[f"m{k}"]:
            mask, _, _ = decode_pixels(image, k)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            r, c = rows[0], cols[0]
            assert rows[-1] - r < 21 and cols[-1] - c < 21  # the digit fits a 21x21 window
            window = np.zeros((21, 21), dtype=bool)
            window[: min(21, 28 - r), : min(21, 28 - c)] = mask[r : r + 21, c : c + 21]
            windows.append(window)
            offsets.append((r, c))
        source = match_digits(windows, small, labels, labels)
        assert sorted(source) == list(range(len(labels)))
    offsets = np.array(offsets)
    # random digits fill the window's border rows/columns, so the bounding box starts at the offset
    assert offsets.max() == 6 and offsets.min() == 0
    assert set(np.unique(offsets[:, 0])) == set(range(7)) == set(np.unique(offsets[:, 1]))


def test_seeded_determinism(sources, built, tmp_path):
    mnist, backgrounds = sources
    build_polymnist(tmp_path / "same", mnist, backgrounds, seed=0, splits="test", progress=False)
    build_polymnist(tmp_path / "other", mnist, backgrounds, seed=1, splits=["test"], progress=False)
    for k in range(5):
        ref = (built["polymnist"] / "test" / f"m{k}.npy").read_bytes()
        assert (tmp_path / "same" / "test" / f"m{k}.npy").read_bytes() == ref
        assert (tmp_path / "other" / "test" / f"m{k}.npy").read_bytes() != ref
    assert not (tmp_path / "same" / "train").exists()


def test_dataset_interface(built):
    ds = PolyMNIST(built["polymnist"], split="train", size=100)
    assert isinstance(ds, MultimodalDataset) and len(ds) == 100 and ds.names == [f"m{k}" for k in range(5)]
    assert [m.name for m in PolyMNIST.modalities] == ds.names and PolyMNIST.modalities[0].likelihood == "laplace"
    assert ds.full.data["m0"].dtype == torch.uint8  # stored compactly
    batch = next(iterate_batches(ds, 32, shuffle=True, seed=0))
    batch.validate(ds.modalities)
    x = batch.data["m3"]
    assert x.dtype == torch.float32 and x.shape == (32, 3, 28, 28) and 0 <= x.min() and x.max() <= 1
    stored, _ = pm.load_split(built["polymnist"] / "train", "polymnist")
    assert torch.equal(ds[5]["data"]["m2"], torch.from_numpy(stored["m2"][5]).float() / 255)
    assert ds[5]["labels"]["digit"].dtype == torch.int64
    DataSource(ds, "train_data").check(ds.modalities)  # the trainer's up-front check sees the decoded form
    flipped = PolyMNIST(built["polymnist"], split="train", size=100, transform=lambda im: 1 - im)
    assert torch.equal(flipped.__getitems__([0, 7]).data["m1"], 1 - ds.__getitems__([0, 7]).data["m1"])
    assert torch.equal(flipped[7]["data"]["m1"], 1 - ds[7]["data"]["m1"])


def test_missingness_is_wired_and_missing_rows_are_zero(built):
    ds = TranslatedPolyMNIST(built["translated"], split="train", missing_rate=0.4, missing_seed=3)
    expected = random_missing(len(ds), ds.names, 0.4, 3)
    batch = ds.__getitems__(list(range(len(ds))))
    assert torch.stack([batch.present[k] for k in ds.names], -1).any(-1).all()
    for k in ds.names:
        assert torch.equal(batch.present[k], expected[k])
        assert batch.data[k][~expected[k]].abs().sum() == 0 and batch.data[k][expected[k]].sum() > 0
    batch.validate(ds.modalities)


def test_errors_name_the_file_and_the_fix(built, tmp_path):
    with pytest.raises(InputError, match=r"manifest\.json not found.*pyro-mmvae data build polymnist"):
        PolyMNIST(tmp_path / "nothing")
    with pytest.raises(InputError, match="no published archive"):
        TranslatedPolyMNIST(tmp_path / "nothing", download=True)
    with pytest.raises(InputError, match="TranslatedPolyMNIST"):
        PolyMNIST(built["translated"])
    with pytest.raises(InputError, match="exceeds"):
        PolyMNIST(built["polymnist"], split="test", size=SIZES["test"] + 1)
    with pytest.raises(InputError, match="split"):
        PolyMNIST(built["polymnist"], split="validation")


def test_corrupt_files_do_not_load(built, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(built["polymnist"] / "test", root / "test")
    data = (root / "test" / "m2.npy").read_bytes()
    (root / "test" / "m2.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"m2\.npy"):
        PolyMNIST(root, split="test")
    np.save(root / "test" / "m2.npy", np.zeros((SIZES["test"], 3, 28, 28), dtype=np.float32))
    with pytest.raises(InputError, match=r"m2\.npy: expected uint8"):
        PolyMNIST(root, split="test")


def test_a_killed_rebuild_leaves_nothing_that_loads(sources, tmp_path):
    mnist, backgrounds = sources
    root = tmp_path / "root"
    build_polymnist(root, mnist, backgrounds, splits="test", progress=False)
    assert len(PolyMNIST(root, split="test")) == SIZES["test"]
    script = textwrap.dedent(f"""
        from pyro_mmvae.data import build_polymnist
        build_polymnist({str(root)!r}, {str(mnist)!r}, {str(backgrounds)!r}, seed=5, splits="test", progress=False)
    """)
    env = dict(os.environ, PYRO_MMVAE_KILL_AT="atomic_write:before_replace:m3.npy:1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    with pytest.raises(InputError, match="interrupted build"):
        PolyMNIST(root, split="test")


def write_png_layout(folder, n=23, seed=0):
    """A PNG layout of the published archive: folder/m<k>/<i>.<digit>.png, with random images."""
    rng = np.random.default_rng(seed)
    keys = [(i // 3, i % 3 + 2) for i in range(n)]  # digits 2..4, several per class
    images = rng.integers(0, 256, (5, n, 28, 28, 3), dtype=np.uint8)
    for k in range(5):
        (folder / f"m{k}").mkdir(parents=True)
        for (i, d), image in zip(keys, images[k]):
            Image.fromarray(image).save(folder / f"m{k}" / f"{i}.{d}.png")
    order = sorted(range(n), key=lambda j: keys[j])
    return images[:, order].transpose(0, 1, 4, 2, 3), np.array([keys[j][1] for j in order])


def test_published_png_layout_is_read_and_converted_once(tmp_path):
    images, labels = write_png_layout(tmp_path / "MMNIST" / "train")
    ds = PolyMNIST(tmp_path, split="train")
    assert torch.equal(ds.full.labels["digit"], torch.from_numpy(labels))
    for k in range(5):
        assert np.array_equal(ds.full.data[f"m{k}"].numpy(), images[k])
    assert (tmp_path / "train" / "manifest.json").is_file()
    import shutil

    shutil.rmtree(tmp_path / "MMNIST")  # the second load reads the compact copy
    assert torch.equal(PolyMNIST(tmp_path, split="train").full.data["m4"], ds.full.data["m4"])


def test_png_layout_with_a_missing_file_names_it(tmp_path):
    write_png_layout(tmp_path / "test")
    (tmp_path / "test" / "m3" / "2.3.png").unlink()
    with pytest.raises(InputError, match=r"m3/2\.3\.png is missing"):
        PolyMNIST(tmp_path, split="test")


def test_download_fetches_and_converts_the_archive(tmp_path, monkeypatch):
    calls = []

    def fake_fetch(root):  # what extracting MoPoE's zip into root gives
        calls.append(root)
        write_png_layout(root / "MMNIST" / "test", n=12)

    monkeypatch.setattr(pm, "_fetch_archive", fake_fetch)
    assert len(PolyMNIST(tmp_path, split="test", download=True)) == 12 and calls == [tmp_path]
    PolyMNIST(tmp_path, split="test", download=True)
    assert len(calls) == 1  # nothing fetched once converted


def test_uint8_storage_in_multimodal_dataset():
    x = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    from pyro_mmvae.data import Modality

    mod = [Modality("img", (1, 2, 2), likelihood="bernoulli")]
    ds = MultimodalDataset({"img": x}, modalities=mod, decode={"img": unit_interval})
    assert torch.equal(ds.__getitems__([3, 1]).data["img"], x[[3, 1]].float() / 255)
    with pytest.raises(TypeError, match="floating-point"):  # undecoded uint8 fails validation, as before
        MultimodalDataset({"img": x}, modalities=mod)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # the decoded form is what is validated
        MultimodalDataset({"img": x}, modalities=mod, decode={"img": lambda r: r.float()})


CLASSIFIERS = SHARED_DATA / "pretrained_classifiers" / "polymnist"


def shipped_classifier(k):
    import torch.nn as nn

    net = nn.Sequential(
        nn.Conv2d(3, 10, 4, 2, 1), nn.Dropout2d(0.5), nn.ReLU(), nn.Conv2d(10, 20, 4, 2, 1), nn.Dropout2d(0.5),
        nn.ReLU(), nn.Flatten(), nn.Linear(980, 128), nn.Dropout(0.5), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip
    holder = nn.Module()
    holder.encoder = net
    state = torch.load(CLASSIFIERS / f"pretrained_img_to_digit_clf_m{k}", weights_only=True, map_location="cpu")
    holder.load_state_dict(state)
    return net.eval()


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="shared MNIST/background files absent")
@pytest.mark.parametrize("translated", [False, True], ids=["polymnist", "translated"])
def test_build_from_the_real_files(tmp_path, translated):
    n = 400
    build_polymnist(
        tmp_path, SHARED_DATA / "mnist", SHARED_DATA / "polymnist_backgrounds", translated=translated,
        splits="test", max_per_split=n, progress=False,
    )  # fmt: skip
    ds = (TranslatedPolyMNIST if translated else PolyMNIST)(tmp_path, split="test")
    _, mnist_labels = load_mnist(SHARED_DATA / "mnist", "test")
    assert torch.equal(ds.full.labels["digit"], torch.from_numpy(mnist_labels[:n]))
    batch = ds.__getitems__(list(range(n)))
    for k, name in enumerate(ds.names):
        assert 0.15 < batch.data[name].mean() < 0.7  # a background image, not black or white
        if not translated and CLASSIFIERS.is_dir():  # the shipped classifiers recognise the digits
            with torch.no_grad():
                accuracy = (shipped_classifier(k)(batch.data[name]).argmax(-1) == batch.labels["digit"]).float().mean()
            assert accuracy > 0.88, (name, accuracy)
    import json

    manifest = json.loads((tmp_path / "test" / "manifest.json").read_text())
    assert manifest["variant"] == ("translated" if translated else "polymnist")
    assert any("substitute" in note for note in manifest["notes"])
