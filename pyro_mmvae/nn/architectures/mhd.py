"""MHD networks of the JNF paper (Appendix E.4, Table 7), taken from Nexus (Vasco et al., 2022).

Table 7 in our text copy is partly garbled; the layer facts were checked against the JNF authors'
public MHD code (``multivae_experiments/incomplete_mhd/architectures.py``: ``Encoder_Conv_VAE_MNIST``,
``Decoder_Conv_AE_MNIST``, ``SoundEncoder``/``SoundDecoder``, ``TrajectoryEncoder``/``TrajectoryDecoder``
with layer sizes [512, 512, 512]). BN = BatchNorm (``batch_norm=False`` drops every BN layer).

- image encoder ``(*lead, C, 28, 28) → (*lead, out)``: [Conv(·, c, 4, 2, 1), BN, ReLU] for
  c = 128, 256, 512, 1024 (28 → 14 → 7 → 3 → 1), Linear(1024, out) (the table's "Conv2d(1,128,4,2)"
  omits the padding of 1 without which the sizes do not reach 1×1).
- image decoder ``(*lead, D) → (*lead, C, 28, 28)``: Linear(D, 1024·4·4), ConvT(1024, 512, 3, 2, 1) (7×7),
  BN, ReLU, ConvT(512, 256, 3, 2, 1, out-pad 1) (14×14), BN, ReLU, ConvT(256, C, 3, 2, 1, out-pad 1)
  (28×28), Sigmoid.
- sound encoder ``(*lead, 1, 32, 128) → (*lead, out)``: Conv(1, 128, (1, 128)) (mixes the 128 frequency
  bins: → 128×32×1), BN, ReLU, Conv(128, 128, (4, 1), (2, 1), (1, 0)) (16×1), BN, ReLU,
  Conv(128, 256, (4, 1), (2, 1), (1, 0)) (8×1), BN, ReLU, flatten (2048), Linear(2048, out); convs bias-free.
- sound decoder ``(*lead, D) → (*lead, 1, 32, 128)``: Linear(D, 2048), BN, ReLU, view 256×8×1,
  ConvT(256, 128, (4, 1), (2, 1), (1, 0)), BN, ReLU, ConvT(128, 128, (4, 1), (2, 1), (1, 0)), BN, ReLU,
  ConvT(128, 1, (1, 128)), Sigmoid; transposed convs bias-free.
- trajectory encoder ``(*lead, 200) → (*lead, out)``: [Linear(·, 512), BN, LeakyReLU(0.01)] × 3, Linear(512, out).
- trajectory decoder ``(*lead, D) → (*lead, 200)``: [Linear(·, 512), BN, LeakyReLU(0.01)] × 3,
  Linear(512, 200), Sigmoid.

The encoders' mean / log-variance heads are stacked into one output layer (same parameters).
BatchNorm makes a row's output depend on the other rows of its batch in training mode; call
``.eval()`` for evaluation, importance sampling and subset-posterior sampling.
"""

from __future__ import annotations

from torch import nn

from .blocks import EventNet, Unflatten, output_activation

IMAGE_SIDE = 28
SOUND_SHAPE = (1, 32, 128)
TRAJECTORY_SHAPE = (200,)
IMAGE_CHANNELS = (128, 256, 512, 1024)
SOUND_CHANNELS = 128
SOUND_BOTTOM = (256, 8, 1)  # 256 channels × 8 time steps × 1 = 2048 features
TRAJECTORY_HIDDEN = (512, 512, 512)


def _norm2d(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def _norm1d(features: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm1d(features) if batch_norm else nn.Identity()


class MHDImageEncoder(EventNet):
    """Conv encoder for MHD's MNIST images: ``(*lead, C, 28, 28) → (*lead, out_dim)`` (C = 1 in MHD)."""

    def __init__(self, out_dim: int, channels: int = 1, batch_norm: bool = True):
        layers: list[nn.Module] = []
        c_in = channels
        for c in IMAGE_CHANNELS:
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), _norm2d(c, batch_norm), nn.ReLU()]
            c_in = c
        layers += [nn.Flatten(), nn.Linear(IMAGE_CHANNELS[-1], out_dim)]  # 1024 × 1 × 1
        shape = (channels, IMAGE_SIDE, IMAGE_SIDE)
        super().__init__(shape, (out_dim,), nn.Sequential(*layers), "MHD image encoder")


