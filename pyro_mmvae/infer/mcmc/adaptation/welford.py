"""Running per-coordinate variance for the diagonal mass matrix (Welford's algorithm, Stan's shrinkage).

Within a slow adaptation window the kernel feeds every warmup state ``z`` ``(*B, D)`` to
:class:`WelfordVariance`; at the window's end the sample variance becomes the new diagonal inverse
mass matrix after :func:`shrink_variance`, Stan's regularisation towards a small constant:

    var ← n / (n + 5) · var + 1e-3 · 5 / (n + 5).
"""

from __future__ import annotations

import torch

__all__ = ["WelfordVariance", "shrink_variance"]


def shrink_variance(var: torch.Tensor, n: int, target: float = 1e-3, weight: float = 5.0) -> torch.Tensor:
    """Stan's regularisation of a variance estimate from ``n`` draws: ``n/(n+w)·var + target·w/(n+w)``.

    Shrinks towards ``target`` (weight ``w`` pseudo-draws), so that a short window cannot give a
    zero or wildly small variance in some coordinate. Any shape; ``n`` a Python int.
    """
    return (n / (n + weight)) * var + target * (weight / (n + weight))


class WelfordVariance:
    """Welford's running mean and sum of squared deviations over draws of shape ``(*B, D)``.

    Args:
        like: a tensor with the draws' shape, dtype and device.
    """

    def __init__(self, like: torch.Tensor):
        self._like = like
        self.reset()

    def reset(self) -> None:
        """Forget every draw."""
        self.mean = torch.zeros_like(self._like)
        self.m2 = torch.zeros_like(self._like)
        self.n = 0

    def update(self, x: torch.Tensor) -> None:
        """Add one draw ``x`` ``(*B, D)``."""
        self.n += 1
        delta = x - self.mean
        self.mean = self.mean + delta / self.n
        self.m2 = self.m2 + delta * (x - self.mean)

    def variance(self, pool_dim: int | None = None) -> tuple[torch.Tensor, int]:
        """``(var, n)``: the sample variance ``(*B, D)`` (divisor n − 1) and the number of draws behind it.

        With ``pool_dim`` (a batch dimension, e.g. 0 for the chains of ``(C, N, D)``) the estimate pools
        the draws of every entry along it: the within-entry sums of squares plus the spread of the
        entries' means, over ``C·n − 1``; it is broadcast back along ``pool_dim`` and ``n`` becomes ``C·n``.
        """
        n = self.n
        var = self.m2 / max(n - 1, 1)
        if pool_dim is not None:
            k = pool_dim
            c = self.mean.shape[k]
            spread = (self.mean - self.mean.mean(k, keepdim=True)).pow(2).sum(k, keepdim=True)
            var = ((self.m2.sum(k, keepdim=True) + n * spread) / max(c * n - 1, 1)).expand_as(var)
            n = c * n
        return var, n
