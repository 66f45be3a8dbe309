"""Conditional normalizing flows on R^D, assembled from ``pyro.distributions.transforms``.

A :class:`ConditionalFlow` owns the networks of a stack of flow blocks (registered submodules,
permutations as buffers) and, on every call, builds fresh Pyro transforms around them and pushes
a base distribution through them::

    flow = ConditionalFlow(dim=D, kind="maf", num_blocks=2, hidden=(128, 128), context_dim=C)
    q = flow(dist.Normal(loc, scale).to_event(1), context=h)   # loc, scale: (B, D); h: (B, C)
    q.log_prob(z)                                              # z: (*lead, B, D) -> (*lead, B)
    q.rsample((L,))                                            # (L, B, D)

Flow kinds (``kind=``)
----------------------
``"maf"``
    Masked autoregressive flow (one MADE network per block, each with its own seeded variable
    order). Written as the INVERSE of Pyro's affine autoregressive transform (an IAF): the
    density direction z → base is the IAF's forward map u = σ(z)·z + μ(z), with (μ, log σ) from a
    MADE network, so ``log_prob`` at an ARBITRARY z costs one network pass per block. Sampling
    (base → z) inverts each block and needs D sequential passes; ``rsample`` is still exact and
    differentiable (the D-pass inverse is an exact function of the parameters).
``"coupling"``
    Affine coupling layers: in block i the coordinates perm_i[:⌊D/2⌋] (perm_i a seeded random
    permutation) set an affine map of the others; one network pass per block in both directions.
    Needs D ≥ 2.

Pyro's IAF inverse allocates float32 buffers and loops over one coordinate at a time; the
transform used here replaces it with a vectorised fixed-point sweep (D passes, each updating every
coordinate, exact after the D-th) that keeps the input's dtype and device. Permutations are
registered buffers (``T.Permute`` itself is not a Module), and each call builds the ``Permute``
from the buffer, so ``.to(device)``/``.to(torch.float64)`` move everything.

Conditioning
------------
With ``context_dim > 0`` every block's network also reads a context vector ``(B, C)`` (e.g.
encoder features); the context broadcasts against the leading dimensions of z, so one context per
data point serves any number of particles or chains. The context's share of each network's first
layer is computed once per distribution, not once per ``log_prob`` call.

``log_scale`` of every block is clamped to ``log_scale_clip`` (default [−5, 3]) with Pyro's
straight-through clamp (the value is clamped, the gradient passes as if it were not). With
``identity_init=True`` (default) each block's last layer is zero-initialised, so the flow starts as
the identity and q starts as its Gaussian base.

Cost: ``log_prob`` (and its gradient) at an arbitrary z is one network pass per block for both
kinds; one draw is D sequential passes per block for ``"maf"`` and one pass for ``"coupling"``.
Measured times (Gaussian, maf, coupling and Pyro's IAF for comparison, D = 2 and 20):
``benchmarks/results/flow_cost_cpu.md``, written by ``benchmarks/flow_cost.py``. Use ``"maf"``
(the choice of "Bridging the inference gap in Multimodal Variational Autoencoders") or
``"coupling"`` wherever densities are evaluated at arbitrary points (stage-2 training, HMC);
``"coupling"`` when sampling q_j directly is frequent.

Gradients in z for samplers: :func:`maf_log_prob_and_grad` returns ``log_prob(z)`` and its gradient
in z from one forward sweep and one hand-written backward sweep through the MADE networks (no
autograd graph), for ``"maf"`` flows with ReLU networks and a diagonal Gaussian base; it answers
``None`` for anything else. The values equal ``log_prob`` and ``torch.autograd.grad`` of it (tested),
at about 0.75× their cost on the sampler benchmark's target (``python benchmarks/target_gradient.py``).

The straight-through clamp of the log-scales makes the z-gradient differ from the gradient of
the evaluated density only where a log-scale sits at its clamp; the gradient is still a fixed
function of z, so HMC with a Metropolis correction keeps the right target there.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN, ConditionalDenseNN, DenseNN
from torch import nn
from torch.nn import functional as F

FLOW_KINDS = ("maf", "coupling")


class _FoldedContext:
    """``net(x, context)`` of a conditional Pyro network with the context folded in once.

    Pyro's conditional networks concatenate ``[context, x]`` before the first layer, on every call.
    The context's share of that layer does not depend on x, so it is computed once here (shape
    ``(*batch, H)``) and broadcast over the leading dimensions of every later x: a sampler
    evaluating ``(C, N, D)`` points pays only for the x part.
    """

    def __init__(self, net: nn.Module, context: torch.Tensor):
        first = net.layers[0]
        weight = first.weight * first.mask if hasattr(first, "mask") else first.weight
        c = net.context_dim
        self.net, self.weight_x = net, weight[:, c:]
        self.context_term = F.linear(context, weight[:, :c], first.bias)

    def __call__(self, x: torch.Tensor):
        net = self.net
        h = net.f(F.linear(x, self.weight_x) + self.context_term)
        for layer in net.layers[1:-1]:
            h = net.f(layer(h))
        h = net.layers[-1](h)
        lead = h.shape[:-1]
        if isinstance(net, ConditionalAutoRegressiveNN):  # output (…, 2·D) laid out as (2, D)
            return tuple(h.reshape(*lead, 2, net.input_dim).unbind(-2))
        return tuple(h[..., s] for s in net.param_slices)


class _AffineAutoregressive(T.AffineAutoregressive):
    """Pyro's affine autoregressive map with a vectorised, dtype- and device-preserving inverse.

    Forward (one MADE pass): ``y = exp(s(x))·x + m(x)``. Inverse: ``x ← (y − m(x))·exp(−s(x))``
    repeated D times from x = 0; the coordinate of autoregressive rank r is exact after r + 1
    sweeps, because m and s at rank r depend only on lower ranks.
    """

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(y)
        log_scale = None
        for _ in range(y.size(-1)):
            mean, log_scale = self.arn(x)
            log_scale = clamp_preserve_gradients(log_scale, self.log_scale_min_clip, self.log_scale_max_clip)
            x = (y - mean) * torch.exp(-log_scale)
        # The last sweep's log_scale was computed from an x whose ranks 0..D-2 were already exact,
        # which is all the log-scales depend on: it is the log-scale at the final x.
        self._cached_log_scale = log_scale
        return x


class ConditionalFlow(nn.Module):
    """A stack of ``num_blocks`` flow blocks on R^``dim``, optionally conditioned on a context.

    Args:
        dim: D, the dimension of the variable (≥ 2 when ``num_blocks > 0``).
        kind: ``"maf"`` or ``"coupling"`` (see the module docstring for the cost of each direction).
        num_blocks: number of blocks (0: the flow is the identity and returns the base unchanged).
        hidden: hidden sizes of each block's network; for ``"maf"`` every size must be ≥ D.
            Default: two layers of max(128, 2D).
        context_dim: C, size of the conditioning vector (0: unconditional).
        seed: seeds the permutations (MADE variable orders / coupling splits).
        identity_init: zero the last layer of every network, so that the flow starts as the identity.
        log_scale_clip: (min, max) clamp of every block's log-scale.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "maf",
        num_blocks: int = 2,
        hidden: Sequence[int] | None = None,
        context_dim: int = 0,
        seed: int = 0,
        identity_init: bool = True,
        log_scale_clip: tuple[float, float] = (-5.0, 3.0),
    ):
        super().__init__()
        if kind not in FLOW_KINDS:
            raise ValueError(f"unknown flow kind {kind!r}; expected one of {FLOW_KINDS}")
        dim, num_blocks, context_dim = int(dim), int(num_blocks), int(context_dim)
        hidden = [max(128, 2 * dim)] * 2 if hidden is None else [int(h) for h in hidden]
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if num_blocks > 0 and dim < 2:
            raise ValueError(f"a {kind!r} flow needs dim >= 2, got dim={dim}; use num_blocks=0 (Gaussian) instead")
        if num_blocks > 0 and not hidden:
            raise ValueError("hidden must list at least one hidden size")
        if kind == "maf" and num_blocks > 0 and min(hidden) < dim:
            raise ValueError(f"'maf' needs every hidden size >= dim (MADE masks); got hidden={hidden} for dim={dim}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.dim, self.kind, self.num_blocks, self.context_dim = dim, kind, num_blocks, context_dim
        self.hidden = tuple(hidden)
        self.log_scale_clip = (float(log_scale_clip[0]), float(log_scale_clip[1]))
        self.split_dim = dim // 2

        g = torch.Generator().manual_seed(int(seed))
        perms = [torch.randperm(dim, generator=g) for _ in range(num_blocks)]
        # MADE networks keep their variable order as a buffer of their own; coupling blocks read it
        # here. Either way the permutations are buffers and follow .to(device).
        stacked = torch.stack(perms) if perms else torch.zeros(0, dim, dtype=torch.long)
        self.register_buffer("permutations", stacked)
        self.register_buffer("inverse_permutations", torch.argsort(stacked, dim=-1))
        self.nets = nn.ModuleList(self._make_net(p) for p in perms)
        if identity_init:
            for net in self.nets:
                nn.init.zeros_(net.layers[-1].weight)
                nn.init.zeros_(net.layers[-1].bias)

    def _make_net(self, perm: torch.Tensor) -> nn.Module:
        d, c, h = self.dim, self.context_dim, list(self.hidden)
        if self.kind == "maf":
            if c:
                return ConditionalAutoRegressiveNN(d, c, h, permutation=perm)
            return AutoRegressiveNN(d, h, permutation=perm)
        rest = d - self.split_dim
        if c:
            return ConditionalDenseNN(self.split_dim, c, h, param_dims=[rest, rest])
        return DenseNN(self.split_dim, h, param_dims=[rest, rest])

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, kind={self.kind!r}, num_blocks={self.num_blocks}, hidden={self.hidden}, "
            f"context_dim={self.context_dim}"
        )

    def _check_context(self, context: torch.Tensor | None) -> None:
        if self.context_dim == 0:
            if context is not None:
                raise ValueError("this flow is unconditional (context_dim=0) but a context was given")
            return
        if context is None:
            raise ValueError(f"this flow is conditional (context_dim={self.context_dim}): pass context of shape (B, C)")
        if context.shape[-1] != self.context_dim:
            raise ValueError(f"context must have last dimension {self.context_dim}, got shape {tuple(context.shape)}")

    def transforms(self, context: torch.Tensor | None = None) -> list:
        """The blocks as Pyro transforms in the SAMPLING direction (base → z), fresh on every call.

        Args:
            context: ``(*batch, C)`` when the flow is conditional, else ``None``.
        """
        self._check_context(context)
        lo, hi = self.log_scale_clip
        out = []
        for i, net in enumerate(self.nets):
            fn = net if context is None else _FoldedContext(net, context)
            if self.kind == "maf":
                # Density direction z → base is the one-pass autoregressive map; sampling uses .inv.
                out.append(_AffineAutoregressive(fn, log_scale_min_clip=lo, log_scale_max_clip=hi).inv)
            else:
                # Permute, couple, permute back: the block updates the coordinates perm[split:] given
                # perm[:split], and z keeps its coordinate order (the flow can start as the identity).
                out.append(T.Permute(self.permutations[i]))
                out.append(T.AffineCoupling(self.split_dim, fn, log_scale_min_clip=lo, log_scale_max_clip=hi))
                out.append(T.Permute(self.inverse_permutations[i]))
        return out

    def forward(self, base: dist.TorchDistribution, context: torch.Tensor | None = None) -> dist.TorchDistribution:
        """Push ``base`` (event shape ``(D,)``) through the flow.

        Returns a distribution with the batch and event shapes of ``base``; with ``num_blocks=0``
        the base itself. ``log_prob(z)`` accepts z of shape ``(*lead, *batch, D)``.
        """
        if tuple(base.event_shape) != (self.dim,):
            raise ValueError(f"base must have event shape ({self.dim},), got {tuple(base.event_shape)}")
        if self.num_blocks == 0:
            self._check_context(context)
            return base
        return dist.TransformedDistribution(base, self.transforms(context))