class MHDImageDecoder(EventNet):
    """Transposed-conv decoder for MHD's images: ``(*lead, in_dim) → (*lead, C, 28, 28)``."""

    def __init__(self, in_dim: int, channels: int = 1, batch_norm: bool = True, output: str = "sigmoid"):
        net = nn.Sequential(
            nn.Linear(in_dim, 1024 * 4 * 4),
            Unflatten(1024, 4, 4),
            nn.ConvTranspose2d(1024, 512, 3, 2, padding=1),  # 7×7
            _norm2d(512, batch_norm),
            nn.ReLU(),
            nn.ConvTranspose2d(512, 256, 3, 2, padding=1, output_padding=1),  # 14×14
            _norm2d(256, batch_norm),
            nn.ReLU(),
            nn.ConvTranspose2d(256, channels, 3, 2, padding=1, output_padding=1),  # 28×28
            output_activation(output),
        )
        shape = (channels, IMAGE_SIDE, IMAGE_SIDE)
        super().__init__((in_dim,), shape, net, "MHD image decoder")


class MHDSoundEncoder(EventNet):
    """Conv encoder for MHD's sound spectrograms: ``(*lead, 1, 32, 128) → (*lead, out_dim)``."""

    def __init__(self, out_dim: int, batch_norm: bool = True):
        c = SOUND_CHANNELS
        net = nn.Sequential(
            nn.Conv2d(1, c, (1, 128), bias=False),  # 128 × 32 × 1
            _norm2d(c, batch_norm),
            nn.ReLU(),
            nn.Conv2d(c, c, (4, 1), (2, 1), (1, 0), bias=False),  # 128 × 16 × 1
            _norm2d(c, batch_norm),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, (4, 1), (2, 1), (1, 0), bias=False),  # 256 × 8 × 1
            _norm2d(2 * c, batch_norm),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * c * 8, out_dim),
        )
        super().__init__(SOUND_SHAPE, (out_dim,), net, "MHD sound encoder")


class MHDSoundDecoder(EventNet):
    """Transposed-conv decoder for MHD's sound spectrograms: ``(*lead, in_dim) → (*lead, 1, 32, 128)``."""

    def __init__(self, in_dim: int, batch_norm: bool = True, output: str = "sigmoid"):
        c = SOUND_CHANNELS
        features = SOUND_BOTTOM[0] * SOUND_BOTTOM[1] * SOUND_BOTTOM[2]
        net = nn.Sequential(
            nn.Linear(in_dim, features),
            _norm1d(features, batch_norm),
            nn.ReLU(),
            Unflatten(*SOUND_BOTTOM),
            nn.ConvTranspose2d(SOUND_BOTTOM[0], c, (4, 1), (2, 1), (1, 0), bias=False),  # 128 × 16 × 1
            _norm2d(c, batch_norm),
            nn.ReLU(),
            nn.ConvTranspose2d(c, c, (4, 1), (2, 1), (1, 0), bias=False),  # 128 × 32 × 1
            _norm2d(c, batch_norm),
            nn.ReLU(),
            nn.ConvTranspose2d(c, 1, (1, 128), bias=False),  # 1 × 32 × 128
            output_activation(output),
        )
        super().__init__((in_dim,), SOUND_SHAPE, net, "MHD sound decoder")


def _dense_stack(in_dim: int, batch_norm: bool) -> list[nn.Module]:
    """[Linear(·, 512), BN, LeakyReLU] × 3 (Nexus's trajectory networks; LeakyReLU's default slope 0.01)."""
    layers: list[nn.Module] = []
    for width in TRAJECTORY_HIDDEN:
        layers += [nn.Linear(in_dim, width), _norm1d(width, batch_norm), nn.LeakyReLU()]
        in_dim = width
    return layers


class MHDTrajectoryEncoder(EventNet):
    """MLP encoder for MHD's 200-D pen trajectories: ``(*lead, 200) → (*lead, out_dim)``."""

    def __init__(self, out_dim: int, batch_norm: bool = True):
        net = nn.Sequential(*_dense_stack(TRAJECTORY_SHAPE[0], batch_norm), nn.Linear(TRAJECTORY_HIDDEN[-1], out_dim))
        super().__init__(TRAJECTORY_SHAPE, (out_dim,), net, "MHD trajectory encoder")


class MHDTrajectoryDecoder(EventNet):
    """MLP decoder for MHD's trajectories: ``(*lead, in_dim) → (*lead, 200)``."""

    def __init__(self, in_dim: int, batch_norm: bool = True, output: str = "sigmoid"):
        net = nn.Sequential(
            *_dense_stack(in_dim, batch_norm),
            nn.Linear(TRAJECTORY_HIDDEN[-1], TRAJECTORY_SHAPE[0]),
            output_activation(output),
        )
        super().__init__((in_dim,), TRAJECTORY_SHAPE, net, "MHD trajectory decoder")
