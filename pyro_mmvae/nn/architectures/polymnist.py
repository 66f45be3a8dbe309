"""PolyMNIST / Translated PolyMNIST ResNets of MMVAE+ (Palumbo et al., ICLR 2023).

The JNF paper (Appendix E.2-E.3, Figure 18) uses "the same ResNet architectures as used in [MMVAE+]"
for PolyMNIST and "similar architectures" for Translated PolyMNIST. Layer facts from MMVAE+'s public
code (``resnet_polyMNIST.py``: ``s0 = 7``, ``nf = 64``, two resolution halvings 28 → 14 → 7) and its
MultiVae port (``EncoderResnetMMNIST`` / ``DecoderResnetMMNIST``, used by the JNF authors' PolyMNIST
runs with a single latent branch):

- encoder ``(*lead, 3, 28, 28) → (*lead, out)``: Conv(3, 64, 3, pad 1) → Block(64, 64) →
  AvgPool(3, 2, 1) → Block(64, 128) (14×14) → AvgPool(3, 2, 1) → Block(128, 256) (7×7) → flatten
  (12,544) → Linear(12544, out). MMVAE+'s encoder has this branch twice (shared and private
  latents); a model with one latent z uses one branch, and its mean / log-variance heads
  Linear(12544, D) × 2 are stacked into one Linear(12544, 2D).
- decoder ``(*lead, D) → (*lead, 3, 28, 28)``: Linear(D, 256·7·7) → Block(256, 128) → Upsample ×2 →
  Block(128, 64) → Upsample ×2 → Block(64, 64) → LeakyReLU(0.2) → Conv(64, 3, 3, pad 1), no output
  activation (MMVAE+ returns this as the Laplace mean with scale 0.75).

Blocks: :class:`~pyro_mmvae.nn.architectures.blocks.PreActResnetBlock`.

``nets="mopoe"`` selects MoPoE's smaller PolyMNIST conv nets instead (:class:`PolyMNISTConvEncoder`).
``base_channels`` (MMVAE+'s ``nf``, 64) scales every ResNet layer's width; the convolutions' cost grows with
its square, so reduced runs on a CPU use e.g. 16 (16× fewer convolution FLOPs) and say so.
"""

from __future__ import annotations

from torch import nn

from ...errors import InputError, check_int
from .blocks import EventNet, PreActResnetBlock, Unflatten, output_activation

POLYMNIST_SHAPE = (3, 28, 28)
BASE_CHANNELS = 64  # MMVAE+'s nf
BOTTOM_SIDE = 7  # MMVAE+'s s0
NUM_HALVINGS = 2  # log2(28 / 7)


class PolyMNISTEncoder(EventNet):
    """MMVAE+'s ResNet encoder (one branch): ``(*lead, 3, 28, 28) → (*lead, out_dim)``."""

    def __init__(self, out_dim: int, base_channels: int = BASE_CHANNELS):
        c = check_int(base_channels, "base_channels", minimum=1)
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1), PreActResnetBlock(c, c)]
        for i in range(NUM_HALVINGS):
            layers += [nn.AvgPool2d(3, stride=2, padding=1), PreActResnetBlock(c * 2**i, c * 2 ** (i + 1))]
        layers += [nn.Flatten(), nn.Linear(c * 2**NUM_HALVINGS * BOTTOM_SIDE**2, out_dim)]
        super().__init__(POLYMNIST_SHAPE, (out_dim,), nn.Sequential(*layers), "PolyMNIST ResNet encoder")