# ------------------------------------------------------------------ fused density gradient (samplers)
def _masked_weight(layer: nn.Module) -> torch.Tensor:
    return layer.weight * layer.mask if hasattr(layer, "mask") else layer.weight


def _maf_blocks(d) -> list[_AffineAutoregressive] | None:
    """The MAF blocks of ``d`` in the density direction (z → base), or ``None`` when ``d`` is not a
    :class:`ConditionalFlow` ``"maf"`` distribution with plain ReLU MADE networks."""
    if not isinstance(d, torch.distributions.TransformedDistribution) or not d.transforms:
        return None
    blocks = []
    for t in reversed(d.transforms):
        block = getattr(t, "_inv", None) if isinstance(t, torch.distributions.transforms._InverseTransform) else None
        if not isinstance(block, _AffineAutoregressive) or getattr(block, "stable", False):
            return None
        net = block.arn.net if isinstance(block.arn, _FoldedContext) else block.arn
        if not isinstance(net, (AutoRegressiveNN, ConditionalAutoRegressiveNN)) or not isinstance(net.f, nn.ReLU):
            return None
        if getattr(net, "skip_layer", None) is not None or net.output_multiplier != 2:
            return None
        if not isinstance(block.arn, _FoldedContext) and getattr(net, "context_dim", 0):
            return None  # a conditional network called without its context: not built here
        blocks.append(block)
    return blocks


