"""``JNFLoss``: the stage-2 objective of JNF / JNF-Shared (Eq. 7-8 and 15).

From "Bridging the inference gap in Multimodal Variational Autoencoders".

With the generative model and the joint encoder q(z | X) frozen, the unimodal posteriors q_j are
fitted by minimising, per data point X = (x_1, …, x_M),

    ℓ(X) = − Σ_{j present} E_{z ~ q(z|X)} [ log q_j(z | x_j) ]
         =   Σ_{j present} [ KL(q(z|X) ‖ q_j(z|x_j)) + H(q(z|X)) ],

estimated with L = ``num_particles`` draws z ~ q(z | X) per data point shared by every j. The loss
is the MEAN of ℓ over the data points of the batch (and the particles), like every loss of the
library. Rows where modality j is missing are excluded from j's term (the row still counts in the
mean through its other modalities).

Frozen means:

- the joint encoder is switched to eval mode on every call and run under ``torch.no_grad()``: z is
  a detached sample, so no gradient reaches it even when its parameters still require gradients;
- the generative model is never run (no decoder computation at all; stage 2 does not need it) and
  is switched to eval mode, so a trainer that calls ``model.train()`` cannot make its
  normalisation statistics drift later;
- β does not enter the objective (the trainer's ``beta=`` is accepted and ignored);
- the joint encoder follows the batch's device (a trainer moves only the model and the guide it
  trains, so the loss moves the frozen encoder to the batch's device on first use).

Design: the trainer calls ``elbo.differentiable_loss(model, guide, batch, beta=...)`` with the
module being trained as ``guide``; here that is the expert guide (``FlowExpertGuide``, or any guide
with ``names`` and ``expert(batch, name)``), and the frozen joint encoder is given once at
construction: ``JNFLoss(joint_guide=joint)``. The joint encoder is an attribute of the loss, not of
the trained module, so ``JNFLoss(...)(model, guide).parameters()`` and checkpoints of the expert
guide never include it.

``analytic=True`` replaces the Monte Carlo expectation by its closed form KL(q ‖ q_j) + H(q), for
Gaussian experts (``num_blocks=0``) and a Gaussian joint encoder only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from ..data.batch import MultimodalBatch, is_tracing_step
from .elbo import LossELBO


def _is_diag_normal(d) -> bool:
    return isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1


class JNFLoss(LossELBO):
    """−Σ_j E_{q(z|X)}[log q_j(z | x_j)], averaged over data points.

    Args:
        joint_guide: the frozen joint encoder (a ``JointGuide``, or any guide whose
            ``posterior(batch)`` returns q(z | X) with batch ``(B,)``, event ``(D,)``).
        num_particles: L, joint-encoder draws per data point.
        analytic: use the closed form (Gaussian experts and Gaussian joint encoder only).
    """

    def __init__(self, joint_guide: nn.Module, num_particles: int = 1, analytic: bool = False):
        if not hasattr(joint_guide, "posterior"):
            raise TypeError(f"joint_guide must have a posterior(batch) method, got {type(joint_guide).__name__}")
        if int(num_particles) < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        super().__init__(num_particles=int(num_particles), max_plate_nesting=1, vectorize_particles=True)
        self.joint_guide = joint_guide
        self.analytic = bool(analytic)

    # ------------------------------------------------------------------ pieces
    def _freeze(self, model) -> None:
        self.joint_guide.train(False)
        if isinstance(model, nn.Module):
            model.train(False)

    def joint_posterior(self, batch: MultimodalBatch):
        """q(z | X) with no graph attached (eval mode, ``no_grad``), on the batch's device."""
        self.joint_guide.train(False)
        first = next(self.joint_guide.parameters(), None)
        if first is not None and first.device != batch.device:
            # A trainer moves the model and the trained guide to its device, not this frozen one.
            self.joint_guide.to(batch.device)
        with torch.no_grad():
            return self.joint_guide.posterior(batch)

    def joint_samples(self, batch: MultimodalBatch) -> torch.Tensor:
        """``(L, B, D)`` detached draws z ~ q(z | X)."""
        with torch.no_grad():
            return self.joint_posterior(batch).sample((self.num_particles,)).detach()

    @staticmethod
    def _names(guide, batch: MultimodalBatch) -> list[str]:
        names = batch.observed_names(guide.names)
        if not names:
            raise ValueError(f"no modality of the guide ({guide.names}) is present in the batch")
        return names

    @staticmethod
    def _rows(batch: MultimodalBatch, name: str):
        """``(rows mask, sub-batch)``: the rows where ``name`` is present (the batch itself if all are)."""
        rows = batch.present[name]
        return rows, (batch if bool(rows.all()) else batch[rows])

    def per_datapoint_terms(
        self, guide, batch: MultimodalBatch, z: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``name → (L, B)`` values of E-estimates ``log q_j(z | x_j)``, zero where j is missing.

        With ``analytic=True`` the values are −[KL(q ‖ q_j) + H(q)], shape ``(1, B)``. ``z`` may be
        given as ``(L, B, D)`` (Monte Carlo only). Experts are evaluated on the present rows only (inside a
        traced step, ``fit(compile=True)``: on every row, the missing ones masked out with ``torch.where``).
        """
        b = batch.batch_size
        out = {}
        if self.analytic:
            if z is not None:
                raise ValueError("z cannot be given with analytic=True")
            q = self.joint_posterior(batch)
            if not _is_diag_normal(q):
                raise TypeError(f"analytic=True needs a diagonal-Gaussian joint encoder, got {type(q).__name__}")
            for name in self._names(guide, batch):
                rows, sub = self._rows(batch, name)
                q_j = guide.expert(sub, name)
                if not _is_diag_normal(q_j):
                    raise TypeError(
                        f"analytic=True needs Gaussian experts (num_blocks=0); expert {name!r} is {type(q_j).__name__}"
                    )
                q_rows = Independent(Normal(q.base_dist.loc[rows], q.base_dist.scale[rows]), 1)
                value = -(kl_divergence(q_rows, q_j) + q_rows.entropy())
                full = value.new_zeros(1, b)
                full[:, rows] = value
                out[name] = full
            return out

        if z is None:
            z = self.joint_samples(batch)
        z = z.detach()
        if z.dim() != 3 or z.shape[1] != b:
            raise ValueError(f"z must have shape (L, {b}, D), got {tuple(z.shape)}")
        for name in self._names(guide, batch):
            if is_tracing_step():  # no shape may depend on values: every row, then the mask (where, not *)
                lp = guide.expert(batch, name).log_prob(z)
                out[name] = torch.where(batch.present[name], lp, torch.zeros_like(lp))
                continue
            rows, sub = self._rows(batch, name)
            lp = guide.expert(sub, name).log_prob(z if sub is batch else z[:, rows])
            full = lp.new_zeros(z.shape[0], b)
            full[:, rows] = lp
            out[name] = full
        return out

    # ------------------------------------------------------------------ ELBO interface
    def differentiable_loss(self, model, guide, batch: MultimodalBatch, beta: float = 1.0, **unused):
        """The stage-2 loss (a scalar with gradients into ``guide`` only).

        ``model`` is never run (only switched to eval mode); ``beta`` and other trainer keywords
        do not enter the objective.
        """
        self._freeze(model)
        terms = self.per_datapoint_terms(guide, batch)
        return -sum(terms.values()).mean()
