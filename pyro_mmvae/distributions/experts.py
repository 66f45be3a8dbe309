"""Distributions built from per-modality experts: products, mixtures and mixtures of products.

Every function here takes stacked expert parameters with the modality axis second to last and a
per-row subset mask, so one call answers a whole batch in which every row may condition on a
different subset S:

- ``locs``, ``variances``/``scales``: ``(*batch, M, D)``;
- ``mask``: bool ``(*batch, M)``; ``mask[..., m]`` says expert ``m`` belongs to the row's S.

Masked experts never enter through multiplication: ``torch.where`` replaces their contribution, so
a NaN/inf computed from a missing modality cannot leak into the result. "The paper" below is
"Learning multi-modal generative models with permutation-invariant encoders and tighter variational
objectives".

:class:`DiagNormalMixture` is the one non-Gaussian family the aggregation guides return (MoE,
MoPoE, mixture-head set encoders). It draws samples with pathwise (implicitly reparameterised)
gradients for every dimension D ≥ 1, through the component choice as well.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints

from .detach import register_detacher
from .positive import exp_linear

VAR_FLOOR = 1e-3
"""Variance floor of product-of-experts experts: ``v = VAR_FLOOR + exp(2 ℓ)``."""

MAX_MOPOE_MODALITIES = 12
"""MoPoE evaluates 2^M products; beyond this many modalities it refuses (4096 components)."""

POE_MEANS = ("correct", "paper")

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _check_experts(locs: torch.Tensor, spread: torch.Tensor, mask: torch.Tensor, spread_name: str) -> None:
    if locs.dim() < 2:
        raise ValueError(f"expert locs must have shape (*batch, M, D), got {tuple(locs.shape)}")
    if spread.shape != locs.shape:
        raise ValueError(f"expert {spread_name} {tuple(spread.shape)} must match locs {tuple(locs.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"expert mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != locs.shape[:-1]:
        raise ValueError(f"expert mask {tuple(mask.shape)} must have shape (*batch, M) = {tuple(locs.shape[:-1])}")


# exp(2ℓ) up to this log-variance (σ ≈ 148), linear above: an expert whose encoder drifts towards
# "uninformative" (σ → ∞, its precision → 0 in the product) would otherwise overflow float32 (exp(2ℓ) = inf
# from ℓ ≈ 44) and turn the product's gradients into NaN; below the knee the values are exp's.
POE_LOG_VARIANCE_KNEE = 10.0


def poe_variance(log_scale: torch.Tensor, var_floor: float = VAR_FLOOR) -> torch.Tensor:
    """Expert variances ``v = var_floor + exp(2 ℓ)`` from log-scale outputs ℓ (any shape); ``exp`` continues
    linearly above 2ℓ = 10 (:func:`~pyro_mmvae.distributions.positive.exp_linear`)."""
    return var_floor + exp_linear(2 * log_scale, POE_LOG_VARIANCE_KNEE)


def gaussian_product(
    locs: torch.Tensor,
    variances: torch.Tensor,
    mask: torch.Tensor,
    prior_loc: float | torch.Tensor = 0.0,
    prior_var: float | torch.Tensor = 1.0 + VAR_FLOOR,
    mean: str = "correct",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of the Gaussian experts selected by ``mask`` and an always-on prior expert.

    With precisions ``1/v_s`` over ``S ∪ {0}`` (0 = the prior expert)::

        P = Σ 1/v_s,  var = 1/P,
        loc = Σ (μ_s / v_s) / P          (``mean="correct"``, the product's true mean)
        loc = Σ μ_s v_s / P              (``mean="paper"``, the formula of the paper's §3 and its
                                          published code; it is not the product's mean and diverges
                                          easily — offered only to reproduce published numbers)

    Args:
        locs, variances: ``(*batch, M, D)``.
        mask: bool ``(*batch, M)``.
        prior_loc, prior_var: the prior expert, scalars or tensors broadcasting to ``(*batch, D)``.
            The default (0, 1 + 1e-3) is the expert (μ0, ℓ0) = (0, 0) under ``v = 1e-3 + exp(2ℓ)``.
        mean: ``"correct"`` or ``"paper"``.

    Returns:
        ``(loc, var)``, each ``(*batch, D)``. A row with an empty mask gets the prior expert.
    """
    _check_experts(locs, variances, mask, "variances")
    if mean not in POE_MEANS:
        raise ValueError(f"poe mean must be one of {POE_MEANS}, got {mean!r}")
    m = mask.unsqueeze(-1)
    zero = torch.zeros_like(locs)
    prior_loc = torch.as_tensor(prior_loc, dtype=locs.dtype, device=locs.device)
    prior_var = torch.as_tensor(prior_var, dtype=locs.dtype, device=locs.device)
    precision = 1 / prior_var + torch.where(m, 1 / variances, zero).sum(-2)
    if mean == "correct":
        numerator = prior_loc / prior_var + torch.where(m, locs / variances, zero).sum(-2)
    else:
        numerator = prior_loc * prior_var + torch.where(m, locs * variances, zero).sum(-2)
    var = 1 / precision
    return numerator * var, var


