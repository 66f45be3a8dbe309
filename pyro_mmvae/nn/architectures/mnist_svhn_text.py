"""MoPoE's MNIST-SVHN-Text networks (Sutter et al., ICLR 2021; code ``thomassutter/MoPoE``, ``mnistsvhntext/networks``).

The permutation-invariant paper ("Learning multi-modal generative models with permutation-invariant
encoders and tighter variational objectives", Appendix M.5 / N) uses MoPoE's code for this data set,
but its printed conv shapes do not compose (e.g. "Dense 2048×D_E" after four stride-2 convs of a
32×32 image ending in 128 channels at 1×1); we follow MoPoE's networks, as the project's spec says.

- MNIST: the MLPs of :mod:`~pyro_mmvae.nn.architectures.mnist_svhn` (784 → 400 → out; MoPoE's
  ``num_hidden_layers=1``; the permutation-invariant paper's tables show two hidden layers — pass
  ``num_hidden_layers=2``).
- SVHN encoder ``(*lead, 3, 32, 32) → (*lead, out)``: Conv(3, 32, 4, 2, 1), ReLU, Conv(32, 64, 4, 2, 1),
  ReLU, Conv(64, 64, 4, 2, 1), ReLU, Conv(64, 128, 4, 2, 0), ReLU (→ 128×1×1), Linear(128, out).
- SVHN decoder ``(*lead, D) → (*lead, 3, 32, 32)``: Linear(D, 128), ReLU, ConvT(128, 64, 4, 1, 0) (4×4),
  ReLU, ConvT(64, 64, 4, 2, 1) (8×8), ReLU, ConvT(64, 32, 4, 2, 1) (16×16), ReLU, ConvT(32, 3, 4, 2, 1)
  (32×32), no output activation (MoPoE's Laplace mean is unbounded).
- Text encoder ``(*lead, 8, 71) → (*lead, out)`` (one-hot characters; MoPoE ``dim = 64`` → 128
  channels): transpose to channels × length, Conv1d(71, 128, 1), ReLU, Conv1d(128, 128, 4, 2, 1)
  (length 4), ReLU, Conv1d(128, 128, 4, 2, 0) (length 1), ReLU, Linear(128, out).
- Text decoder ``(*lead, D) → (*lead, 8, 71)`` logits: Linear(D, 128), ConvT1d(128, 128, 4, 1, 0)
  (length 4), ReLU, ConvT1d(128, 128, 4, 2, 1) (length 8), ReLU, Conv1d(128, 71, 1), transpose.
  MoPoE ends with a log-softmax over the 71 symbols; logits that differ from it by a per-position
  constant give the same ``OneHotCategorical``, so the decoder returns the unnormalised logits.

Text given as class indices ``(*lead, 8)`` (a ``"categorical"`` modality with 71 classes) is one-hot
encoded first; the decoder's ``(8, 71)`` logits serve both likelihoods.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import EventNet, Transpose, Unflatten, output_activation
from .mnist_svhn import SVHN_SHAPE

TEXT_LENGTH = 8  # MoPoE's len_sequence
ALPHABET_SIZE = 71  # MoPoE's alphabet
TEXT_SHAPE = (TEXT_LENGTH, ALPHABET_SIZE)
TEXT_CHANNELS = 128  # 2 × MoPoE's dim = 64
SVHN_FEATURES = 128  # channels (at 1×1) of the last SVHN conv


class MoPoESVHNEncoder(EventNet):
    """MoPoE's SVHN encoder: ``(*lead, 3, 32, 32) → (*lead, out_dim)``."""

    def __init__(self, out_dim: int):
        net = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1),  # 16×16
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),  # 8×8
            nn.ReLU(),
            nn.Conv2d(64, 64, 4, 2, 1),  # 4×4
            nn.ReLU(),
            nn.Conv2d(64, SVHN_FEATURES, 4, 2, 0),  # 1×1
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(SVHN_FEATURES, out_dim),
        )
        super().__init__(SVHN_SHAPE, (out_dim,), net, "MoPoE SVHN encoder")


class MoPoESVHNDecoder(EventNet):
    """MoPoE's SVHN decoder: ``(*lead, in_dim) → (*lead, 3, 32, 32)`` (``output="identity"`` as MoPoE)."""

    def __init__(self, in_dim: int, output: str = "identity"):
        net = nn.Sequential(
            nn.Linear(in_dim, SVHN_FEATURES),
            nn.ReLU(),
            Unflatten(SVHN_FEATURES, 1, 1),
            nn.ConvTranspose2d(SVHN_FEATURES, 64, 4, 1, 0),  # 4×4
            nn.ReLU(),
            nn.ConvTranspose2d(64, 64, 4, 2, 1),  # 8×8
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),  # 16×16
            nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 4, 2, 1),  # 32×32
            output_activation(output),
        )
        super().__init__((in_dim,), SVHN_SHAPE, net, "MoPoE SVHN decoder")


class OneHot(nn.Module):
    """Class indices ``(N, L)`` → one-hot floats ``(N, L, K)``."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x.long(), self.num_classes).float()


class TextEncoder(EventNet):
    """MoPoE's 1-D conv text encoder: ``(*lead, 8, 71)`` one-hot (or ``(*lead, 8)`` indices) ``→ (*lead, out_dim)``."""

    def __init__(self, out_dim: int, indices: bool = False):
        layers: list[nn.Module] = [OneHot(ALPHABET_SIZE)] if indices else []
        layers += [
            Transpose(),  # (N, 71, 8): symbols are the channels
            nn.Conv1d(ALPHABET_SIZE, TEXT_CHANNELS, 1),
            nn.ReLU(),
            nn.Conv1d(TEXT_CHANNELS, TEXT_CHANNELS, 4, 2, 1),  # length 4
            nn.ReLU(),
            nn.Conv1d(TEXT_CHANNELS, TEXT_CHANNELS, 4, 2, 0),  # length 1
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(TEXT_CHANNELS, out_dim),
        ]
        in_shape = (TEXT_LENGTH,) if indices else TEXT_SHAPE
        net = nn.Sequential(*layers)
        super().__init__(in_shape, (out_dim,), net, "MoPoE text encoder", float_input=not indices)


class TextDecoder(EventNet):
    """MoPoE's 1-D transposed-conv text decoder: ``(*lead, in_dim) → (*lead, 8, 71)`` logits."""

    def __init__(self, in_dim: int, output: str = "identity"):
        net = nn.Sequential(
            nn.Linear(in_dim, TEXT_CHANNELS),
            Unflatten(TEXT_CHANNELS, 1),
            nn.ConvTranspose1d(TEXT_CHANNELS, TEXT_CHANNELS, 4, 1, 0),  # length 4
            nn.ReLU(),
            nn.ConvTranspose1d(TEXT_CHANNELS, TEXT_CHANNELS, 4, 2, 1),  # length 8
            nn.ReLU(),
            nn.Conv1d(TEXT_CHANNELS, ALPHABET_SIZE, 1),
            Transpose(),  # (N, 8, 71)
            output_activation(output),
        )
        super().__init__((in_dim,), TEXT_SHAPE, net, "MoPoE text decoder")
