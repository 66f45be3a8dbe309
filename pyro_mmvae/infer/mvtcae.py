"""MVTCAE (Hwang et al. 2021, "Multi-View Representation Learning via Total Correlation Objective").

The guide is a product of Gaussian experts, q(z | x_S) = Π_{m∈S} q_m(z | x_m): :class:`MVTCAEGuide`,
which by default has NO prior expert (the authors' ``ivw_fusion`` multiplies the unimodal experts
only; MultiVae's ``MVTCAE`` too); ``prior_expert=True`` gives the library's
:class:`~pyro_mmvae.guides.PoEGuide` product. The objective (:class:`MVTCAEELBO`), per data point with
present modalities M_b (n of them) and z ~ q(z | X)::

    L̂ = (n − α)/n · Σ_{m∈M_b} w_m log p(x_m | z)
        + (1 − α) · β [log p(z) − log q(z | X)]                       (−(1−α) β KL(q(z|X) ‖ p), one sample)
        − (α / n) · β Σ_{m∈M_b} KL(q(z | X) ‖ q_m(z | x_m))          (closed form)

These are the weights of the authors' ``run_epochs.py`` (``rec_weight = (n_views − tc_ratio)/n_views``,
``cvib_weight = tc_ratio/n_views``, ``vib_weight = 1 − tc_ratio``; loss ``rec_weight·rec + β·(cvib·Σ KL_m +
vib·KL_prior)``), with n the number of modalities present in the row (the whole set when nothing is
missing). α ("tc_ratio") = 5/6 and β = 2.5 in the authors' PolyMNIST script (``main_mmnist.py``); the
JNF paper follows their recommendations. q_m(z | x_m) is the guide's answer for {m} (the expert alone
without a prior expert, the prior expert times the expert with one).

The experts are encoded ONCE per step (``guide.experts(batch)``), and q(z|X) and the q_m are products
of them; the guide must be a PoE guide (``experts``, ``prior_expert``: :class:`MVTCAEGuide`,
:class:`~pyro_mmvae.guides.PoEGuide`). Conditional generation given S: the PoE of S (``posterior``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pyro.distributions as dist
import torch
from torch import nn

from ..data.batch import MultimodalBatch, Subset
from ..data.modality import Modality
from ..distributions.experts import VAR_FLOOR, gaussian_product
from ..errors import InputTypeError, check_float, check_int
from ..guides.aggregation import PoEGuide
from .baseline_terms import TermsELBO, gaussian_kl, replay_terms
from .elbo import _check_beta
from .traces import masked_sum, observation_weights

__all__ = ["MVTCAEELBO", "MVTCAEGuide", "expert_product", "ALPHA"]

ALPHA = 5 / 6
"""α ("tc_ratio") of the authors' PolyMNIST script (``gr8joo/MVTCAE``, ``main_mmnist.py``)."""


def expert_product(guide, locs: torch.Tensor, variances: torch.Tensor, mask: torch.Tensor):
    """``(loc, scale)`` ``(B, D)`` of the guide's product of the experts in ``mask`` ``(B, M)``.

    Uses ``guide.product`` where the guide has one (:class:`MVTCAEGuide`), else the PoE with the guide's
    prior expert (:class:`~pyro_mmvae.guides.PoEGuide`).
    """
    product = getattr(guide, "product", None)
    if callable(product):
        return product(locs, variances, mask)
    loc, var = gaussian_product(locs, variances, mask, *guide.prior_expert, guide.poe_mean)
    return loc, var.sqrt()