def product_of_experts(
    locs: torch.Tensor,
    variances: torch.Tensor,
    mask: torch.Tensor,
    prior_loc: float | torch.Tensor = 0.0,
    prior_var: float | torch.Tensor = 1.0 + VAR_FLOOR,
    mean: str = "correct",
) -> dist.TorchDistribution:
    """:func:`gaussian_product` as a diagonal Normal: batch ``batch``, event ``(D,)``."""
    loc, var = gaussian_product(locs, variances, mask, prior_loc, prior_var, mean)
    return dist.Normal(loc, var.sqrt()).to_event(1)


# ---------------------------------------------------------------------------------------------
# mixture of diagonal Gaussians with pathwise gradients
# ---------------------------------------------------------------------------------------------
class DiagNormalMixture(TorchDistribution):
    """Σ_k w_k N(μ_k, diag σ_k²) with ``w = softmax(logits)``; batch ``batch``, event ``(D,)``.

    Args:
        locs, scales: ``(*batch, K, D)``.
        logits: ``(*batch, K)``; ``-inf`` switches a component off (at least one per row must stay
            finite).

    ``rsample`` draws a component and a Gaussian sample without gradients, then attaches pathwise
    gradients by implicit reparameterisation through the sequential (Knothe–Rosenblatt)
    transform: with F_d the CDF of z_d given z_{<d} — itself a mixture whose weights are the
    component responsibilities given z_{<d} — and f_d its density,

        dz_d/dθ = −[∂F_d/∂θ + Σ_{j<d} ∂F_d/∂z_j · dz_j/dθ] / f_d(z_d | z_{<d}).

    This is exact for every D ≥ 1 (also D = 1) and covers μ, σ and the logits. The value is the
    sampled one; only the gradient is modified.
    """

    arg_constraints = {"locs": constraints.real, "scales": constraints.positive, "logits": constraints.real}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, locs: torch.Tensor, scales: torch.Tensor, logits: torch.Tensor, validate_args=None):
        if locs.dim() < 2:
            raise ValueError(f"mixture locs must have shape (*batch, K, D), got {tuple(locs.shape)}")
        if scales.shape != locs.shape:
            raise ValueError(f"mixture scales {tuple(scales.shape)} must match locs {tuple(locs.shape)}")
        if logits.shape != locs.shape[:-1]:
            raise ValueError(
                f"mixture logits {tuple(logits.shape)} must have shape (*batch, K) = {tuple(locs.shape[:-1])}"
            )
        self.locs, self.scales, self.logits = locs, scales, logits
        batch_shape, event_shape = locs.shape[:-2], locs.shape[-1:]
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @property
    def num_components(self) -> int:
        return self.locs.shape[-2]

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        k, d = self.locs.shape[-2:]
        new = self._get_checked_instance(DiagNormalMixture, _instance)
        new.locs = self.locs.expand(batch_shape + (k, d))
        new.scales = self.scales.expand(batch_shape + (k, d))
        new.logits = self.logits.expand(batch_shape + (k,))
        super(DiagNormalMixture, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def log_weights(self) -> torch.Tensor:
        """``log w``: ``(*batch, K)``."""
        return torch.log_softmax(self.logits, dim=-1)

    @property
    def mean(self) -> torch.Tensor:
        return (self.log_weights.exp().unsqueeze(-1) * self.locs).sum(-2)

    @property
    def variance(self) -> torch.Tensor:
        w = self.log_weights.exp().unsqueeze(-1)
        second = (w * (self.scales**2 + self.locs**2)).sum(-2)
        return second - self.mean**2

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log N(value; μ_k, diag σ_k²)`` for every component: ``(*sample, *batch, K)``."""
        t = (value.unsqueeze(-2) - self.locs) / self.scales
        return (-0.5 * t**2 - self.scales.log() - _HALF_LOG_2PI).sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return torch.logsumexp(self.log_weights + self.component_log_prob(value), dim=-1)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self._draw(torch.Size(sample_shape))

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        z = self._draw(torch.Size(sample_shape))
        needs_grad = any(t.requires_grad for t in (self.locs, self.scales, self.logits))
        if not (torch.is_grad_enabled() and needs_grad):
            return z
        return self._attach_pathwise_gradient(z)

    def _draw(self, sample_shape: torch.Size) -> torch.Tensor:
        """Ancestral sample ``(*sample, *batch, D)`` without gradients."""
        with torch.no_grad():
            shape = sample_shape + self.batch_shape
            k, d = self.locs.shape[-2:]
            index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            gather = index[..., None, None].expand(*shape, 1, d)
            loc = self.locs.expand(*shape, k, d).gather(-2, gather).squeeze(-2)
            scale = self.scales.expand(*shape, k, d).gather(-2, gather).squeeze(-2)
            return loc + scale * torch.randn_like(loc)

    def _attach_pathwise_gradient(self, z: torch.Tensor) -> torch.Tensor:
        """Same values as ``z``; gradients by implicit reparameterisation, one dimension at a time."""
        tiny = torch.finfo(z.dtype).tiny
        cumulative = torch.zeros((), dtype=z.dtype, device=z.device)  # Σ_{j<d} log N(z_j; μ_kj, σ_kj)
        out = []
        for d in range(z.shape[-1]):
            loc, scale = self.locs[..., d], self.scales[..., d]  # (*batch, K)
            log_w = torch.log_softmax(self.logits + cumulative, dim=-1)  # weights given z_{<d}
            z_d = z[..., d]
            t = (z_d.unsqueeze(-1) - loc) / scale
            cdf = (log_w.exp() * torch.special.ndtr(t)).sum(-1)
            log_density = torch.logsumexp(log_w - 0.5 * t**2 - scale.log() - _HALF_LOG_2PI, dim=-1)
            # value z_d, gradient −(dF)/f: the implicit function theorem applied to F_d(z_d) = u.
            z_d = z_d - (cdf - cdf.detach()) / log_density.detach().exp().clamp_min(tiny)
            out.append(z_d)
            t_grad = (z_d.unsqueeze(-1) - loc) / scale
            cumulative = cumulative + (-0.5 * t_grad**2 - scale.log() - _HALF_LOG_2PI)
        return torch.stack(out, dim=-1)


@register_detacher(DiagNormalMixture)
def _detach_mixture(d: DiagNormalMixture) -> DiagNormalMixture:
    # STL for mixtures: the stop-gradient copy detaches the component weights too.
    return DiagNormalMixture(d.locs.detach(), d.scales.detach(), d.logits.detach(), validate_args=False)


def _masked_logits(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where a component is on, −inf where it is off (uniform weights over the on ones)."""
    zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return torch.where(mask, zeros, torch.full_like(zeros, -math.inf))


def mixture_of_experts(locs: torch.Tensor, scales: torch.Tensor, mask: torch.Tensor) -> DiagNormalMixture:
    """q(z | x_S) = Σ_{s∈S} (1/|S|) N(μ_s, diag σ_s²); rows with S = ∅ get the prior N(0, I).

    Args:
        locs, scales: ``(*batch, M, D)``.
        mask: bool ``(*batch, M)``.

    Returns:
        A :class:`DiagNormalMixture` with K = M + 1 components (the last one is N(0, I), switched on
        only in rows whose mask is empty), batch ``batch``, event ``(D,)``.
    """
    _check_experts(locs, scales, mask, "scales")
    empty = ~mask.any(-1, keepdim=True)
    prior_loc = torch.zeros_like(locs[..., :1, :])
    all_locs = torch.cat([locs, prior_loc], dim=-2)
    all_scales = torch.cat([scales, torch.ones_like(prior_loc)], dim=-2)
    return DiagNormalMixture(all_locs, all_scales, _masked_logits(torch.cat([mask, empty], -1), locs.dtype))


def subset_matrix(num_modalities: int, device=None) -> torch.Tensor:
    """All 2^M subsets of M modalities as a bool ``(2^M, M)`` matrix; row c is the binary code of c.

    Row 0 is the empty subset.
    """
    codes = torch.arange(2**num_modalities, device=device)
    bits = 2 ** torch.arange(num_modalities, device=device)
    return (codes.unsqueeze(-1) & bits) != 0


def mixture_of_products(
    locs: torch.Tensor,
    variances: torch.Tensor,
    mask: torch.Tensor,
    mean: str = "correct",
    include_empty: bool = True,
    prior_loc: float | torch.Tensor = 0.0,
    prior_var: float | torch.Tensor = 1.0 + VAR_FLOOR,
) -> DiagNormalMixture:
    """MoPoE: q(z | x_S) = (1/2^|S|) Σ_{S'⊆S} PoE(x_{S'}), every PoE with the prior expert.

    The empty subset is included by default (``include_empty=True``): its component is the prior
    expert alone, so there are 2^|S| equally weighted components, as in the paper's formula, and a
    row with S = ∅ gets the prior expert (the same q(z|∅) as the PoE). With
    ``include_empty=False`` the 2^|S| − 1 non-empty subsets are used and S = ∅ rows still get the
    prior expert.

    The cost is 2^M products for M modalities (all subsets are evaluated, then masked per row);
    M > :data:`MAX_MOPOE_MODALITIES` raises ``ValueError``.

    Args:
        locs, variances: ``(*batch, M, D)``; mask: bool ``(*batch, M)``; mean: as in
            :func:`gaussian_product`.

    Returns:
        A :class:`DiagNormalMixture` with K = 2^M components (component c = the subset with binary
        code c, see :func:`subset_matrix`).
    """
    _check_experts(locs, variances, mask, "variances")
    if mean not in POE_MEANS:
        raise ValueError(f"poe mean must be one of {POE_MEANS}, got {mean!r}")
    num = locs.shape[-2]
    if num > MAX_MOPOE_MODALITIES:
        raise ValueError(
            f"MoPoE evaluates 2^M products of experts and is limited to M <= {MAX_MOPOE_MODALITIES} "
            f"modalities (got M = {num}, i.e. {2**num} components); use a SumPooling or SelfAttention "
            "aggregation for many modalities"
        )
    subsets = subset_matrix(num, locs.device)  # (C, M)
    member = subsets.to(locs.dtype)
    m = mask.unsqueeze(-1)
    zero = torch.zeros_like(locs)
    prior_loc = torch.as_tensor(prior_loc, dtype=locs.dtype, device=locs.device)
    prior_var = torch.as_tensor(prior_var, dtype=locs.dtype, device=locs.device)
    # Masked experts contribute 0 by `where` (NaN-safe); the subset sum is then a matrix product.
    precision = torch.where(m, 1 / variances, zero)
    weighted = torch.where(m, locs / variances if mean == "correct" else locs * variances, zero)
    prior_num = prior_loc / prior_var if mean == "correct" else prior_loc * prior_var
    total_precision = 1 / prior_var + torch.einsum("cm,...md->...cd", member, precision)
    var = 1 / total_precision
    loc = (prior_num + torch.einsum("cm,...md->...cd", member, weighted)) * var
    # Component c is on in a row iff its subset lies inside the row's S.
    outside = (~mask).to(locs.dtype)  # (*batch, M)
    active = torch.einsum("cm,...m->...c", member, outside) == 0  # (*batch, C)
    if not include_empty:
        empty_row = ~mask.any(-1)
        active = torch.cat([empty_row.unsqueeze(-1), active[..., 1:]], dim=-1)
    return DiagNormalMixture(loc, var.sqrt(), _masked_logits(active, locs.dtype))
