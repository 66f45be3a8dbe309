"""MNIST-SVHN and MNIST-SVHN-Text: MNIST digits paired with SVHN house numbers of the same digit.

Modalities (batches are float32 in [0, 1]; labels ``"digit"`` int64 in 0..9):

- ``mnist``: ``(1, 28, 28)``; ``svhn``: ``(3, 32, 32)``; both Laplace with scale 0.75 (MMVAE's decoders);
- ``text`` (:class:`MNISTSVHNText` only): ``(8, 71)``, one-hot over :data:`ALPHABET`, the digit's English
  word at a random start position in a string of 8 characters padded with spaces (MoPoE's trimodal
  version, Sutter et al. 2021).

Pairing (:func:`pair_by_label`) follows MMVAE's ``make_mnist_svhn_idx`` (Shi et al. 2019): within digit
class ``c`` it keeps the first ``n_c = min(#MNIST_c, #SVHN_c, 10000)`` images of each dataset (in file
order) and draws ``k`` rounds, each pairing a random permutation of those MNIST images with a random
permutation of those SVHN images. Every kept MNIST image is therefore used exactly ``k`` times (as is
every kept SVHN image); MNIST images beyond ``n_c`` (classes where SVHN has fewer images, e.g. digit 0 in
the training split) are unused. With the official files this gives 56,068 × k training pairs (k = 5:
the JNF paper's 280,340; k = 30: MMVAE's 1,682,040; k = 20: MoPoE's 1,121,360) and 10,000 × k test
pairs. The pair order is shuffled once (seeded), so ``size`` keeps a random subset of every class.

Memory: the datasets hold the two image sets as uint8 and the paired index, never per-pair copies;
``__getitems__`` gathers and converts one batch at a time.

Files: MNIST's four IDX files (:func:`~pyro_mmvae.data.mnist.load_mnist`: ``root`` or
``root/MNIST/raw``) and SVHN's ``train_32x32.mat`` / ``test_32x32.mat`` (in ``root/SVHN`` or ``root``),
with ``X`` uint8 ``(32, 32, 3, N)`` and ``y`` ``(N, 1)`` in 1..10 where 10 is the digit 0.
``download=True`` fetches missing files with torchvision's URLs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, InputTypeError, check_int
from .dataset import MultimodalDataset, unit_interval
from .missingness import random_missing
from .mnist import FILES as MNIST_FILES
from .mnist import find_mnist_file, load_mnist
from .modality import Modality

# MoPoE's alphabet.json joined in file order: 71 symbols; '-' occurs twice (positions 36 and 62) and
# encoding uses the first, as MoPoE's ``alphabet.find`` does.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"\\/|_@#$%^&*~`+-=<>()[]{} \n"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEXT_LENGTH = 8
MAX_PER_CLASS = 10_000  # MMVAE's max_d
SPLITS = ("train", "test")
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
LAPLACE_SCALE = 0.75


# ----------------------------------------------------------------------------------------- text


def encode_text(texts, length: int = TEXT_LENGTH) -> torch.Tensor:
    """One-hot codes ``float32 (B, length, 71)`` of strings (a ``str`` gives ``(length, 71)``).

    Each string is padded with spaces on the right to ``length``; longer strings and symbols outside
    :data:`ALPHABET` raise :class:`~pyro_mmvae.errors.InputError`.
    """
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    codes = torch.empty(len(items), length, dtype=torch.long)
    for row, text in enumerate(items):
        if not isinstance(text, str):
            raise InputTypeError(f"encode_text: item {row} is {type(text).__name__}, expected a str")
        if len(text) > length:
            raise InputError(f"encode_text: {text!r} has {len(text)} characters, more than length={length}")
        unknown = sorted({ch for ch in text if ch not in ALPHABET})
        if unknown:
            raise InputError(f"encode_text: {text!r} holds symbols {unknown} that are not in the 71-symbol ALPHABET")
        codes[row] = torch.tensor([ALPHABET.index(ch) for ch in text.ljust(length)])
    onehot = torch.nn.functional.one_hot(codes, len(ALPHABET)).float()
    return onehot[0] if single else onehot


def decode_text(onehot: torch.Tensor):
    """Strings from one-hot codes or scores ``(B, L, 71)`` (a list) or ``(L, 71)`` (one ``str``).

    Each position decodes to its most likely symbol (argmax), so decoder logits or probabilities work
    too. The padding spaces are kept; ``.strip()`` gives the word.
    """
    if not isinstance(onehot, torch.Tensor):
        raise InputTypeError(f"decode_text expects a torch.Tensor, got {type(onehot).__name__}")
    if onehot.dim() not in (2, 3) or onehot.shape[-1] != len(ALPHABET):
        raise InputError(
            f"decode_text expects shape (B, L, {len(ALPHABET)}) or (L, {len(ALPHABET)}), got {tuple(onehot.shape)}"
        )
    codes = onehot.argmax(dim=-1).reshape(-1, onehot.shape[-2]).tolist()
    texts = ["".join(ALPHABET[c] for c in row) for row in codes]
    return texts[0] if onehot.dim() == 2 else texts


def _word_codes() -> tuple[torch.Tensor, torch.Tensor]:
    """``codes[d, s]`` (long ``(10, L_max_start + 1, 8)``): word ``d`` at start ``s``; and ``max_start[d]``."""
    # MoPoE draws the start with random.randint(0, 8 - 1 - len(word)), both ends included: a word never
    # touches the last position.
    max_start = torch.tensor([TEXT_LENGTH - 1 - len(w) for w in DIGIT_WORDS])
    codes = torch.full((10, int(max_start.max()) + 1, TEXT_LENGTH), ALPHABET.index(" "), dtype=torch.long)
    for d, word in enumerate(DIGIT_WORDS):
        for s in range(int(max_start[d]) + 1):
            codes[d, s] = torch.tensor([ALPHABET.index(ch) for ch in (" " * s + word).ljust(TEXT_LENGTH)])
    return codes, max_start


_WORD_CODES, MAX_START = _word_codes()


def text_start_positions(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Seeded start positions ``int64 (P,)``, uniform in ``0..8-1-len(word)`` for each row's digit."""
    rng = np.random.default_rng([check_int(seed, "seed", minimum=0), 1])  # stream 1: apart from the pairing
    high = MAX_START[labels].numpy() + 1
    return torch.from_numpy(rng.integers(0, high, size=len(high)).astype(np.int64))