class PolyMNISTDecoder(EventNet):
    """MMVAE+'s ResNet decoder: ``(*lead, in_dim) → (*lead, 3, 28, 28)`` (``output="identity"`` as MMVAE+)."""

    def __init__(self, in_dim: int, output: str = "identity", base_channels: int = BASE_CHANNELS):
        c = check_int(base_channels, "base_channels", minimum=1)
        bottom = c * 2**NUM_HALVINGS
        layers: list[nn.Module] = [
            nn.Linear(in_dim, bottom * BOTTOM_SIDE**2),
            Unflatten(bottom, BOTTOM_SIDE, BOTTOM_SIDE),
        ]
        for i in range(NUM_HALVINGS):
            c_in, c_out = c * 2 ** (NUM_HALVINGS - i), c * 2 ** (NUM_HALVINGS - i - 1)
            layers += [PreActResnetBlock(c_in, c_out), nn.Upsample(scale_factor=2)]
        layers += [
            PreActResnetBlock(c, c),
            nn.LeakyReLU(PreActResnetBlock.SLOPE),
            nn.Conv2d(c, 3, 3, padding=1),
            output_activation(output),
        ]
        super().__init__((in_dim,), POLYMNIST_SHAPE, nn.Sequential(*layers), "PolyMNIST ResNet decoder")


# ------------------------------------------------------------------ MoPoE's PolyMNIST nets (nets="mopoe")
MOPOE_HIDDEN = 512  # MoPoE's PolyMNIST class_dim: the width of the encoder's last hidden layer


class PolyMNISTConvEncoder(EventNet):
    """MoPoE's PolyMNIST encoder (Sutter et al., ICLR 2021, public code ``ConvNetworksImgCMNIST``):
    ``(*lead, 3, 28, 28) → (*lead, out_dim)``.

    Conv(3, 32, 3, s2, p1) → ReLU → Conv(32, 64, 3, s2, p1) → ReLU → Conv(64, 128, 3, s2, p1) → ReLU →
    flatten (128·4·4 = 2048) → Linear(2048, 512) → ReLU → Linear(512, out) (its mean and log-variance
    heads, stacked). Strided convolutions only: about a fifth of the ResNet's FLOPs, which is what makes
    PolyMNIST trainable on a CPU.
    """

    def __init__(self, out_dim: int, hidden: int = MOPOE_HIDDEN):
        layers = [
            nn.Conv2d(3, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim),
        ]
        super().__init__(POLYMNIST_SHAPE, (out_dim,), nn.Sequential(*layers), "PolyMNIST MoPoE conv encoder")


class PolyMNISTConvDecoder(EventNet):
    """MoPoE's PolyMNIST decoder: ``(*lead, in_dim) → (*lead, 3, 28, 28)``.

    Linear(in, 2048) → ReLU → (128, 4, 4) → ConvT(128, 64, 3, s2, p1) → ReLU → ConvT(64, 32, 3, s2, p1,
    output padding 1) → ReLU → ConvT(32, 3, 3, s2, p1, output padding 1); no output activation (MoPoE uses
    it as the Laplace mean with scale 0.75).
    """

    def __init__(self, in_dim: int, output: str = "identity"):
        layers = [
            nn.Linear(in_dim, 128 * 4 * 4),
            nn.ReLU(),
            Unflatten(128, 4, 4),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 3, stride=2, padding=1, output_padding=1),
            output_activation(output),
        ]
        super().__init__((in_dim,), POLYMNIST_SHAPE, nn.Sequential(*layers), "PolyMNIST MoPoE conv decoder")


POLYMNIST_NETS = ("resnet", "mopoe")


def polymnist_encoder(out_dim: int, nets: str = "resnet", **options) -> EventNet:
    """The PolyMNIST encoder ``nets``: ``"resnet"`` (MMVAE+, the JNF paper's) or ``"mopoe"`` (MoPoE's conv net)."""
    if nets == "resnet":
        return PolyMNISTEncoder(out_dim, **options)
    if nets == "mopoe":
        return PolyMNISTConvEncoder(out_dim, **options)
    raise InputError(f"PolyMNIST nets must be one of {POLYMNIST_NETS}, got {nets!r}")


def polymnist_decoder(in_dim: int, output: str = "identity", nets: str = "resnet", **options) -> EventNet:
    """The PolyMNIST decoder ``nets`` (see :func:`polymnist_encoder`)."""
    if nets == "resnet":
        return PolyMNISTDecoder(in_dim, output=output, **options)
    if nets == "mopoe":
        return PolyMNISTConvDecoder(in_dim, output=output, **options)
    raise InputError(f"PolyMNIST nets must be one of {POLYMNIST_NETS}, got {nets!r}")
