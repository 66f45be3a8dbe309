"""PolyMNIST and Translated PolyMNIST: the offline builder, the published archive and the dataset classes.

PolyMNIST (Sutter et al., ICLR 2021, "Generalized Multimodal ELBO") has five modalities ``m0..m4``, each
an RGB image ``(3, 28, 28)``: an MNIST digit drawn over a random 28×28 crop of one background image per
modality. What :func:`build_polymnist` does, following the published generator (MoPoE's
``MMNISTDataset._create_mmnist_dataset``):

- backgrounds: the folder's images in sorted order (``1.jpg..5.jpg`` -> ``m0..m4``), used at their own
  size (not resized); the crop's corner is uniform in ``[0, W - 28) × [0, H - 28)`` (as in the generator,
  the last possible corner is never drawn);
- digit pixels: MNIST's grey values ``> 128``; at them the crop's colours are inverted (``255 - v``);
- pairing: within each digit class, one random permutation per modality, so a tuple holds five
  different MNIST images of the same digit (60,000 train / 10,000 test tuples).

Translated PolyMNIST (Daunhawer et al., ICLR 2022, "On the limitations of multimodal VAEs"; the version
of the JNF paper, built by MultiVae's ``TranslatedMMNIST``): before binarising, each digit is resized by
0.75 (bilinear, 28 -> 21 pixels) and pasted at a random offset uniform in ``{0..6}²`` on a black 28×28
canvas, independently per modality.

Tuple order: tuple ``i`` has the label of MNIST digit ``i`` (so any prefix, ``size=N``, has MNIST's class
mix), and its image in modality ``m`` is the MNIST digit the class permutation of ``m`` assigns.

On-disk (compact) format, per split folder ``<root>/<split>/``: ``m0.npy..m4.npy`` (uint8
``(N, 3, 28, 28)``), ``labels.npy`` (int64 ``(N,)``) and ``manifest.json`` (variant, settings, seed,
source checksums). Every file is written atomically and the manifest LAST (it is removed first when a
split is rebuilt), so a killed build never leaves a split that loads. The published archive (PNG files
``<split>/m<k>/<i>.<digit>.png``) is converted once to this format. Loading checks contents (shapes,
dtypes, labels), not archive checksums; images come out as float32 in ``[0, 1]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, check_int
from ..utils import atomic_write, atomic_write_json
from .dataset import MultimodalDataset, unit_interval
from .missingness import random_missing
from .mnist import FILES as MNIST_FILES
from .mnist import find_mnist_file, load_mnist
from .modality import Modality

NUM_MODALITIES = 5
SIZE = 28
THRESHOLD = 128  # digit pixels: grey value > 128
SCALE = 0.75  # Translated PolyMNIST: digit resized to int(28 * 0.75) = 21 pixels
MAX_OFFSET = int(SIZE * (1 - SCALE))  # 7: offsets drawn from {0..6}, as in MultiVae's generator
SPLITS = ("train", "test")
FORMAT = "pyro_mmvae.polymnist/1"
ARCHIVE_URL = "https://zenodo.org/record/4899160/files/PolyMNIST.zip"  # MoPoE's PolyMNIST (MMNIST/<split>/m<k>/)
BACKGROUND_SUFFIXES = (".jpg", ".jpeg", ".png")
# MD5 of the re-encoded "The Scream" that ../shared/data ships as 2.jpg (the original could not be obtained)
SUBSTITUTE_BACKGROUNDS = {
    "6d9199d3dfe72f1edd9a26babb90b572": "2.jpg is a substitute (a 476x600 re-encode of the same "
    "painting, see shared/data/README.md): modality m1 differs slightly from the published data"
}
_PNG_NAME = re.compile(r"^(\d+)\.(\d)\.png$")


def _modalities() -> tuple[Modality, ...]:
    # laplace with scale 0.75: the MMVAE+ convention
    return tuple(Modality(f"m{k}", (3, SIZE, SIZE), likelihood="laplace", scale=0.75) for k in range(NUM_MODALITIES))


# ---------------------------------------------------------------------------------------------- the generator
def load_backgrounds(folder: str | os.PathLike) -> list[tuple[Path, np.ndarray]]:
    """The first five background images of ``folder`` in sorted file-name order, as uint8 ``(H, W, 3)`` arrays."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"background folder {folder} does not exist (it should hold 1.jpg..5.jpg)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in BACKGROUND_SUFFIXES and p.is_file())
    if len(files) < NUM_MODALITIES:
        raise InputError(f"{folder} holds {len(files)} background images ({[p.name for p in files]}), need 5")
    out = []
    for path in files[:NUM_MODALITIES]:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if min(array.shape[:2]) <= SIZE:
            raise InputError(f"background {path} is {array.shape[1]}x{array.shape[0]}; it must exceed 28x28")
        out.append((path, array))
    return out