class MVTCAEGuide(PoEGuide):
    """Product of Gaussian experts, by default without the prior expert (the MVTCAE authors' fusion).

    Arguments as in :class:`~pyro_mmvae.guides.PoEGuide`, plus ``prior_expert`` (default False). A row
    with S = ∅ gets the prior N(0, I) (only conditional generation can ask for it; training rows have a
    modality).
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        var_floor: float = VAR_FLOOR,
        prior_expert: bool = False,
        init: str = "lecun",
    ):
        super().__init__(modalities, latent_dim, hidden, encoders, arch, "correct", var_floor, False, init)
        self.use_prior_expert = bool(prior_expert)

    def product(self, locs: torch.Tensor, variances: torch.Tensor, mask: torch.Tensor):
        """``(loc, scale)`` ``(B, D)`` of Π_{m∈mask} N(μ_m, v_m) (times the prior expert when configured)."""
        if self.use_prior_expert:
            loc, var = gaussian_product(locs, variances, mask, *self.prior_expert, self.poe_mean)
            return loc, var.sqrt()
        m = mask.unsqueeze(-1)
        zero = torch.zeros_like(locs)
        empty = ~m.any(-2)
        # S = ∅: precision 1 and mean 0 (the prior), so an empty row never divides by zero.
        precision = torch.where(m, 1 / variances, zero).sum(-2)
        precision = torch.where(empty, torch.ones_like(precision), precision)
        weighted = torch.where(m, locs / variances, zero).sum(-2)
        return weighted / precision, precision.rsqrt()

    def posterior(self, batch: MultimodalBatch, subset: Subset = None):
        locs, variances, mask = self.experts(batch, subset)
        return dist.Normal(*self.product(locs, variances, mask)).to_event(1)


class MVTCAEELBO(TermsELBO):
    """The MVTCAE objective (module docstring).

    Args:
        alpha: α ∈ [0, 1], the total-correlation ratio (default 5/6, the authors' PolyMNIST value).
        num_particles: L draws z ~ q(z|X) per data point (the bound is their mean).
        reconstruction_weights: optional ``{modality: w}`` overriding ``model.reconstruction_weights``.
    """

    def __init__(self, alpha: float = ALPHA, num_particles: int = 1, reconstruction_weights=None):
        num_particles = check_int(num_particles, "num_particles", minimum=1)
        super().__init__(num_particles=num_particles, max_plate_nesting=2, vectorize_particles=True)
        self.alpha = check_float(alpha, "alpha", nonnegative=True)
        if self.alpha > 1:
            raise ValueError(f"alpha must lie in [0, 1] (it weighs (1 − α) KL(q ‖ p)), got {alpha}")
        self.reconstruction_weights = reconstruction_weights

    def terms(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, weighted: bool = True) -> dict:
        """``{"recon", "kl_prior", "kl_experts"}``, each ``(L, B)`` (the three lines of the module docstring)."""
        if not (callable(getattr(guide, "experts", None)) and hasattr(guide, "prior_expert")):
            raise InputTypeError(
                f"MVTCAEELBO needs a product-of-experts guide (MVTCAEGuide or PoEGuide), got {type(guide).__name__}"
            )
        beta = _check_beta(beta)
        weights = observation_weights(model, self.reconstruction_weights) if weighted else None
        locs, variances, present = guide.experts(batch)  # (B, M, D), (B, M, D), (B, M)
        loc, scale = expert_product(guide, locs, variances, present)
        replay = replay_terms(model, batch, loc, scale, beta, self.num_particles, weights)
        n = present.sum(-1).to(loc.dtype)  # modalities present per row, ≥ 1 in a validated batch
        recon = (n - self.alpha) / n * masked_sum(replay.recon, batch.subset_mask(None))
        kl_experts = torch.zeros_like(n)
        eye = torch.eye(present.shape[-1], dtype=torch.bool, device=present.device)
        for j in range(present.shape[-1]):
            # the one-hot mask, not one-hot ∩ presence: a missing row's expert (from the zero placeholder)
            # stays finite, and `where` drops it.
            loc_j, scale_j = expert_product(guide, locs, variances, eye[j].expand_as(present))
            kl_j = gaussian_kl(loc, scale, loc_j, scale_j)
            kl_experts = kl_experts + torch.where(present[:, j], kl_j, torch.zeros_like(kl_j))
        return {
            "recon": recon,
            "kl_prior": (1 - self.alpha) * (replay.log_p - replay.log_q),
            "kl_experts": (-beta * self.alpha / n * kl_experts).expand_as(recon),
        }
