"""Encoder and decoder building blocks.

All blocks broadcast over leading dimensions: an input ``(*lead, *in_shape)`` gives an output
``(*lead, *out_shape)``. This matters because Pyro's vectorised particles add dimensions to the
LEFT of the data plate (e.g. z of shape ``(L, B, D)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..distributions.positive import EXP_LINEAR_KNEE, exp_linear  # noqa: F401  (re-exported: GaussianHead's map)

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """``in_dim → hidden[0] → … → out_dim`` with an activation between layers (none after the last)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"):
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), _activation(activation)]
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim


class Reshape(nn.Module):
    """Reshape the trailing ``len(in_shape)`` dimensions to ``out_shape``, keeping leading ones."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[: x.dim() - len(self.in_shape)]
        return x.reshape(*lead, *self.out_shape)


class FlatEncoder(nn.Module):
    """MLP on the flattened observation: ``(*lead, *shape) → (*lead, out_dim)``."""

    def __init__(self, shape: Sequence[int], out_dim: int, hidden=(512, 512), activation: str = "relu"):
        super().__init__()
        self.shape = tuple(shape)
        self.flatten = Reshape(self.shape, (math.prod(self.shape),))
        self.mlp = MLP(math.prod(self.shape), hidden, out_dim, activation)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.flatten(x.float() if not x.dtype.is_floating_point else x))


class FlatDecoder(nn.Module):
    """MLP from the latent to the (reshaped) likelihood parameters: ``(*lead, D) → (*lead, *out_shape)``."""

    def __init__(self, latent_dim: int, out_shape: Sequence[int], hidden=(512, 512), activation: str = "relu"):
        super().__init__()
        self.mlp = MLP(latent_dim, hidden, math.prod(out_shape), activation)
        self.unflatten = Reshape((math.prod(out_shape),), out_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.unflatten(self.mlp(z))


class ConvEncoder(nn.Module):
    """Strided conv net for square images ``(*lead, C, H, H)`` with H divisible by 4 → ``(*lead, out_dim)``."""

    def __init__(self, shape: Sequence[int], out_dim: int, channels=(32, 64), hidden: int = 256):
        super().__init__()
        c, h, w = shape
        if h != w or h % 4:
            raise ValueError(f"ConvEncoder needs square images with side divisible by 4, got {tuple(shape)}")
        self.shape = (c, h, w)
        self.net = nn.Sequential(
            nn.Conv2d(c, channels[0], 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels[1] * (h // 4) ** 2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        return self.net(x.reshape(-1, *self.shape)).reshape(*lead, self.out_dim)


class ConvDecoder(nn.Module):
    """Transposed-conv net ``(*lead, D) → (*lead, C, H, H)`` (H divisible by 4)."""

    def __init__(self, latent_dim: int, out_shape: Sequence[int], channels=(64, 32), hidden: int = 256):
        super().__init__()
        c, h, w = out_shape
        if h != w or h % 4:
            raise ValueError(f"ConvDecoder needs square images with side divisible by 4, got {tuple(out_shape)}")
        self.out_shape, self.h4, self.c0 = (c, h, w), h // 4, channels[0]
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, channels[0] * self.h4**2), nn.ReLU()
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(channels[0], channels[1], 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels[1], c, 4, 2, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, self.c0, self.h4, self.h4)
        return self.deconv(h).reshape(*lead, *self.out_shape)


def default_encoder(modality, out_dim: int, hidden=(512, 512), arch: str = "mlp") -> nn.Module:
    """Encoder ``(*lead, *shape) → (*lead, out_dim)`` for one modality.

    ``arch="mlp"`` (default): an MLP on the flattened input — fast on CPU; ``arch="conv"``: a
    strided conv net, for square images ``(C, H, H)`` with H divisible by 4. Class-index modalities
    are one-hot encoded first.
    """
    if modality.is_discrete:
        return OneHotEncoder(modality.shape, modality.num_classes, out_dim, hidden)
    if arch == "conv":
        return ConvEncoder(modality.shape, out_dim)
    if arch != "mlp":
        raise ValueError(f"unknown arch {arch!r}; expected 'mlp' or 'conv'")
    return FlatEncoder(modality.shape, out_dim, hidden)


def default_decoder(modality, latent_dim: int, param_shape: Sequence[int], hidden=(512, 512), arch: str = "mlp"):
    """Decoder ``(*lead, D) → (*lead, *param_shape)``; ``arch`` as in :func:`default_encoder`."""
    if arch == "conv" and not modality.is_discrete:
        return ConvDecoder(latent_dim, param_shape)
    if arch not in ("mlp", "conv"):
        raise ValueError(f"unknown arch {arch!r}; expected 'mlp' or 'conv'")
    return FlatDecoder(latent_dim, param_shape, hidden)


class OneHotEncoder(nn.Module):
    """Class indices ``(*lead, *shape)`` → one-hot → MLP → ``(*lead, out_dim)``."""

    def __init__(self, shape, num_classes: int, out_dim: int, hidden=(512, 512)):
        super().__init__()
        self.shape, self.k = tuple(shape), num_classes
        self.inner = FlatEncoder((*self.shape, num_classes), out_dim, hidden)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a comparison, not F.one_hot: that reads the indices' range in Python, which a traced step
        # (fit(compile=True)) cannot; the batch's validation has already checked the range
        one_hot = x.long().unsqueeze(-1) == torch.arange(self.k, device=x.device)
        return self.inner(one_hot.to(self.inner.mlp[0].weight.dtype))


class GaussianHead(nn.Module):
    """Split ``(*lead, 2D)`` features into ``loc (*lead, D)`` and ``scale (*lead, D)``.

    ``scale = min_scale + softplus(raw)`` (default), ``min_scale + exp(raw)`` (``positive="exp"``,
    the convention of the permutation-invariant experiments) or ``min_scale + exp_linear(raw)``
    (``positive="exp_linear"``: exp up to a knee, linear above; for heads whose input is a sum over a set).
    """

    POSITIVE = {"softplus": torch.nn.functional.softplus, "exp": torch.exp, "exp_linear": exp_linear}

    def __init__(self, min_scale: float = 1e-3, positive: str = "softplus"):
        super().__init__()
        if positive not in self.POSITIVE:
            raise ValueError(f"positive must be one of {sorted(self.POSITIVE)}, got {positive!r}")
        self.min_scale, self.positive = min_scale, positive

    def forward(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = out.chunk(2, dim=-1)
        return loc, self.min_scale + self.POSITIVE[self.positive](raw)
