"""JMVAE (Suzuki et al. 2016, "Joint Multimodal Learning with Deep Generative Models"): guide and JMVAE-KL objective.

The guide (:class:`JMVAEGuide`) holds a joint encoder q(z | X) (a
:class:`~pyro_mmvae.guides.JointGuide`) and unimodal Gaussian encoders q_m(z | x_m) (a
:class:`~pyro_mmvae.guides.UnimodalGaussianGuide`, or any guide with ``expert(batch, name)``),
trained TOGETHER with the generative model by the JMVAE-KL objective (:class:`JMVAEELBO`), per data
point with present modalities M_b and z ~ q(z | X)::

    L̂ = Σ_{m∈M_b} w_m log p(x_m | z) + β [log p(z) − log q(z | X)]              (the ELBO of the joint)
        − α · (β / β_ref) · Σ_{m∈M_b} KL(q(z | X) ‖ q_m(z | x_m))

The KLs are closed-form Gaussian KLs (``analytic=True``, as the authors' code) or the one-sample
estimate log q(z|X) − log q_m(z|x_m) at the same z. KL warm-up (the JNF paper, Appendix E: "annealing
as in the original paper with 100 epochs for warmup") is the trainer's β schedule: in the JNF authors'
implementation (MultiVae's ``JMVAE``) the warm-up factor a(t) = epoch / warmup multiplies BOTH
regularisers, ``recon + a(t)·(β KL(q‖p) + α Σ_m KL(q‖q_m))``. With the trainer's β_t = a(t)·β this is
the formula above with β_ref = the schedule's final β (``beta_ref``;
:func:`~pyro_mmvae.experiments.baselines_poe.build_jmvae` sets it). α = 0.1: MultiVae's default, the
"good compromise value" of the JMVAE paper that the JNF paper adopts.

Subsets (``JMVAEGuide.posterior(batch, subset)``): S = every modality → the joint encoder; otherwise
the product-of-experts rule JNF uses (its Eq. 12), p(z | x_S) ∝ p(z) Π_{j∈S} q_j(z | x_j) / p(z),
which for Gaussian experts and prior is the Gaussian with precision Λ = Λ_0 + Σ_{j∈S} (Λ_j − Λ_0) and
mean Λ⁻¹ [Λ_0 μ_0 + Σ_{j∈S} (Λ_j μ_j − Λ_0 μ_0)] (the closed form of
:class:`~pyro_mmvae.infer.SubsetPosterior`); a single modality S gives the expert itself. The JMVAE paper
trains one encoder per subset instead; the JNF paper (Appendix E) replaces them by this rule for JMVAE too.
``subset=None`` is the joint encoder on every present modality (what training uses; the heads of missing
modalities contribute zeros, as in :class:`~pyro_mmvae.guides.JointGuide`).

Shapes: z ``(L, B, D)``; every per-data-point term ``(L, B)`` (particles × data points).
"""

from __future__ import annotations

import warnings

import pyro.distributions as dist
import torch
from torch.distributions import Distribution

from ..data.batch import MultimodalBatch, Subset
from ..errors import InputError, InputTypeError, check_float, check_int
from ..guides.base import MultimodalGuide
from .baseline_terms import TermsELBO, diag_normal, gaussian_kl, replay_terms
from .elbo import _check_beta
from .properness import ImproperPosteriorWarning, check_precision
from .traces import masked_sum, observation_weights

__all__ = ["JMVAEELBO", "JMVAEGuide"]

IMPROPER = ("raise", "warn")
"""What :meth:`JMVAEGuide.subset_posterior` does with rows whose product rule is improper."""