def pair_within_classes(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation ``sigma`` with ``labels[sigma] == labels``: row ``i`` takes digit ``sigma[i]``."""
    sigma = np.empty(len(labels), dtype=np.int64)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        sigma[members] = members[rng.permutation(len(members))]
    return sigma


def downscale_digits(images: np.ndarray) -> np.ndarray:
    """MNIST digits uint8 ``(N, 28, 28)`` resized by 0.75 (``F.interpolate``, bilinear) -> float32 ``(N, 21, 21)``."""
    x = torch.from_numpy(images).to(torch.float32).unsqueeze(1)
    small = torch.nn.functional.interpolate(x, scale_factor=SCALE, mode="bilinear", align_corners=False)
    return small.squeeze(1).numpy()


def translate_digits(small: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paste each ``(21, 21)`` digit of ``small`` on a black 28×28 canvas at a random offset in ``{0..6}²``."""
    n, d = small.shape[0], small.shape[1]
    canvas = np.zeros((n, SIZE, SIZE), dtype=small.dtype)
    rows, cols = rng.integers(0, MAX_OFFSET, n), rng.integers(0, MAX_OFFSET, n)
    for r in range(MAX_OFFSET):  # 49 vectorised pastes, one per offset
        for c in range(MAX_OFFSET):
            sel = np.flatnonzero((rows == r) & (cols == c))
            canvas[sel, r : r + d, c : c + d] = small[sel]
    return canvas


def compose(digit_mask: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 28×28 crops of ``background`` ``(H, W, 3)``, inverted where ``digit_mask`` ``(N, 28, 28)`` is set.

    Returns uint8 ``(N, 3, 28, 28)``.
    """
    h, w = background.shape[:2]
    n = digit_mask.shape[0]
    windows = np.lib.stride_tricks.sliding_window_view(background, (SIZE, SIZE), axis=(0, 1))  # (H-27, W-27, 3, 28, 28)
    # the generator draws the corner with randint(0, W - 28) and randint(0, H - 28): upper bounds excluded
    x, y = rng.integers(0, w - SIZE, n), rng.integers(0, h - SIZE, n)
    # copies the N chosen windows only; C order, or every later step (and np.save) crawls through memory
    crops = np.ascontiguousarray(windows[y, x])
    return np.where(digit_mask[:, None], 255 - crops, crops)


def modality_rng(seed: int, split: str, translated: bool, k: int) -> np.random.Generator:
    """The random stream of modality ``m<k>``: one per (seed, split, variant, modality), independent of the others."""
    return np.random.default_rng([seed, SPLITS.index(split), int(translated), k])


def generate_modality(
    images: np.ndarray, labels: np.ndarray, background: np.ndarray, rng: np.random.Generator, small=None
) -> np.ndarray:
    """One modality, uint8 ``(N, 3, 28, 28)``, from MNIST ``images`` ``(N, 28, 28)`` and ``labels`` ``(N,)``.

    ``small``: the digits resized by :func:`downscale_digits` for Translated PolyMNIST (``None``: PolyMNIST).
    """
    sigma = pair_within_classes(labels, rng)
    digits = images[sigma] if small is None else translate_digits(small[sigma], rng)
    return compose(digits > THRESHOLD, background, rng)


# ---------------------------------------------------------------------------------------------- files
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_array(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)  # np.save writes other layouts element by element
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def write_split(folder: Path, arrays: dict[str, np.ndarray], labels: np.ndarray, manifest: dict) -> Path:
    """Write one split in the compact format (manifest removed first, written last; every file atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # a rebuild killed midway must not look complete
    files = {}
    for name, array in [*arrays.items(), ("labels", labels)]:
        _save_array(folder / f"{name}.npy", array)
        files[name] = {"file": f"{name}.npy", "shape": list(array.shape), "dtype": str(array.dtype)}
    manifest = {"format": FORMAT, **manifest, "num_tuples": int(len(labels)), "files": files}
    return atomic_write_json(folder / "manifest.json", manifest)


def _source_record(mnist: Path, split: str, backgrounds: list[Path]) -> tuple[dict, list[str]]:
    notes, record = [], {"mnist": {}, "backgrounds": {}}
    for name in MNIST_FILES[split]:
        path = find_mnist_file(mnist, name)
        record["mnist"][path.name] = {"sha256": _sha256(path)}
    for k, path in enumerate(backgrounds):
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        record["backgrounds"][f"m{k}"] = {"file": path.name, "sha256": _sha256(path), "md5": md5}
        if md5 in SUBSTITUTE_BACKGROUNDS:
            notes.append(f"background of m{k}: {SUBSTITUTE_BACKGROUNDS[md5]}")
    return record, notes


def build_polymnist(
    root: str | os.PathLike,
    mnist: str | os.PathLike,
    backgrounds: str | os.PathLike,
    translated: bool = False,
    seed: int = 0,
    splits=SPLITS,
    max_per_split: int | None = None,
    progress: bool = True,
) -> Path:
    """Build PolyMNIST (or Translated PolyMNIST) offline into ``root`` (see the module docstring); returns ``root``.

    Args:
        root: output folder; each split goes to ``root/<split>/`` (load it with ``PolyMNIST(root)``).
        mnist: folder of MNIST's IDX files (see :func:`~pyro_mmvae.data.load_mnist`).
        backgrounds: folder of the five background images (sorted order -> ``m0..m4``).
        translated: build Translated PolyMNIST (digits resized by 0.75, randomly translated).
        seed: the output depends only on the inputs and the seed (same seed -> identical bytes).
        splits: which of ``"train"``, ``"test"`` to build.
        max_per_split: use only the first N MNIST digits of each split (small builds and tests).
        progress: show a tqdm bar over (split, modality).
    """
    from tqdm.auto import tqdm

    seed = check_int(seed, "seed", minimum=0)
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise InputError(f"splits must be a non-empty subset of {SPLITS}, got {splits}")
    if max_per_split is not None:
        max_per_split = check_int(max_per_split, "max_per_split", minimum=1)
    root, mnist = Path(root), Path(mnist)
    loaded = load_backgrounds(backgrounds)
    variant = "translated" if translated else "polymnist"
    bar = tqdm(total=len(splits) * NUM_MODALITIES, desc=f"building {variant}", disable=not progress)
    for split in splits:
        images, labels = load_mnist(mnist, split)
        if max_per_split is not None:
            images, labels = images[:max_per_split], labels[:max_per_split]
        start = time.perf_counter()
        small = downscale_digits(images) if translated else None  # shared by the five modalities
        arrays = {}
        for k, (_, background) in enumerate(loaded):
            rng = modality_rng(seed, split, translated, k)
            arrays[f"m{k}"] = generate_modality(images, labels, background, rng, small)
            bar.update(1)
        sources, notes = _source_record(mnist, split, [p for p, _ in loaded])
        manifest = {
            "variant": variant,
            "split": split,
            "source": "offline builder (pyro_mmvae.data.build_polymnist)",
            "seed": seed,
            "max_per_split": max_per_split,
            "sources": sources,
            "notes": notes,
            "generator": {
                "threshold": f"> {THRESHOLD}",
                "crop": "uniform corner in [0, W-28) x [0, H-28), no resize",
                "inversion": "255 - v at digit pixels",
                "pairing": "one permutation per digit class and modality",
                "translation": {"scale": SCALE, "digit_size": int(SIZE * SCALE), "offsets": f"0..{MAX_OFFSET - 1}"}
                if translated
                else None,
            },
            "generate_seconds": round(time.perf_counter() - start, 2),
        }
        write_split(root / split, arrays, labels, manifest)
    bar.close()
    return root


# ---------------------------------------------------------------------------------------------- the archive
def find_png_layout(root: Path, split: str, variant: str) -> Path | None:
    """The folder ``.../<split>`` holding ``m0..m4`` folders of PNG files, if ``root`` has one (else ``None``)."""
    bases = [root, root / "MMNIST", root / "PolyMNIST", root / "PolyMNIST" / "MMNIST"]
    if variant == "translated":  # where MultiVae's TranslatedMMNIST writes its PNG files
        bases = [root, root / f"Translated_MMNIST_scale_{int(SCALE * 100)}_translated_True"]
    for base in bases:
        if (base / split / "m0").is_dir():
            return base / split
    return None


def read_png_split(folder: Path, progress: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The tuples of a PNG layout ``folder/m<k>/<i>.<digit>.png``: uint8 ``(N, 3, 28, 28)`` per modality, labels.

    A tuple is the files of one name ``<i>.<digit>.png`` across the five folders (the generator's naming);
    tuples are ordered by ``(i, digit)``, which interleaves the classes.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    keys = []
    for k in range(NUM_MODALITIES):
        sub = folder / f"m{k}"
        if not sub.is_dir():
            raise InputError(f"PolyMNIST archive layout: folder {sub} is missing")
        names = {}
        for p in sub.iterdir():
            if p.suffix.lower() != ".png" or p.name.startswith("."):
                continue  # e.g. .DS_Store
            match = _PNG_NAME.match(p.name)
            if match is None:
                raise InputError(f"unexpected file {p} in a PolyMNIST folder (expected <index>.<digit>.png)")
            names[(int(match[1]), int(match[2]))] = p.name
        keys.append(names)
    order = sorted(keys[0])
    for k in range(1, NUM_MODALITIES):
        lacking = sorted(set(keys[0]) ^ set(keys[k]))
        if lacking:
            i, d = lacking[0]
            where = f"m{k}" if (i, d) in keys[0] else "m0"
            raise InputError(
                f"{folder}: {len(lacking)} tuple(s) lack a modality, e.g. {folder / where / f'{i}.{d}.png'} is "
                "missing; the five modality folders must hold the same file names"
            )
    if not order:
        raise InputError(f"{folder / 'm0'} holds no PNG files")
    arrays = {f"m{k}": np.empty((len(order), 3, SIZE, SIZE), dtype=np.uint8) for k in range(NUM_MODALITIES)}
    for k in tqdm(range(NUM_MODALITIES), desc=f"reading {folder}", disable=not progress):
        for j, key in enumerate(order):
            path = folder / f"m{k}" / keys[k][key]
            try:
                with Image.open(path) as im:
                    image = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except OSError as e:
                raise InputError(f"cannot read PolyMNIST image {path}: {e}") from e
            if image.shape != (SIZE, SIZE, 3):
                raise InputError(f"{path}: expected a 28x28 RGB image, got shape {image.shape}")
            arrays[f"m{k}"][j] = image.transpose(2, 0, 1)
    return arrays, np.array([d for _, d in order], dtype=np.int64)


def _fetch_archive(root: Path) -> None:
    """Download and extract MoPoE's published PolyMNIST archive into ``root``."""
    from torchvision.datasets.utils import download_and_extract_archive

    # no archive checksum: the extracted files' contents are checked when they are converted
    download_and_extract_archive(ARCHIVE_URL, download_root=str(root), extract_root=str(root), filename="PolyMNIST.zip")


# ---------------------------------------------------------------------------------------------- loading
def _load_array(path: Path, shape: tuple, dtype: np.dtype) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"PolyMNIST file {path} is missing (rebuild the split)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"PolyMNIST file {path} is corrupt or truncated ({e}); rebuild the split") from e
    if array.dtype != dtype or array.shape != shape:
        raise InputError(f"{path}: expected {np.dtype(dtype)} of shape {shape}, got {array.dtype} {array.shape}")
    return array


def load_split(folder: Path, variant: str, size: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The first ``size`` (default all) tuples of a compact split folder: uint8 arrays per modality, labels."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        n = int(manifest["num_tuples"])
        found = manifest["variant"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"PolyMNIST manifest {path} is unreadable or incomplete ({e}); rebuild the split") from e
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if found != variant:
        other = {"polymnist": "PolyMNIST", "translated": "TranslatedPolyMNIST"}.get(found, found)
        raise InputError(f"{folder} holds {found!r} data, not {variant!r}; load it with {other}(...)")
    if size is not None and size > n:
        raise InputError(f"size={size} exceeds the {n} tuples of {folder}")
    stop = n if size is None else size
    labels = np.array(_load_array(folder / "labels.npy", (n,), np.int64)[:stop])
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise InputError(f"{folder / 'labels.npy'}: digit labels must lie in 0..9")
    arrays = {}
    for k in range(NUM_MODALITIES):
        stored = _load_array(folder / f"m{k}.npy", (n, 3, SIZE, SIZE), np.uint8)
        arrays[f"m{k}"] = np.array(stored[:stop])  # a private copy of the rows used, not the memory map
    return arrays, labels


def _missing_message(root: Path, split: str, variant: str) -> str:
    folder = root / split
    state = (
        f"{folder} holds no complete split (files without manifest.json: an interrupted build)"
        if folder.is_dir() and any(folder.glob("*.npy"))
        else f"{folder / 'manifest.json'} not found"
    )
    name, flag = ("polymnist", "") if variant == "polymnist" else ("translated-polymnist", ", translated=True")
    how = (
        f"build it offline with `pyro-mmvae data build {name} --root {root} --mnist MNIST_DIR --backgrounds BG_DIR` "
        f"(or pyro_mmvae.data.build_polymnist(root, mnist, backgrounds{flag}))"
    )
    if variant == "polymnist":
        how += ", or pass download=True to fetch the published archive"
    return f"{state}: {how}"


class PolyMNIST(MultimodalDataset):
    """PolyMNIST split as a :class:`MultimodalDataset`: modalities ``m0..m4`` float32 ``(3, 28, 28)`` in [0, 1].

    Stored as uint8 and scaled per batch. Labels: ``"digit"`` (int64, the same in every modality).

    Args:
        root: folder of the compact format (``root/<split>/manifest.json``, as :func:`build_polymnist` writes),
            or of the published PNG layout (``[MMNIST/]<split>/m<k>/<i>.<digit>.png``, converted once).
        split: ``"train"`` or ``"test"``.
        download: fetch and convert the published archive when ``root`` holds neither.
        transform: optional callable applied to each modality's float32 images, batches ``(B, 3, 28, 28)``.
        missing_rate: fraction of rows in which each modality is missing (float or ``{name: rate}``; see
            :func:`~pyro_mmvae.data.random_missing`, never a whole row).
        missing_seed: seed of the missingness pattern.
        size: use only the first ``size`` tuples (reduced runs; the prefix has MNIST's class mix).
    """

    modalities = _modalities()
    variant = "polymnist"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        download: bool = False,
        transform=None,
        missing_rate=0.0,
        missing_seed: int = 0,
        size: int | None = None,
    ):
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        size = None if size is None else check_int(size, "size", minimum=1)
        self.root, self.split, self.transform = Path(root), split, transform
        arrays, labels = load_split(self._prepare(bool(download)), self.variant, size)
        names = list(arrays)
        present = None
        if isinstance(missing_rate, dict) or missing_rate != 0:
            present = random_missing(len(labels), names, missing_rate, missing_seed)
        data = {k: torch.from_numpy(v) for k, v in arrays.items()}
        super().__init__(
            data, present, {"digit": torch.from_numpy(labels)}, self.modalities, {k: self._decode for k in names}
        )

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        images = unit_interval(rows)
        return images if self.transform is None else self.transform(images)

    def _prepare(self, download: bool) -> Path:
        """The compact split folder, converting a PNG layout (downloaded if asked) first."""
        folder = self.root / self.split
        if (folder / "manifest.json").is_file():
            return folder
        png = find_png_layout(self.root, self.split, self.variant)
        if png is None and download:
            self._download()
            png = find_png_layout(self.root, self.split, self.variant)
        if png is None:
            raise InputError(_missing_message(self.root, self.split, self.variant))
        arrays, labels = read_png_split(png)
        manifest = {
            "variant": self.variant,
            "split": self.split,
            "source": "published archive (PNG layout)",
            "png_folder": str(png),
            "archive_url": ARCHIVE_URL if self.variant == "polymnist" else None,
        }
        write_split(folder, arrays, labels, manifest)
        return folder

    def _download(self) -> None:
        _fetch_archive(self.root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, tuples={len(self)})"


class TranslatedPolyMNIST(PolyMNIST):
    """Translated PolyMNIST (digits resized by 0.75 and translated); the same interface as :class:`PolyMNIST`.

    There is no published archive: build it with ``build_polymnist(root, mnist, backgrounds, translated=True)``.
    """

    variant = "translated"

    def _download(self) -> None:
        raise InputError(
            "Translated PolyMNIST has no published archive to download; build it offline with "
            f"`pyro-mmvae data build translated-polymnist --root {self.root} --mnist MNIST_DIR --backgrounds BG_DIR` "
            "(or pyro_mmvae.data.build_polymnist(root, mnist, backgrounds, translated=True))"
        )
