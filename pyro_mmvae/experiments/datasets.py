"""The datasets a run can name (``pyro-mmvae train --dataset NAME``), with their splits and classifiers.

:func:`load_splits` returns ``(train, validation, test)`` for any registered dataset: the benchmark
datasets have a train and a test split only, so the validation rows are the LAST ``val_size`` rows of
the training split and ``train_size`` counts the rows before them. :func:`default_classifiers` gives
the classifiers of the shared label (``"digit"``, or the toy's ``"full"``) that coherence uses: the
toy's exact centre-fill rule, or the pretrained networks of a classifier folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError

BENCHMARK_DATASETS = ("polymnist", "translated-polymnist", "mnist-svhn", "mnist-svhn-text", "mhd")
DATASETS = ("toy", *BENCHMARK_DATASETS)


@dataclass(frozen=True)
class Splits:
    """``train``, ``validation`` (may be ``None``) and ``test`` datasets, and the name of the shared label."""

    train: object
    validation: object | None
    test: object
    label: str


class RowRange(torch.utils.data.Dataset):
    """Rows ``[start, stop)`` of a dataset that batches through ``__getitems__`` (a view: nothing is copied)."""

    def __init__(self, dataset, start: int, stop: int):
        if not 0 <= start <= stop <= len(dataset):
            raise InputError(f"rows [{start}, {stop}) are outside a dataset of {len(dataset)} rows")
        self.dataset, self.start, self.stop = dataset, int(start), int(stop)
        self.modalities = getattr(dataset, "modalities", None)

    @property
    def names(self) -> list[str]:
        return self.dataset.names

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        return self.dataset.__getitems__((idx + self.start).tolist())

    def __getitem__(self, i: int):
        return self.dataset[self.start + int(i)]


def _benchmark_class(name: str):
    # Imported here: each module reads its own files, and a user of one dataset need not import the others.
    if name in ("polymnist", "translated-polymnist"):
        from ..data.polymnist import PolyMNIST, TranslatedPolyMNIST

        return PolyMNIST if name == "polymnist" else TranslatedPolyMNIST
    if name in ("mnist-svhn", "mnist-svhn-text"):
        from ..data.mnist_svhn import MNISTSVHN, MNISTSVHNText

        return MNISTSVHN if name == "mnist-svhn" else MNISTSVHNText
    from ..data.mhd import MHD

    return MHD


def dataset_class(name: str):
    """The dataset class of ``name`` (it carries the ``modalities``)."""
    check_dataset(name)
    if name == "toy":
        from ..data.toy import CirclesSquares

        return CirclesSquares
    return _benchmark_class(name)


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    return name


def load_splits(
    name: str,
    root: str | Path | None = None,
    *,
    train_size: int | None = None,
    val_size: int = 0,
    test_size: int | None = None,
    missing_rate: float = 0.0,
    seed: int = 0,
    download: bool = False,
) -> Splits:
    """``Splits`` of dataset ``name`` read from ``root`` (ignored by the generated toy data).

    ``train_size``/``test_size`` ``None`` take every row; ``missing_rate`` marks that fraction of each
    modality missing in the training and validation rows (seeded by ``seed``; never a whole row).
    """
    check_dataset(name)
    if name == "toy":
        from ..data.toy import CirclesSquares

        return Splits(
            CirclesSquares("train", train_size or 20_000, seed, missing_rate, seed),
            CirclesSquares("validation", val_size, seed, missing_rate, seed) if val_size else None,
            CirclesSquares("test", test_size or 2_000, seed),
            "full",
        )
    if root is None:
        raise InputError(f"dataset {name!r} needs --data-root (the folder holding its files)")
    cls = _benchmark_class(name)
    options = {"download": download} if download else {}
    wanted = None if train_size is None else train_size + val_size
    full_train = cls(root, split="train", size=wanted, missing_rate=missing_rate, missing_seed=seed, **options)
    n = len(full_train)
    if val_size >= n:
        raise InputError(f"--val-size {val_size} leaves no training rows of the {n} in {name!r}'s training split")
    train = RowRange(full_train, 0, n - val_size)
    validation = RowRange(full_train, n - val_size, n) if val_size else None
    test = cls(root, split="test", size=test_size)
    return Splits(train, validation, test, "digit")


def default_classifiers(name: str, directory: str | Path | None = None, device="cpu") -> dict:
    """Classifiers of the shared label, one per modality: the toy's exact rule, or pretrained networks.

    ``directory``: for PolyMNIST the folder of ``pretrained_img_to_digit_clf_m0..m4``, for MNIST-SVHN(-Text)
    the folder of ``clf_m1..m3``, for datasets without published classifiers a folder of classifiers saved by
    ``pyro-mmvae train-classifier`` (``<modality>.pt``).
    """
    check_dataset(name)
    if name == "toy":
        from ..data.toy import centre_fill_classifier

        return {"square": centre_fill_classifier, "circle": centre_fill_classifier}
    if directory is None:
        raise InputError(f"coherence on {name!r} needs classifiers: pass --classifiers DIR")
    from ..metrics import classifiers as clf

    directory = Path(directory)
    if name == "polymnist":
        return clf.load_polymnist_classifiers(directory, device=device)
    if name == "mnist-svhn-text" or (name == "mnist-svhn" and (directory / "clf_m1").exists()):
        found = clf.load_mnist_svhn_text_classifiers(directory, device=device)
        return found if name == "mnist-svhn-text" else {k: found[k] for k in ("mnist", "svhn")}
    names = [m.name for m in dataset_class(name).modalities]
    missing = [n for n in names if not (directory / f"{n}.pt").exists()]
    if missing:
        raise InputError(
            f"{directory} lacks classifiers for {missing} of dataset {name!r}; train them with "
            f"'pyro-mmvae train-classifier --dataset {name} --data-root DIR --out {directory}'"
        )
    return {n: clf.load_classifier(directory / f"{n}.pt", device=device) for n in names}
