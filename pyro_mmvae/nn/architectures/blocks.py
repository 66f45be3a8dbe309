"""Pieces shared by the published architectures: leading-dimension handling, output activations, ResNet blocks.

Every network of :mod:`pyro_mmvae.nn.architectures` is an :class:`EventNet`: a torch network ``net``
written for one flat batch ``(N, *in_shape) → (N, *out_shape)``, wrapped so that it broadcasts over
any leading dimensions like the library's other blocks (:mod:`pyro_mmvae.nn.networks`)::

    (*lead, *in_shape) → (*lead, *out_shape)

Encoders have ``in_shape`` = the modality's event shape and ``out_shape = (out_dim,)``; decoders have
``in_shape = (in_dim,)`` and ``out_shape`` = the likelihood's parameter shape. Pyro's vectorised
particles put their dimensions on the LEFT of the data plate (z of shape ``(L, B, D)``), so every
decoder must take them; the leading dimensions are flattened into one batch axis for the inner
network (BatchNorm layers therefore see all ``L·B`` rows as one batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import InputError

# Decoder output activations: "sigmoid" keeps a Normal/Laplace mean inside [0, 1] as the papers'
# image decoders do; "identity" leaves logits (Bernoulli, categorical) or unbounded means.
OUTPUT_ACTIVATIONS = ("sigmoid", "identity")


def output_activation(name: str) -> nn.Module:
    """``nn.Sigmoid()`` or ``nn.Identity()`` for ``name`` in :data:`OUTPUT_ACTIVATIONS`."""
    if name not in OUTPUT_ACTIVATIONS:
        raise InputError(f"output activation must be one of {OUTPUT_ACTIVATIONS}, got {name!r}")
    return nn.Sigmoid() if name == "sigmoid" else nn.Identity()


class EventNet(nn.Module):
    """A network on ``(N, *in_shape)`` over any leading dims: ``(*lead, *in_shape) → (*lead, *out_shape)``.

    Args:
        in_shape: event shape of one input (the modality's shape for an encoder, ``(D,)`` for a decoder).
        out_shape: event shape of one output.
        net: the inner network, ``(N, *in_shape) → (N, *out_shape)`` (or any shape with that many elements).
        what: how the network is named in error messages (e.g. ``"PolyMNIST encoder"``).
        float_input: cast integer inputs to float first (off for networks that read class indices).

    Attributes ``in_shape``, ``out_shape`` and, for a flat output, ``out_dim`` (read by e.g.
    :class:`~pyro_mmvae.nn.projectors.FrozenProjector`).
    """

    def __init__(
        self, in_shape: Sequence[int], out_shape: Sequence[int], net: nn.Module, what: str, float_input: bool = True
    ):
        super().__init__()
        self.in_shape, self.out_shape, self.what = tuple(in_shape), tuple(out_shape), what
        self.net, self.float_input = net, bool(float_input)
        if len(self.out_shape) == 1:
            self.out_dim = self.out_shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.in_shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n :]) != self.in_shape:
            raise InputError(
                f"{self.what}: expected input of shape (*lead, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(x.shape)}"
            )
        lead = x.shape[: x.dim() - n]
        if self.float_input and not x.dtype.is_floating_point:
            x = x.float()
        return self.net(x.reshape(-1, *self.in_shape)).reshape(*lead, *self.out_shape)


class Unflatten(nn.Module):
    """``(N, prod(shape)) → (N, *shape)`` inside an ``nn.Sequential``."""

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Transpose(nn.Module):
    """Swap the last two axes: ``(N, L, C) ↔ (N, C, L)`` (sequence-major data ↔ ``nn.Conv1d``'s channel-major)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2)


class PreActResnetBlock(nn.Module):
    """The ResNet block of MMVAE+'s PolyMNIST networks (Palumbo et al., ICLR 2023, public code ``resnet_polyMNIST``).

    ``out = shortcut(x) + 0.1 · conv₁(lrelu(conv₀(lrelu(x))))`` with 3×3 convolutions (stride 1,
    padding 1), LeakyReLU slope 0.2, hidden width ``min(c_in, c_out)`` by default, and a bias-free 1×1
    convolution as the shortcut when the channel count changes (identity otherwise). The 0.1 damps the
    residual branch so that a deep stack starts near the identity.
    """

    RESIDUAL_SCALE = 0.1
    SLOPE = 0.2

    def __init__(self, c_in: int, c_out: int, c_hidden: int | None = None):
        super().__init__()
        c_hidden = min(c_in, c_out) if c_hidden is None else c_hidden
        self.residual = nn.Sequential(
            nn.LeakyReLU(self.SLOPE),
            nn.Conv2d(c_in, c_hidden, 3, stride=1, padding=1),
            nn.LeakyReLU(self.SLOPE),
            nn.Conv2d(c_hidden, c_out, 3, stride=1, padding=1),
        )
        self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.RESIDUAL_SCALE * self.residual(x)


def check_output_shape(what: str, expected: Sequence[int], received: Sequence[int]) -> tuple[int, ...]:
    """``tuple(received)`` if it equals ``expected``, else an :class:`InputError` naming ``what``."""
    expected, received = tuple(int(s) for s in expected), tuple(int(s) for s in received)
    if expected != received:
        raise InputError(f"{what} produces parameters of shape {expected}, but shape {received} was asked for")
    return received


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
