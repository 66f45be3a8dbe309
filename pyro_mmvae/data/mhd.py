"""MHD, the Multimodal Handwritten Digits dataset (Vasco et al. 2022, "Leveraging hierarchy in multimodal
generative models for effective cross-modality inference").

Modalities (float32; label ``"digit"`` int64 in 0..9), 50,000 train and 10,000 test rows:

- ``image``: ``(1, 28, 28)`` grey handwritten digit in [0, 1];
- ``sound``: ``(1, 32, 128)``, a spoken digit's mel spectrogram in dB (32 time frames × 128 mel bins),
  min-max normalised with the dataset's ``sound_normalization``;
- ``trajectory``: ``(200,)``, the pen trajectory (100 x then 100 y coordinates), min-max normalised with
  ``trajectory_normalization``.

The published files are ``mhd_train.pt`` / ``mhd_test.pt`` (the authors' ``get_mhd_dataset.sh``, also
what MultiVae reads), each a ``torch.save``'d 6-tuple
``(labels (N,), images (N, 1, 28, 28), trajectories (N, 200), sounds, trajectory_normalization,
sound_normalization)``; the normalisations are dicts ``{"min": ..., "max": ...}`` and the stored values
are already ``(x - min) / (max - min)`` (:meth:`MHD.denormalize` inverts it). ``sounds`` is kept as a stack
``(N, C, H, 32)`` with ``C * H = 128`` (mel bins ``c * H + h``, time frames last); the authors' loader
concatenates the ``C`` blocks along the bin axis and swaps the axes to ``(1, 32, 128)``, which is what
this loader does once for the whole file. A file that already holds ``(N, 1, 32, 128)`` is taken as is.

The files are read with ``torch.load(weights_only=True)`` (NumPy scalars in the normalisation dicts are
allowed); :func:`save_mhd` writes small files of the same format (for tests).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, check_int
from .dataset import MultimodalDataset
from .missingness import random_missing
from .mnist_svhn import with_transform
from .modality import Modality

SPLITS = ("train", "test")
# Google Drive ids of the authors' files (nexus_pytorch/scenarios/get_mhd_dataset.sh)
DRIVE_IDS = {"train": "1Tj1i-hXA0INQpU0jmuTMO4IwfDoGD2oV", "test": "1qiEjFNCFn1ws383pKmY3zJtm4JDymOU6"}
FIELDS = ("labels", "images", "trajectories", "sounds", "trajectory_normalization", "sound_normalization")
SOUND_SHAPE = (1, 32, 128)
SOUND_FRAMES, SOUND_BINS = 32, 128


def mhd_file(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"mhd_{split}.pt"


def drive_url(split: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={DRIVE_IDS[split]}"


def download_mhd(root: str | os.PathLike, split: str) -> Path:
    """Fetch ``mhd_<split>.pt`` from the authors' Google Drive into ``root`` (needs internet and ``gdown``)."""
    from torchvision.datasets.utils import download_file_from_google_drive

    try:
        download_file_from_google_drive(DRIVE_IDS[split], str(root), mhd_file(root, split).name)
    except (RuntimeError, OSError) as e:  # torchvision raises RuntimeError when gdown is missing
        raise InputError(
            f"could not download MHD's {split} file ({e}); install gdown (pip install gdown) or fetch it by "
            f"hand from {drive_url(split)} into {mhd_file(root, split)}"
        ) from e
    return mhd_file(root, split)


