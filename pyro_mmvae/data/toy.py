"""Circles and squares: the toy bimodal dataset of the JNF paper (Section 4.1, Appendix A.4).

The JNF paper: "Bridging the inference gap in Multimodal Variational Autoencoders".

Each data point is a pair of 32×32 black-and-white images, a centred square (modality ``square``)
and a centred circle (modality ``circle``). Widths are independent integers, uniform in
[10, 28] pixels. The class *full* (1) or *empty* (0, a 2-pixel outline) is shared by both images.
The paper uses 200,000 pairs, half of them full.

Images are rendered on the fly from per-item parameters (class and both widths) that are drawn
once from a generator seeded by ``(seed, split)``: any split of any size costs only its parameter
arrays in memory and is reproducible bit for bit.

Labels: ``full`` (int64, 1 = full), ``square_size`` and ``circle_size`` (float widths in pixels).
"""

from __future__ import annotations

import numpy as np
import torch

from .batch import MultimodalBatch
from .missingness import random_missing
from .modality import Modality

IMAGE_SIZE = 32
MIN_WIDTH, MAX_WIDTH = 10, 28
OUTLINE = 2.0
SPLITS = {"train": 0, "validation": 1, "test": 2}
DEFAULT_SIZES = {"train": 180_000, "validation": 10_000, "test": 10_000}

_coords = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5 - IMAGE_SIZE / 2  # pixel centres around 0


def render_squares(width: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Squares of side ``width`` (``(B,)`` float) centred in a 32×32 image → ``(B, 1, 32, 32)`` in {0, 1}."""
    half = width.reshape(-1, 1, 1) / 2
    cheb = torch.maximum(_coords.abs().reshape(1, -1, 1), _coords.abs().reshape(1, 1, -1))
    inside = cheb <= half
    ring = cheb > half - OUTLINE
    img = inside & (full.reshape(-1, 1, 1).bool() | ring)
    return img.unsqueeze(1).float()


def render_circles(width: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Discs (full) or rings (empty) of diameter ``width`` → ``(B, 1, 32, 32)`` in {0, 1}."""
    r = width.reshape(-1, 1, 1) / 2
    dist = torch.sqrt(_coords.reshape(1, -1, 1) ** 2 + _coords.reshape(1, 1, -1) ** 2)
    inside = dist <= r
    ring = dist > r - OUTLINE
    img = inside & (full.reshape(-1, 1, 1).bool() | ring)
    return img.unsqueeze(1).float()


def centre_fill_classifier(images: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Predict full (1) / empty (0) from images ``(B, 1, 32, 32)`` (or mean images in [0, 1]).

    The smallest shape is 10 px wide with a 2 px outline, so the central 4×4 patch is white for
    every full shape and black for every empty one: its mean intensity (its fill ratio) decides.
    """
    c = IMAGE_SIZE // 2
    patch = images[..., c - 2 : c + 2, c - 2 : c + 2]
    return (patch.float().mean(dim=(-1, -2, -3)) > threshold).long()


class CirclesSquares(torch.utils.data.Dataset):
    """Seeded on-the-fly circles/squares pairs.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"`` (disjoint random streams).
        size: number of pairs (default 180k / 10k / 10k, i.e. the paper's 200k in all).
        seed: base seed; the split's parameters depend only on ``(seed, split)``.
        missing_rate: fraction of rows in which each modality is marked missing (a float or
            ``{name: rate}``; never a whole row: :func:`~pyro_mmvae.data.missingness.random_missing`).
        missing_seed: seed of those masks.
    """

    modalities = (
        Modality("square", (1, IMAGE_SIZE, IMAGE_SIZE), likelihood="bernoulli"),
        Modality("circle", (1, IMAGE_SIZE, IMAGE_SIZE), likelihood="bernoulli"),
    )

    def __init__(
        self, split: str = "train", size: int | None = None, seed: int = 0, missing_rate=0.0, missing_seed: int = 0
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        size = DEFAULT_SIZES[split] if size is None else int(size)
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        rng = np.random.default_rng([int(seed), SPLITS[split]])
        # Exactly half full (the paper's balance), in random order.
        full = np.zeros(size, dtype=np.int64)
        full[: size // 2] = 1
        rng.shuffle(full)
        self.full = torch.from_numpy(full)
        self.square_size = torch.from_numpy(rng.integers(MIN_WIDTH, MAX_WIDTH + 1, size).astype(np.float32))
        self.circle_size = torch.from_numpy(rng.integers(MIN_WIDTH, MAX_WIDTH + 1, size).astype(np.float32))
        self.split, self.seed = split, seed
        self.present = None
        if isinstance(missing_rate, dict) or missing_rate != 0:
            self.present = random_missing(size, self.names, missing_rate, missing_seed)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def __len__(self) -> int:
        return len(self.full)

    def __getitems__(self, indices) -> MultimodalBatch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        full = self.full[idx]
        sq = render_squares(self.square_size[idx], full)
        ci = render_circles(self.circle_size[idx], full)
        return MultimodalBatch(
            {"square": sq, "circle": ci},
            present={} if self.present is None else {k: v[idx] for k, v in self.present.items()},
            labels={"full": full, "square_size": self.square_size[idx], "circle_size": self.circle_size[idx]},
        )

    def __getitem__(self, i: int) -> dict:
        b = self.__getitems__([int(i)])
        return {
            "data": {k: v[0] for k, v in b.data.items()},
            "present": {k: v[0] for k, v in b.present.items()},
            "labels": {k: v[0] for k, v in b.labels.items()},
        }