class JMVAEGuide(MultimodalGuide):
    """Joint encoder plus unimodal Gaussian experts, one guide.

    Args:
        joint: q(z | X), e.g. a :class:`~pyro_mmvae.guides.JointGuide`; its modalities are the guide's.
        experts: q_m(z | x_m) for every modality, a guide with ``expert(batch, name)`` returning a
            diagonal Gaussian with batch ``(B,)``, event ``(D,)`` (:class:`~pyro_mmvae.guides.UnimodalGaussianGuide`,
            or :class:`~pyro_mmvae.guides.FlowExpertGuide` with ``num_blocks=0``).
        prior: p(z) for the subset rule, a torch ``Distribution`` with event ``(D,)`` (default N(0, I),
            the prior of :class:`~pyro_mmvae.models.MultimodalVAE`).
    """

    def __init__(self, joint, experts, prior: Distribution | None = None):
        super().__init__(list(joint.modalities.values()), joint.latent_dim)
        missing = [n for n in self.names if n not in getattr(experts, "names", [])]
        if missing or not callable(getattr(experts, "expert", None)):
            raise InputError(
                f"experts must be a guide with expert(batch, name) for every modality {self.names}; "
                f"it lacks {missing or 'the expert method'}"
            )
        if prior is not None and not isinstance(prior, Distribution):
            raise InputTypeError(
                f"prior must be a torch Distribution with event shape (D,), got {type(prior).__name__}"
            )
        self.joint, self.experts = joint, experts
        self.prior = prior

    def prior_params(self, like: torch.Tensor, prior: Distribution | None = None):
        """p(z) as ``(loc, scale)`` broadcast to ``like`` ``(B, D)``."""
        prior = prior if prior is not None else self.prior
        if prior is None:
            return torch.zeros_like(like), torch.ones_like(like)
        loc, scale = diag_normal(prior, "the JMVAE subset rule's prior p(z)")
        return loc.to(like).expand_as(like), scale.to(like).expand_as(like)

    def _dtype(self) -> torch.dtype:
        """The floating dtype of the experts' tensors (the default dtype if they hold none)."""
        for t in (*self.experts.parameters(), *self.experts.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    def posterior(self, batch: MultimodalBatch, subset: Subset = None):
        if subset is None:
            return self.joint.posterior(batch)
        return self.subset_posterior(batch, subset)

    def subset_posterior(
        self, batch: MultimodalBatch, subset: Subset, prior: Distribution | None = None, improper: str = "raise"
    ):
        """q(z | x_S) per row: the joint encoder where S = every modality, else the JNF product rule (module docstring).

        ``improper``: ``"raise"`` (an :class:`~pyro_mmvae.infer.ImproperPosteriorError` naming the rows
        whose product has a non-positive precision: experts broader than the prior) or ``"warn"`` (an
        :class:`~pyro_mmvae.infer.ImproperPosteriorWarning`; those rows use the plain product
        p(z) Π_{j∈S} q_j, which is always proper). Returns ``Normal(loc, scale).to_event(1)``, batch ``(B,)``.
        """
        if improper not in IMPROPER:
            raise InputError(f"improper must be one of {list(IMPROPER)}, got {improper!r}")
        masks = batch.subset_mask(subset)
        none = torch.zeros(batch.batch_size, dtype=torch.bool, device=batch.device)
        full = torch.stack([masks.get(n, none) for n in self.names], -1).all(-1)
        if bool(full.all()):
            return self.joint.posterior(batch)
        loc, scale = self._product(batch, masks, prior, improper, full)
        if bool(full.any()):
            joint_loc, joint_scale = diag_normal(self.joint.posterior(batch), "the joint encoder's q(z | X)")
            loc = torch.where(full.unsqueeze(-1), joint_loc, loc)
            scale = torch.where(full.unsqueeze(-1), joint_scale, scale)
        return dist.Normal(loc, scale).to_event(1)

    def _product(self, batch, masks, prior, improper, skip):
        """``(loc, scale)`` ``(B, D)`` of p(z) Π_{j∈S} [q_j(z|x_j) / p(z)] (rows with S = ∅: the prior).

        Rows in ``skip`` ``(B,)`` (answered by the joint encoder) are not checked for properness.
        """
        used = [n for n in self.names if n in masks and bool(masks[n].any())]
        experts = {n: diag_normal(self.experts.expert(batch, n), f"the expert of modality {n!r}") for n in used}
        if experts:
            like = next(iter(experts.values()))[0]
        else:  # S = ∅ in every row: the prior alone, in the experts' dtype
            like = torch.zeros(batch.batch_size, self.latent_dim, device=batch.device, dtype=self._dtype())
        loc0, scale0 = self.prior_params(like, prior)
        prec0 = scale0.pow(-2)
        eta0 = prec0 * loc0
        prec, eta = prec0.clone(), eta0.clone()
        plain_prec, plain_eta = prec0.clone(), eta0.clone()
        for name, (loc_j, scale_j) in experts.items():
            prec_j = scale_j.pow(-2)
            keep = masks[name].unsqueeze(-1)
            # where, not multiplication: an expert computed from a missing row's placeholder must not leak.
            prec = prec + torch.where(keep, prec_j - prec0, torch.zeros_like(prec0))
            eta = eta + torch.where(keep, prec_j * loc_j - eta0, torch.zeros_like(eta0))
            plain_prec = plain_prec + torch.where(keep, prec_j, torch.zeros_like(prec0))
            plain_eta = plain_eta + torch.where(keep, prec_j * loc_j, torch.zeros_like(eta0))
        bad = ~(prec > 0).all(-1, keepdim=True) & ~skip.unsqueeze(-1)
        if bool(bad.any()):
            if improper == "raise":
                check_precision(torch.where(bad, prec, torch.ones_like(prec)).detach())
            rows = bad.squeeze(-1).nonzero().flatten().tolist()
            warnings.warn(
                ImproperPosteriorWarning(
                    f"the JNF product rule is improper for data points {rows[:10]}"
                    f"{' and more' if len(rows) > 10 else ''}; they use the plain product p(z) Π_j q_j(z | x_j)"
                ),
                stacklevel=3,
            )
            prec = torch.where(bad, plain_prec, prec)
            eta = torch.where(bad, plain_eta, eta)
        return eta / prec, prec.rsqrt()


class JMVAEELBO(TermsELBO):
    """The JMVAE-KL objective (module docstring) for a :class:`JMVAEGuide`.

    Args:
        alpha: α, the weight of Σ_m KL(q(z|X) ‖ q_m(z|x_m)) (0.1: MultiVae / the JMVAE paper).
        beta_ref: β_ref, the β at which the warm-up is complete (the schedule's final β); the KL terms'
            weight is α · β / β_ref with the trainer's β.
        num_particles: L draws z ~ q(z|X) per data point (the bound is their mean).
        analytic: closed-form Gaussian KLs (needs Gaussian experts) instead of the one-sample estimate.
        reconstruction_weights: optional ``{modality: w}`` overriding ``model.reconstruction_weights``.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        beta_ref: float = 1.0,
        num_particles: int = 1,
        analytic: bool = True,
        reconstruction_weights=None,
    ):
        num_particles = check_int(num_particles, "num_particles", minimum=1)
        super().__init__(num_particles=num_particles, max_plate_nesting=2, vectorize_particles=True)
        self.alpha = check_float(alpha, "alpha", nonnegative=True)
        self.beta_ref = check_float(beta_ref, "beta_ref", positive=True)
        self.analytic = bool(analytic)
        self.reconstruction_weights = reconstruction_weights

    def terms(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, weighted: bool = True) -> dict:
        """``{"elbo", "kl_experts"}``, each ``(L, B)``: the joint ELBO and −α(β/β_ref) Σ_m KL(q(z|X) ‖ q_m)."""
        if not isinstance(guide, JMVAEGuide):
            raise InputTypeError(f"JMVAEELBO needs a JMVAEGuide (joint encoder + experts), got {type(guide).__name__}")
        beta = _check_beta(beta)
        weights = observation_weights(model, self.reconstruction_weights) if weighted else None
        loc, scale = diag_normal(guide.joint.posterior(batch), "the joint encoder's q(z | X)")
        replay = replay_terms(model, batch, loc, scale, beta, self.num_particles, weights)
        elbo = masked_sum(replay.recon, batch.subset_mask(None)) + replay.log_p - replay.log_q
        kls = {name: self._expert_kl(guide, batch, name, loc, scale, replay.z) for name in self._present(guide, batch)}
        kl = masked_sum(kls, batch.subset_mask(None)) if kls else torch.zeros_like(elbo)
        return {"elbo": elbo, "kl_experts": -self.alpha * (beta / self.beta_ref) * kl.expand_as(elbo)}

    @staticmethod
    def _present(guide, batch) -> list[str]:
        return batch.observed_names(guide.names)

    def _expert_kl(self, guide, batch, name, loc, scale, z) -> torch.Tensor:
        """KL(q(z|X) ‖ q_name(z|x_name)) per data point: ``(1, B)`` closed form or ``(L, B)`` one-sample estimates."""
        expert = guide.experts.expert(batch, name)
        if self.analytic:
            loc_m, scale_m = diag_normal(expert, f"the expert of modality {name!r} (analytic=True)")
            return gaussian_kl(loc, scale, loc_m, scale_m).unsqueeze(0)
        return dist.Normal(loc, scale).to_event(1).log_prob(z) - expert.log_prob(z)