def _safe_globals() -> list:
    # NumPy scalars may hold the normalisation bounds; NumPy 1.x pickles them under numpy.core, NumPy 2
    # under numpy._core, so both names are allowed whichever NumPy is installed.
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray
    scalar = multiarray.scalar
    allowed = [np.dtype, *((scalar, f"{module}.multiarray.scalar") for module in ("numpy.core", "numpy._core"))]
    return allowed + [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64")]


def read_mhd_file(path: str | os.PathLike) -> tuple:
    """The raw 6-tuple stored in an MHD file, read with ``weights_only=True``; raises naming ``path``."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused is None:  # not a pickle torch can parse at all
            raise InputError(f"cannot read MHD file {path} with torch.load: not a torch.save file ({e})") from e
        raise InputError(
            f"{path}: holds an object of class {refused.group(1)}, not only tensors, numbers and dicts; such "
            "objects are not loaded, for safety (an MHD file holds none)"
        ) from e
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise InputError(f"cannot read MHD file {path} with torch.load: {e}") from e
    if not isinstance(content, (tuple, list)) or len(content) != len(FIELDS):
        found = f"a {type(content).__name__}"
        if isinstance(content, (tuple, list)):
            found += f" of {len(content)} items"
        raise InputError(f"{path}: expected a 6-tuple ({', '.join(FIELDS)}), found {found}")
    return tuple(content)


def _tensor(value, field: str, where: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{where}: {field} must be a tensor, found {type(value).__name__}")
    return value


def _float_data(value, field: str, shapes: tuple, where: str) -> torch.Tensor:
    x = _tensor(value, field, where)
    if tuple(x.shape[1:]) not in shapes:
        wanted = " or ".join(f"(N, {', '.join(map(str, s))})" for s in shapes)
        raise InputError(f"{where}: {field} must have shape {wanted}, found {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise InputError(f"{where}: {field} must hold floats, found dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{where}: {field} holds non-finite values (NaN or inf)")
    return x.float()


def _normalization(value, field: str, where: str) -> dict[str, float]:
    if not isinstance(value, dict) or not {"min", "max"} <= set(value):
        found = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise InputError(f"{where}: {field} must be a dict with keys 'min' and 'max', found {found}")
    try:
        bounds = {key: float(value[key]) for key in ("min", "max")}
    except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: a tensor of several numbers
        raise InputError(f"{where}: {field}['min'] and ['max'] must be single numbers ({e})") from e
    if not np.isfinite(list(bounds.values())).all() or bounds["max"] <= bounds["min"]:
        raise InputError(f"{where}: {field} must have finite min < max, found {bounds}")
    return bounds


def unstack_sounds(sounds: torch.Tensor, where: str = "sounds") -> torch.Tensor:
    """Stored spectrogram stacks ``(N, C, H, 32)`` with ``C * H = 128`` → ``(N, 1, 32, 128)`` (time, mel bin).

    Block ``c`` holds bins ``c * H .. c * H + H - 1``: the blocks are concatenated along the bin axis,
    then time and bins swap places. ``(N, 1, 32, 128)`` passes through.
    """
    if sounds.dim() == 4 and tuple(sounds.shape[1:]) == SOUND_SHAPE:
        return sounds
    if sounds.dim() != 4 or sounds.shape[1] * sounds.shape[2] != SOUND_BINS or sounds.shape[3] != SOUND_FRAMES:
        raise InputError(
            f"{where}: sounds must have shape (N, C, H, {SOUND_FRAMES}) with C * H = {SOUND_BINS} (the published "
            f"stack) or (N, {', '.join(map(str, SOUND_SHAPE))}), found {tuple(sounds.shape)}"
        )
    n = sounds.shape[0]
    return sounds.reshape(n, SOUND_BINS, SOUND_FRAMES).transpose(1, 2).unsqueeze(1).contiguous()


def load_mhd(path: str | os.PathLike) -> dict:
    """Checked content of one MHD file: ``{"image", "sound", "trajectory"}`` float32 tensors in the
    modalities' shapes, ``"digit"`` int64 ``(N,)``, and the two normalisation dicts (floats)."""
    where = str(path)
    labels, images, trajectories, sounds, traj_norm, sound_norm = read_mhd_file(path)
    labels = _tensor(labels, "labels", where)
    if labels.dim() != 1:
        raise InputError(f"{where}: labels must have shape (N,), found {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise InputError(f"{where}: labels must be integer class indices, found dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise InputError(
            f"{where}: labels must be digits 0..9, found values in [{int(labels.min())}, {int(labels.max())}]"
        )
    out = {
        "image": _float_data(images, "images", ((1, 28, 28),), where),
        "trajectory": _float_data(trajectories, "trajectories", ((200,),), where),
        "sound": _float_data(unstack_sounds(_tensor(sounds, "sounds", where), where), "sounds", (SOUND_SHAPE,), where),
    }
    counts = {"labels": labels.shape[0], **{k: v.shape[0] for k, v in out.items()}}
    if len(set(counts.values())) != 1:
        raise InputError(f"{where}: the fields disagree on the number of rows: {counts}")
    out["digit"] = labels.long()
    out["trajectory_normalization"] = _normalization(traj_norm, "trajectory_normalization", where)
    out["sound_normalization"] = _normalization(sound_norm, "sound_normalization", where)
    return out


def save_mhd(path, labels, images, trajectories, sounds, trajectory_normalization, sound_normalization) -> Path:
    """Write an MHD file in the published format (the 6-tuple of the module docstring; ``sounds`` as stored)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save((labels, images, trajectories, sounds, trajectory_normalization, sound_normalization), path)
    return path


class MHD(MultimodalDataset):
    """The MHD dataset (modalities ``image``, ``sound``, ``trajectory``; label ``digit``).

    Args:
        root: folder holding ``mhd_train.pt`` / ``mhd_test.pt``.
        split: ``"train"`` or ``"test"``.
        download: fetch a missing file from the authors' Google Drive (needs ``gdown``).
        missing_rate: fraction of rows in which each modality is marked missing (a float or a dict
            name -> rate; never all modalities of a row), seeded by ``missing_seed``.
        size: keep a seeded random subset of ``size`` rows (in file order).
        seed: seeds that subset.
        transform: optional callable applied to every modality's float32 batch as it is handed out, or a
            dict ``name -> callable``.

    Attributes:
        trajectory_normalization, sound_normalization: the files' ``{"min", "max"}`` (floats).
    """

    modalities = (
        Modality("image", (1, 28, 28), likelihood="normal"),
        Modality("sound", SOUND_SHAPE, likelihood="normal"),
        Modality("trajectory", (200,), likelihood="normal"),
    )

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        download: bool = False,
        missing_rate=0.0,
        missing_seed: int = 0,
        size: int | None = None,
        seed: int = 0,
        transform=None,
    ):
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        path = mhd_file(root, split)
        if not path.is_file():
            if not download:
                raise InputError(
                    f"MHD file {path} not found; download it from {drive_url(split)} (the authors' "
                    "nexus_pytorch get_mhd_dataset.sh) into that folder, or pass download=True"
                )
            download_mhd(root, split)
        content = load_mhd(path)
        rows = torch.arange(len(content["digit"]))
        if size is not None:
            size = check_int(size, "size", minimum=1)
            if size > len(rows):
                raise InputError(f"size={size} exceeds the {len(rows)} rows of {path}")
            rng = np.random.default_rng(check_int(seed, "seed", minimum=0))
            rows = torch.from_numpy(np.sort(rng.choice(len(rows), size, replace=False)))
        data = {m.name: content[m.name][rows] if size is not None else content[m.name] for m in self.modalities}
        present = random_missing(len(rows), list(data), missing_rate, missing_seed)
        if all(bool(p.all()) for p in present.values()):
            present = None  # nothing missing: spares MultimodalDataset's zero-filled copy of every tensor
        decode = with_transform({}, list(data), transform)
        super().__init__(data, present, {"digit": content["digit"][rows]}, type(self).modalities, decode=decode)
        self.root, self.split, self.transform = Path(root), split, transform
        self.trajectory_normalization = content["trajectory_normalization"]
        self.sound_normalization = content["sound_normalization"]

    def denormalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Undo the min-max normalisation of ``"sound"`` (dB) or ``"trajectory"`` (pen coordinates)."""
        bounds = {"sound": self.sound_normalization, "trajectory": self.trajectory_normalization}.get(name)
        if bounds is None:
            raise InputError(f"denormalize: only 'sound' and 'trajectory' are normalised, got {name!r}")
        return x * (bounds["max"] - bounds["min"]) + bounds["min"]