def _diagonal_normal(d) -> tuple[torch.Tensor, torch.Tensor] | None:
    if (
        isinstance(d, torch.distributions.Independent)
        and d.reinterpreted_batch_ndims == 1
        and isinstance(d.base_dist, torch.distributions.Normal)
    ):
        return d.base_dist.loc, d.base_dist.scale
    return None


@torch.no_grad()
def maf_log_prob_and_grad(d, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(d.log_prob(z), ∂ log_prob / ∂z)`` of a ``"maf"`` :class:`ConditionalFlow` distribution, without autograd.

    Args:
        d: what :meth:`ConditionalFlow.forward` returned for ``kind="maf"`` (batch ``(*batch,)``, event
            ``(D,)``), with ReLU networks and an ``Independent(Normal, 1)`` base.
        z: points ``(*lead, *batch, D)``.

    Returns:
        ``(log_prob (*lead, *batch), grad (*lead, *batch, D))``, or ``None`` when ``d`` is not such a flow
        (the caller then differentiates ``d.log_prob`` itself). Like ``log_prob``, the gradient treats
        the clamp of the log-scales as straight-through.

    Each block maps x to y = exp(s(x))·x + m(x), adding Σ s(x) to the log density; the backward sweep
    carries g = ∂ log q / ∂y back through y, the log-determinant and the MADE network to ∂ log q / ∂x.
    """
    blocks, base = _maf_blocks(d), _diagonal_normal(d.base_dist) if hasattr(d, "base_dist") else None
    if blocks is None or base is None:
        return None
    dim = z.shape[-1]
    x, log_det, saved = z, 0.0, []
    for block in blocks:
        arn = block.arn
        if isinstance(arn, _FoldedContext):
            net = arn.net
            first_weight = arn.weight_x
            a = F.linear(x, first_weight).add_(arn.context_term)
        else:
            net = arn
            first_weight = _masked_weight(net.layers[0])
            a = F.linear(x, first_weight, net.layers[0].bias)
        hidden = [a.relu_()]
        weights = [first_weight]
        for layer in net.layers[1:-1]:
            w = _masked_weight(layer)
            hidden.append(F.linear(hidden[-1], w, layer.bias).relu_())
            weights.append(w)
        w_out = _masked_weight(net.layers[-1])
        weights.append(w_out)
        mean, log_scale = F.linear(hidden[-1], w_out, net.layers[-1].bias).unflatten(-1, (2, dim)).unbind(-2)
        log_scale = log_scale.clamp(block.log_scale_min_clip, block.log_scale_max_clip)
        scale = log_scale.exp()
        saved.append((x, scale, hidden, weights))
        log_det = log_det + log_scale.sum(-1)
        x = torch.addcmul(mean, scale, x)
    loc, base_scale = base
    log_prob = d.base_dist.log_prob(x) + log_det
    g = (loc - x) / base_scale.pow(2)  # ∂ log N(x; loc, scale) / ∂x
    for x, scale, hidden, weights in reversed(saved):
        g_scaled = g * scale  # ∂/∂x through the direct term exp(s)·x
        # ∂/∂m = g; ∂/∂s = g·exp(s)·x + 1 (the log-determinant); the clamp is straight-through
        g_h = torch.cat((g, torch.addcmul(torch.ones_like(x), g_scaled, x)), -1) @ weights[-1]
        for h, w in zip(reversed(hidden[1:]), reversed(weights[1:-1])):
            g_h = torch.ops.aten.threshold_backward(g_h, h, 0) @ w
        g = (torch.ops.aten.threshold_backward(g_h, hidden[0], 0) @ weights[0]).add_(g_scaled)
    return log_prob, g
