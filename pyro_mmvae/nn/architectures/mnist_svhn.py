"""MNIST and SVHN networks of the JNF paper's MNIST-SVHN experiments (its Appendix E.1, Table 6).

"Bridging the inference gap in Multimodal Variational Autoencoders" takes these from MMVAE (Shi et
al., 2019). The table in our text copy is partly garbled; the layer facts below were checked against
the JNF authors' public code (MultiVae's ``Encoder_VAE_SVHN`` / ``Decoder_VAE_SVHN`` and its MNIST
MLPs):

- MNIST encoder ``(*lead, 1, 28, 28) → (*lead, out)``: flatten, Linear(784, 400), ReLU,
  [Linear(400, 400), ReLU] × (num_hidden_layers − 1), Linear(400, out). The paper's two heads
  Linear(400, D), Linear(400, D) are stacked into one Linear(400, 2D) (same parameters).
- MNIST decoder ``(*lead, D) → (*lead, 1, 28, 28)``: Linear(D, 400), ReLU, [Linear(400, 400), ReLU] × (n − 1),
  Linear(400, 784), Sigmoid (the mean of the paper's Laplace likelihood lies in [0, 1]).
- SVHN encoder ``(*lead, 3, 32, 32) → (*lead, out)``: Conv(3, 32, 4, 2, 1), ReLU, Conv(32, 64, 4, 2, 1),
  ReLU, Conv(64, 128, 4, 2, 1), ReLU (→ 128×4×4), Conv(128, out, 4, 1, 0) (→ out×1×1; the paper's
  two conv heads stacked).
- SVHN decoder ``(*lead, D) → (*lead, 3, 32, 32)``: ConvT(D, 128, 4, 1, 0) (→ 4×4), ReLU,
  ConvT(128, 64, 4, 2, 1), ReLU, ConvT(64, 32, 4, 2, 1), ReLU, ConvT(32, 3, 4, 2, 1), Sigmoid.
  (Table 6 prints "4,4,1,0" for every transposed conv — those shapes do not compose to 32×32; the
  code's strides do.)

MoPoE's MNIST networks (MNIST-SVHN-Text) are the same MLPs with ``num_hidden_layers=1`` (its default).
"""

from __future__ import annotations

from torch import nn

from .blocks import EventNet, Unflatten, output_activation

MNIST_SHAPE = (1, 28, 28)
SVHN_SHAPE = (3, 32, 32)
MNIST_HIDDEN = 400  # MMVAE / MoPoE / JNF Table 6
SVHN_BASE_CHANNELS = 32  # MMVAE's fBase


def _hidden_stack(num_hidden_layers: int, width: int) -> list[nn.Module]:
    """``num_hidden_layers − 1`` extra [Linear(width, width), ReLU] pairs (the input layer is the first hidden one)."""
    if num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
    layers: list[nn.Module] = []
    for _ in range(num_hidden_layers - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return layers


class MNISTEncoder(EventNet):
    """MLP encoder for MNIST digits: ``(*lead, 1, 28, 28) → (*lead, out_dim)`` (JNF Table 6 / MMVAE / MoPoE)."""

    def __init__(self, out_dim: int, num_hidden_layers: int = 1, hidden: int = MNIST_HIDDEN):
        net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden),
            nn.ReLU(),
            *_hidden_stack(num_hidden_layers, hidden),
            nn.Linear(hidden, out_dim),
        )
        super().__init__(MNIST_SHAPE, (out_dim,), net, "MNIST encoder")


class MNISTDecoder(EventNet):
    """MLP decoder for MNIST digits: ``(*lead, in_dim) → (*lead, 1, 28, 28)``; ``output`` ∈ {"sigmoid", "identity"}."""

    def __init__(self, in_dim: int, num_hidden_layers: int = 1, hidden: int = MNIST_HIDDEN, output: str = "sigmoid"):
        net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            *_hidden_stack(num_hidden_layers, hidden),
            nn.Linear(hidden, 28 * 28),
            output_activation(output),
            Unflatten(*MNIST_SHAPE),
        )
        super().__init__((in_dim,), MNIST_SHAPE, net, "MNIST decoder")


class SVHNEncoder(EventNet):
    """MMVAE's conv encoder for SVHN (JNF Table 6): ``(*lead, 3, 32, 32) → (*lead, out_dim)``."""

    def __init__(self, out_dim: int, base: int = SVHN_BASE_CHANNELS):
        net = nn.Sequential(
            nn.Conv2d(3, base, 4, 2, 1),  # 16×16
            nn.ReLU(),
            nn.Conv2d(base, 2 * base, 4, 2, 1),  # 8×8
            nn.ReLU(),
            nn.Conv2d(2 * base, 4 * base, 4, 2, 1),  # 4×4
            nn.ReLU(),
            nn.Conv2d(4 * base, out_dim, 4, 1, 0),  # 1×1: the stacked mean / log-variance heads
            nn.Flatten(),
        )
        super().__init__(SVHN_SHAPE, (out_dim,), net, "SVHN encoder")


class SVHNDecoder(EventNet):
    """MMVAE's transposed-conv decoder for SVHN (JNF Table 6): ``(*lead, in_dim) → (*lead, 3, 32, 32)``."""

    def __init__(self, in_dim: int, base: int = SVHN_BASE_CHANNELS, output: str = "sigmoid"):
        net = nn.Sequential(
            Unflatten(in_dim, 1, 1),
            nn.ConvTranspose2d(in_dim, 4 * base, 4, 1, 0),  # 4×4
            nn.ReLU(),
            nn.ConvTranspose2d(4 * base, 2 * base, 4, 2, 1),  # 8×8
            nn.ReLU(),
            nn.ConvTranspose2d(2 * base, base, 4, 2, 1),  # 16×16
            nn.ReLU(),
            nn.ConvTranspose2d(base, 3, 4, 2, 1),  # 32×32
            output_activation(output),
        )
        super().__init__((in_dim,), SVHN_SHAPE, net, "SVHN decoder")
