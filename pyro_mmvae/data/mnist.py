"""MNIST from its four IDX files: :func:`load_mnist` reads one split, :func:`save_idx` writes IDX files.

Returned shapes: images ``uint8 (N, 28, 28)`` (0 = black background, 255 = ink), labels ``int64 (N,)``
in ``0..9``. The files may be gzip-compressed (``.gz``) or not, and may lie directly in the folder
given or in torchvision's ``<root>/MNIST/raw/`` layout.

What is checked is the CONTENT, never the checksum of a ``.gz`` file (a re-compressed copy of the
same bytes has a different one): the IDX magic numbers (``0x00000803`` images, ``0x00000801``
labels), the header's dimensions against the payload's length, 28×28 images, equal image and label
counts, labels in ``0..9``; and with ``verify=True`` also the official sizes (60,000 / 10,000) and
the official MD5 of the uncompressed bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import InputError

SPLITS = ("train", "test")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60_000, "test": 10_000}
# MD5 of the UNCOMPRESSED official files (the .gz bytes of a copy may legitimately differ)
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_UBYTE = 0x08  # IDX type code of unsigned bytes


def find_mnist_file(directory: str | os.PathLike, name: str) -> Path:
    """The path of IDX file ``name`` (without ``.gz``) in ``directory`` or ``directory/MNIST/raw``."""
    directory = Path(directory)
    folders = (directory, directory / "MNIST" / "raw", directory / "raw")
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise InputError(
        f"MNIST file {name}[.gz] not found in {directory} (looked in {', '.join(str(f) for f in folders)}); "
        "put the four IDX files there (torchvision.datasets.MNIST(root, download=True) fetches them into "
        "<root>/MNIST/raw)"
    )


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """The uint8 array stored in IDX file ``path`` (gzip-compressed or not), checked to have ``ndim`` axes."""
    path = Path(path)
    raw = _read_bytes(path)
    return _parse_idx(raw, ndim, str(path))


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open  # the gzip magic, whatever the suffix says
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"cannot read MNIST file {path}: {e}") from e


def _parse_idx(raw: bytes, ndim: int, where: str) -> np.ndarray:
    expected_magic = (_UBYTE << 8) | ndim
    if len(raw) < 4 + 4 * ndim:
        raise InputError(f"{where}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise InputError(
            f"{where}: IDX magic number {magic:#010x}, expected {expected_magic:#010x} "
            f"(unsigned bytes, {ndim} dimension(s)); is this the right MNIST file?"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = memoryview(raw)[4 + 4 * ndim :]
    if len(payload) != int(np.prod(dims)):
        raise InputError(
            f"{where}: header says shape {dims} ({int(np.prod(dims))} bytes) but the file holds {len(payload)} "
            "bytes of data (truncated or corrupt)"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims).copy()


def load_mnist(directory: str | os.PathLike, split: str = "train", verify: bool = False) -> tuple:
    """Images ``uint8 (N, 28, 28)`` and labels ``int64 (N,)`` of MNIST split ``split`` ("train" or "test").

    Args:
        directory: the folder holding the IDX files (or torchvision's root, with ``MNIST/raw`` inside).
        split: ``"train"`` (``train-*``) or ``"test"`` (``t10k-*``).
        verify: also require the official number of digits and the official MD5 of the uncompressed bytes.

    Raises:
        InputError: a file is missing, unreadable or its content is wrong; the message names the file.
    """
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    image_name, label_name = FILES[split]
    arrays = []
    for name, ndim in ((image_name, 3), (label_name, 1)):
        path = find_mnist_file(directory, name)
        raw = _read_bytes(path)
        if verify and hashlib.md5(raw).hexdigest() != MD5[name]:
            raise InputError(
                f"{path}: MD5 of the uncompressed content is {hashlib.md5(raw).hexdigest()}, expected the "
                f"official {MD5[name]}"
            )
        arrays.append((path, _parse_idx(raw, ndim, str(path))))
    (image_path, images), (label_path, labels) = arrays
    if images.shape[1:] != (28, 28):
        raise InputError(f"{image_path}: expected 28×28 images, got shape {images.shape[1:]}")
    if images.shape[0] != labels.shape[0]:
        raise InputError(
            f"MNIST {split}: {image_path} holds {images.shape[0]} images but {label_path} {labels.shape[0]} labels"
        )
    if verify and images.shape[0] != SIZES[split]:
        raise InputError(f"{image_path}: {images.shape[0]} images, expected the official {SIZES[split]}")
    if labels.size and labels.max() > 9:
        raise InputError(f"{label_path}: labels must be digits 0..9, found {int(labels.max())}")
    return images, labels.astype(np.int64)


def save_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 ``array`` (any number of axes) as an IDX file; gzip-compressed when ``path`` ends in ``.gz``.

    Meant for tests and small custom digit sets; the inverse of :func:`read_idx`.
    """
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise InputError(f"save_idx writes unsigned bytes only, got dtype {array.dtype}")
    header = ((_UBYTE << 8) | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
    return path
