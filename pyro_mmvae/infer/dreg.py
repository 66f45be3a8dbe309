"""DReG: doubly reparameterised gradients of importance-weighted bounds (Tucker et al. 2019).

"Doubly reparameterized gradient estimators for Monte Carlo objectives". For K draws
z_k = z(ε_k, φ) ~ q_φ(z | x) and log-weights

    log w_k = log p_θ(x, z_k) − β log q̄(z_k | x)        (q̄: q with stop-gradient parameters)

the importance-weighted bound is ``L = log (1/K) Σ_k w_k``. With self-normalised weights
w̃_k = w_k / Σ_j w_j (no gradient) the estimators are

    ∇_θ L = Σ_k w̃_k ∇_θ log w_k                                  (the usual IWAE model gradient)
    ∇_φ L = Σ_k [(1 − β) w̃_k + β w̃_k²] ∂log w_k/∂z_k · ∂z_k/∂φ    (DReG encoder gradient)

For β = 1 the encoder weights are Tucker et al.'s w̃_k². For β ≠ 1 the score term of the exact
gradient is −β Σ_k w̃_k ∂_φ log q(z_k), and the identity E_q[f ∂_φ log q] = E[∂f/∂z ∂z/∂φ] applied
to f = w̃_k (∂w̃_k/∂z_k = w̃_k (1 − w̃_k) ∂log w_k/∂z_k) gives the weights above; the authors'
MMVAE/MMVAE+ code uses w̃_k² for every β, which is unbiased only at β = 1.

How: the surrogate Σ_k w̃_k log w_k has exactly the θ-gradient above and the φ-gradient
Σ_k w̃_k ∂log w_k/∂z_k ∂z_k/∂φ (log q̄ has no parameter gradient). A hook on every latent
draw z_k multiplies the gradient that flows back through it by (1 − β) + β w̃_k, which
turns the latter into the DReG encoder gradient. :func:`straight_through` then returns the
bound's VALUE with the surrogate's GRADIENT, so losses and logs still read log (1/K) Σ w_k.

The hooks scale every gradient that reaches a latent draw, so the log-weights must be the only
consumer of the draws in the loss being differentiated.

Shapes: ``log_w`` ``(K, *batch)`` (particles first); a latent draw ``(K, *batch, *event)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..errors import check_float


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log (1/K) Σ_k exp(log_w_k)`` along ``dim`` (K = ``log_w.shape[dim]``)."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def normalized_weights(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Self-normalised importance weights w̃ = softmax(log w) along ``dim``, without gradient."""
    return torch.softmax(log_w.detach(), dim)


def encoder_gradient_scale(weights: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """The factor (1 − β) + β w̃ by which DReG multiplies the gradient reaching each draw (w̃ for β = 1)."""
    return (1.0 - beta) + beta * weights


def scale_gradient(draw: torch.Tensor, scale: torch.Tensor) -> None:
    """Multiply the gradient that flows back through ``draw`` ``(*scale.shape, *event)`` by ``scale``.

    Does nothing when no gradient will be taken (``torch.no_grad`` or a draw without ``requires_grad``).
    """
    if not (torch.is_grad_enabled() and draw.requires_grad):
        return
    if draw.shape[: scale.dim()] != scale.shape:
        raise ValueError(
            f"a latent draw of shape {tuple(draw.shape)} does not start with the weights' shape {tuple(scale.shape)} "
            "(draws must be (K, *batch, *event) for log-weights (K, *batch))"
        )
    factor = scale.detach().reshape(*scale.shape, *([1] * (draw.dim() - scale.dim())))
    draw.register_hook(lambda grad: grad * factor)


def straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value``'s numbers with ``surrogate``'s gradient."""
    return value.detach() + (surrogate - surrogate.detach())


def dreg_log_mean_exp(log_w: torch.Tensor, draws: Iterable[torch.Tensor], beta: float = 1.0) -> torch.Tensor:
    """``log (1/K) Σ_k w_k`` over the particles (dim 0) with DReG gradients.

    Args:
        log_w: log-weights ``(K, *batch)`` whose guide densities were evaluated with stop-gradient
            parameters, so the guide's parameters reach them only through the draws.
        draws: the reparameterised latent draws the log-weights were computed from, each
            ``(K, *batch, *event)`` (every latent site of the guide).
        beta: the factor of log q̄ in ``log_w`` (see the module docstring).

    Returns:
        ``(*batch)``: the bound's value; its gradient is the DReG estimator.
    """
    beta = check_float(beta, "beta", positive=True)
    weights = normalized_weights(log_w, 0)
    scale = encoder_gradient_scale(weights, beta)
    for draw in draws:
        scale_gradient(draw, scale)
    return straight_through(log_mean_exp(log_w, 0), (weights * log_w).sum(0))
