"""Positive maps with a bounded growth rate, for scales and variances computed by networks.

:func:`exp_linear` is ``exp`` up to a knee and its tangent above it: values and gradients equal ``exp`` where
a trained network lives, and an output that drifts far up grows linearly instead of overflowing float32.
"""

from __future__ import annotations

import math

import torch

# σ follows exp(ℓ) up to this log-scale and grows linearly beyond it (see exp_linear).
EXP_LINEAR_KNEE = 5.0


def exp_linear(raw: torch.Tensor, knee: float = EXP_LINEAR_KNEE) -> torch.Tensor:
    """``exp(ℓ)`` for ``ℓ < knee``, continued by its tangent ``e^knee (1 + ℓ − knee)`` above (C¹, increasing).

    Why: an invariant set network pools a SUM over the set, so its output grows linearly with |S|.
    For the self-attention network this happens already at initialisation: every pooled element is
    LayerNorm-ed to unit RMS per feature, the elements share a common direction (mean pairwise
    cosine ≈ 0.8 at LeCun init), so the sum has per-feature RMS ≈ 0.8 |S|, and ρ — positively
    homogeneous with zero biases — passes that scale on to ℓ (batch maxima ≈ 30-59 with M = 50
    modalities at width 128). ``exp(ℓ)`` would turn linear growth in |S| into exponential growth of
    σ and overflow float32 (σ² = inf from ℓ ≈ 44, then NaN log-densities); the tangent continuation
    keeps σ linear in ℓ there. With the knee at 5 (σ ≈ 148, far wider than any posterior under a
    unit-scale prior) value and gradient equal the published ``exp(ℓ)`` wherever a trained guide lives.
    """
    # The clamp keeps the unused exp branch finite (an inf there would give NaN gradients through where).
    return torch.where(raw < knee, raw.clamp(max=knee).exp(), math.exp(knee) * (1.0 + raw - knee))