# ----------------------------------------------------------------------------------------- SVHN


def find_svhn_file(root: str | os.PathLike, split: str) -> Path:
    """Path of SVHN's ``.mat`` file of ``split`` in ``root/SVHN`` or ``root``; raises naming both places."""
    name = SVHN_FILES[split]
    root = Path(root)
    for folder in (root / "SVHN", root):
        if (folder / name).is_file():
            return folder / name
    raise InputError(
        f"SVHN file {name} not found in {root / 'SVHN'} or {root}; download it from "
        f"http://ufldl.stanford.edu/housenumbers/{name} or pass download=True"
    )


def download_svhn(root: str | os.PathLike, split: str) -> Path:
    """Fetch SVHN's ``split`` file into ``root/SVHN`` with torchvision's URL (needs internet)."""
    from torchvision.datasets import SVHN
    from torchvision.datasets.utils import download_url

    url, filename, md5 = SVHN.split_list[split]
    download_url(url, str(Path(root) / "SVHN"), filename, md5)
    return Path(root) / "SVHN" / filename


def check_svhn_arrays(content: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's ``X (32, 32, 3, N)`` and ``y (N, 1)`` → images ``uint8 (N, 3, 32, 32)``, labels ``int64 (N,)``.

    Label 10 (SVHN's code of the digit 0) becomes 0. Raises naming ``where`` when a key is missing, the
    shapes or dtype differ, or a label lies outside 1..10.
    """
    missing = [key for key in ("X", "y") if key not in content]
    if missing:
        found = sorted(k for k in content if not k.startswith("__"))
        raise InputError(f"{where}: SVHN .mat file lacks the key(s) {missing}; found {found}")
    images, labels = np.asarray(content["X"]), np.asarray(content["y"])
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise InputError(f"{where}: X must have shape (32, 32, 3, N), got {images.shape}")
    if images.dtype != np.uint8:
        raise InputError(f"{where}: X must hold uint8 pixels, got dtype {images.dtype}")
    n = images.shape[3]
    if labels.shape not in ((n, 1), (n,)):
        raise InputError(f"{where}: y must have shape ({n}, 1) to match X's {n} images, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.number):
        raise InputError(f"{where}: y must hold numbers, got dtype {labels.dtype}")
    labels = labels.reshape(n)
    if n and (labels.min() < 1 or labels.max() > 10 or not np.all(labels == np.round(labels))):
        raise InputError(
            f"{where}: labels must be integers in 1..10 (10 = digit 0), found values in "
            f"[{labels.min()}, {labels.max()}]"
        )
    labels = labels.astype(np.int64) % 10  # 10 -> 0
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels  # (H, W, C, N) -> (N, C, H, W)


def load_svhn(root: str | os.PathLike, split: str = "train", download: bool = False) -> tuple:
    """SVHN ``split`` as images ``uint8 (N, 3, 32, 32)`` and labels ``int64 (N,)`` in 0..9."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    try:
        path = find_svhn_file(root, split)
    except InputError:
        if not download:
            raise
        path = download_svhn(root, split)
    import scipy.io

    try:
        content = scipy.io.loadmat(path)
    except Exception as e:  # scipy fails on corrupt files in many ways (MatReadError, IndexError, ValueError, ...)
        raise InputError(f"cannot read SVHN file {path} as a MATLAB .mat file: {e}") from e
    return check_svhn_arrays(content, str(path))


def _load_mnist(root, split: str, download: bool):
    if download:
        try:
            for name in MNIST_FILES[split]:
                find_mnist_file(root, name)
        except InputError:
            import torchvision

            torchvision.datasets.MNIST(str(root), train=split == "train", download=True)  # into root/MNIST/raw
    return load_mnist(root, split)


# ----------------------------------------------------------------------------------------- pairing


def pair_by_label(labels_a, labels_b, k: int, seed: int = 0, max_per_class: int = MAX_PER_CLASS) -> tuple:
    """Index pairs ``(idx_a, idx_b)`` (int64 ``(P,)``) with ``labels_a[idx_a] == labels_b[idx_b]``.

    MMVAE's scheme (module docstring): per class ``c``, ``n_c = min(#a_c, #b_c, max_per_class)`` images
    of each side (the first in index order), ``k`` rounds of two independent random permutations;
    ``P = k Σ_c n_c``. The rows come back in one seeded random order.
    """
    k = check_int(k, "pairs_per_mnist", minimum=1)
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    rng = np.random.default_rng([check_int(seed, "seed", minimum=0), 0])
    parts_a, parts_b = [], []
    for c in np.union1d(labels_a, labels_b):
        in_a, in_b = np.flatnonzero(labels_a == c), np.flatnonzero(labels_b == c)
        n = min(len(in_a), len(in_b), max_per_class)
        for _ in range(k):
            parts_a.append(rng.permutation(in_a[:n]))
            parts_b.append(rng.permutation(in_b[:n]))
    idx_a = np.concatenate(parts_a) if parts_a else np.zeros(0, np.int64)
    idx_b = np.concatenate(parts_b) if parts_b else np.zeros(0, np.int64)
    order = rng.permutation(len(idx_a))
    return torch.from_numpy(idx_a[order].astype(np.int64)), torch.from_numpy(idx_b[order].astype(np.int64))


# ----------------------------------------------------------------------------------------- datasets


class TableRows:
    """Decoder of stored rows that are 1-based row numbers of ``table`` (row 0 of ``table`` is zeros).

    MultimodalDataset zeroes the stored rows of missing entries; number 0 then decodes to the zero row,
    so missing rows hand out zeros like every other dataset. ``uint8`` tables come out in [0, 1].
    A class rather than a closure, so that DataLoader workers can pickle it.
    """

    def __init__(self, table: torch.Tensor):
        self.table = table

    @classmethod
    def with_zero_row(cls, rows: torch.Tensor) -> TableRows:
        return cls(torch.cat([rows.new_zeros(1, *rows.shape[1:]), rows]))

    def __call__(self, numbers: torch.Tensor) -> torch.Tensor:
        rows = self.table[numbers]
        return unit_interval(rows) if rows.dtype == torch.uint8 else rows


class Transformed:
    """Decoder followed by a user ``transform`` of the decoded float32 batch ``(B, *event_shape)``."""

    def __init__(self, decode, transform):
        self.decode, self.transform = decode, transform

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.transform(rows if self.decode is None else self.decode(rows))


def with_transform(decode: dict, names, transform) -> dict:
    """``decode`` with ``transform`` applied after it: one callable for each of ``names``, or a dict
    ``name -> callable`` (any modality of the dataset, those in ``decode`` or not)."""
    if transform is None:
        return dict(decode)
    if isinstance(transform, Mapping):
        chosen = dict(transform)
    elif callable(transform):
        chosen = {name: transform for name in names}
    else:
        raise InputTypeError(f"transform must be a callable or a dict name -> callable, got {type(transform).__name__}")
    out = dict(decode)
    for name, fn in chosen.items():
        if not callable(fn):
            raise InputTypeError(f"transform[{name!r}] must be callable, got {type(fn).__name__}")
        out[name] = Transformed(decode.get(name), fn)
    return out


class MNISTSVHN(MultimodalDataset):
    """Label-matched MNIST-SVHN pairs (modalities ``mnist``, ``svhn``; label ``digit``).

    Args:
        root: folder with MNIST's IDX files (``root`` or ``root/MNIST/raw``) and SVHN's ``.mat`` files
            (``root/SVHN`` or ``root``).
        split: ``"train"`` or ``"test"``.
        download: fetch missing files with torchvision's URLs (MNIST into ``root/MNIST/raw``, SVHN into
            ``root/SVHN``).
        pairs_per_mnist: ``k``, the number of SVHN partners of each used MNIST image (5 in the JNF paper,
            20 in MoPoE's MNIST-SVHN-Text, 30 in MMVAE).
        seed: seeds the pairing and the row order (and the text positions of :class:`MNISTSVHNText`).
        missing_rate: fraction of rows in which each modality is marked missing (a float or a dict
            name -> rate; never all modalities of a row), seeded by ``missing_seed``.
        size: keep only the first ``size`` rows of the (shuffled) pairs.
        transform: optional callable applied to the float32 images of ``mnist`` and ``svhn`` as they are
            handed out (batches ``(B, C, H, W)``), or a dict ``name -> callable`` (``text`` included).

    Storage: :attr:`full` holds, per modality, each row's 1-based number in an image table
    (``mnist_images`` uint8 ``(N_mnist, 1, 28, 28)``, ``svhn_images`` uint8 ``(N_svhn, 3, 32, 32)``);
    :attr:`mnist_index` / :attr:`svhn_index` are the 0-based pair indices into those images.
    """

    modalities = (
        Modality("mnist", (1, 28, 28), likelihood="laplace", scale=LAPLACE_SCALE),
        Modality("svhn", (3, 32, 32), likelihood="laplace", scale=LAPLACE_SCALE),
    )

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        download: bool = False,
        pairs_per_mnist: int = 5,
        seed: int = 0,
        missing_rate=0.0,
        missing_seed: int = 0,
        size: int | None = None,
        transform=None,
    ):
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        mnist_images, mnist_labels = _load_mnist(root, split, download)
        svhn_images, svhn_labels = load_svhn(root, split, download)
        self.root, self.split, self.seed, self.transform = Path(root), split, seed, transform
        self.pairs_per_mnist = check_int(pairs_per_mnist, "pairs_per_mnist", minimum=1)
        mnist_index, svhn_index = pair_by_label(mnist_labels, svhn_labels, self.pairs_per_mnist, seed)
        if size is not None:
            size = check_int(size, "size", minimum=1)
            if size > len(mnist_index):
                raise InputError(f"size={size} exceeds the {len(mnist_index)} MNIST-SVHN {split} pairs")
            mnist_index, svhn_index = mnist_index[:size], svhn_index[:size]
        if len(mnist_index) == 0:
            raise InputError(f"MNIST and SVHN {split} files share no digit class: no pairs")
        self.mnist_index, self.svhn_index = mnist_index, svhn_index
        # the decoders' tables (row 0: the zeros of missing rows); the image sets are views into them
        self._tables = {
            "mnist": TableRows.with_zero_row(torch.from_numpy(mnist_images).unsqueeze(1)),
            "svhn": TableRows.with_zero_row(torch.from_numpy(svhn_images)),
        }
        self.mnist_images = self._tables["mnist"].table[1:]  # uint8 (N_mnist, 1, 28, 28)
        self.svhn_images = self._tables["svhn"].table[1:]  # uint8 (N_svhn, 3, 32, 32)
        labels = torch.from_numpy(mnist_labels)[mnist_index]  # equal to SVHN's by construction
        stored, decode = self._stored_rows(labels)
        names = [m.name for m in type(self).modalities]
        present = random_missing(len(labels), names, missing_rate, missing_seed)
        decode = with_transform(decode, ("mnist", "svhn"), transform)
        super().__init__(stored, present, {"digit": labels}, type(self).modalities, decode=decode)

    def _stored_rows(self, labels: torch.Tensor) -> tuple[dict, dict]:
        """Per modality: stored rows (int64 ``(P,)``, 1-based table numbers) and their decoder."""
        return {"mnist": self.mnist_index + 1, "svhn": self.svhn_index + 1}, dict(self._tables)

    @property
    def labels(self) -> torch.Tensor:
        """The digit of every row, int64 ``(P,)``."""
        return self.full.labels["digit"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, pairs_per_mnist={self.pairs_per_mnist}, rows={len(self)})"


class MNISTSVHNText(MNISTSVHN):
    """MNIST-SVHN with the digit's English word as a third modality ``text`` (``(8, 71)`` one-hot).

    Same arguments as :class:`MNISTSVHN` (MoPoE uses ``pairs_per_mnist=20``). Each row's start position is
    drawn once from ``seed`` (MoPoE redraws it at every access; a fixed draw keeps epochs and evaluations
    reproducible); :attr:`text_starts` holds them.
    """

    modalities = (
        *MNISTSVHN.modalities,
        Modality("text", (TEXT_LENGTH, len(ALPHABET)), likelihood="onehot_categorical"),
    )

    def _stored_rows(self, labels: torch.Tensor) -> tuple[dict, dict]:
        stored, decode = super()._stored_rows(labels)
        self.text_starts = text_start_positions(labels, self.seed)
        # one table row per (digit, start): 10 x (max start + 1) one-hot strings, number 0 = zeros
        starts_per_digit = _WORD_CODES.shape[1]
        table = torch.nn.functional.one_hot(_WORD_CODES.reshape(-1, TEXT_LENGTH), len(ALPHABET)).float()
        stored["text"] = labels * starts_per_digit + self.text_starts + 1
        decode["text"] = TableRows.with_zero_row(table)
        return stored, decode
