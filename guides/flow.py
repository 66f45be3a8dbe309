"""``FlowExpertGuide``: unimodal posteriors q_j(z | x_j) as Gaussians pushed through normalizing flows.

For each modality j (JNF: "Bridging the inference gap in Multimodal Variational Autoencoders",
Eq. 10)::

    h_j = encoder_j(x_j)                      (B, 2D)   [JNF-Shared: encoder_j(g_j(x_j)), g_j frozen]
    q_j(z | x_j) = flow_j # N(μ_j(h_j), diag σ_j(h_j)²)

The flow is unconditional by default (its parameters are shared by all data points, as in the
paper) or, with ``conditional=True``, reads the encoder output h_j as its context. Flow kinds (see
:mod:`pyro_mmvae.nn.flows`):

- ``"maf"`` (default; paper: 2 MADE blocks): ``log_prob`` at any z is ONE network pass per block;
  ``rsample``/``sample`` need D sequential passes (exact and differentiable, just slower);
- ``"coupling"``: affine coupling + seeded permutations, one pass per block both ways;
- ``num_blocks=0``: the Gaussian-only variant (q_j is the plain diagonal Gaussian, returned as an
  ``Independent(Normal)`` so that closed-form subset posteriors can recognise it).

Every expert has batch shape ``(B,)``, event shape ``(D,)``; ``log_prob(z)`` takes z of shape
``(*lead, B, D)`` (e.g. ``(C, N, D)`` chains × targets) and returns ``(*lead, B)``. Encoders run
once when the expert is built; evaluate ``log_prob`` on the returned object as often as needed.

Measured costs of ``log_prob`` + gradient and of sampling per flow kind:
``benchmarks/results/flow_cost_cpu.md`` (see :mod:`pyro_mmvae.nn.flows`). For a sampler: build the
experts once (``expert_dists(batch)``, ideally under ``torch.no_grad()`` with the guide's parameters
frozen) and call ``log_prob`` on them at every step; the encoders are not re-run.

Missing modalities: ``expert(batch, j)`` always returns a distribution over all B rows, also when
x_j is missing in some or all of them; rows where x_j is missing are computed from the zero
placeholder and are meaningless — callers mask them with ``batch.present[j]`` (``JNFLoss``
excludes them from j's term and skips a modality missing in every row; the subset-posterior target
masks them). Returning full-shape distributions keeps every consumer vectorised; the presence masks
are the single record of what is real.

JNF-Shared: ``project={name: g_j}`` replaces x_j by the frozen projection g_j(x_j) ``(B, k)`` and
uses the paper's small encoder Linear(k, 512)-ReLU-Linear(512, 512)-ReLU-Linear(512, 2D) (the last
layer is the two D-sized heads of the paper, stacked).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyro_mmvae.data.batch import MultimodalBatch, Subset
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.nn.flows import ConditionalFlow
from pyro_mmvae.nn.networks import MLP, GaussianHead, default_encoder
from pyro_mmvae.nn.per_modality import check_known_modalities
from pyro_mmvae.nn.projectors import FrozenProjector

from .base import MultimodalGuide
from .unimodal import single_modality


class FlowExpertGuide(MultimodalGuide):
    """Flow experts q_j(z | x_j), one per modality.

    Args:
        modalities: the modalities.
        latent_dim: D.
        flow: ``"maf"`` or ``"coupling"``.
        num_blocks: flow blocks per modality (paper: 2; 0 gives Gaussian experts).
        flow_hidden: hidden sizes of each block's network (``"maf"``: each ≥ D); default two
            layers of max(128, 2D).
        conditional: condition every block on the encoder output h_j ``(B, 2D)``.
        encoders: optional name → module ``(B, *shape) → (B, 2D)`` (with ``project``: ``(B, k) → (B, 2D)``).
        hidden, arch: hidden sizes and kind (``"mlp"``/``"conv"``) of the default encoders.
        min_scale: lower bound of the Gaussian base's σ.
        project: optional name → trained projector g_j ``(B, *shape) → (B, k)`` (JNF-Shared); it is
            frozen (eval mode, no gradients) and wrapped in :class:`FrozenProjector`.
        project_hidden: hidden sizes of the small encoder on top of a projector (paper: (512, 512)).
        seed: seeds the flows' permutations (modality i uses ``seed + i``).
        identity_init: start every flow at the identity (q_j starts as its Gaussian base).
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        flow: str = "maf",
        num_blocks: int = 2,
        flow_hidden: Sequence[int] | None = None,
        conditional: bool = False,
        encoders: Mapping[str, nn.Module] | None = None,
        hidden=(512, 512),
        arch: str = "mlp",
        min_scale: float = 1e-3,
        project: Mapping[str, nn.Module] | None = None,
        project_hidden=(512, 512),
        seed: int = 0,
        identity_init: bool = True,
    ):
        super().__init__(modalities, latent_dim, require_modalities="FlowExpertGuide")
        d = self.latent_dim
        self.conditional = bool(conditional)
        encoders, project = dict(encoders or {}), dict(project or {})
        check_known_modalities(encoders, self.names, "encoders")
        check_known_modalities(project, self.names, "project")

        def encoder(m: Modality) -> nn.Module:
            if m.name not in project:
                return encoders[m.name] if m.name in encoders else default_encoder(m, 2 * d, hidden, arch)
            g = FrozenProjector(project[m.name])
            head = encoders[m.name] if m.name in encoders else MLP(g.out_dim, project_hidden, 2 * d)
            return nn.Sequential(g, head)

        self.encoders = self.per_modality(encoder)
        self.projected = sorted(project)
        self.gaussian = GaussianHead(min_scale)
        self.flows = nn.ModuleDict(
            {
                name: ConditionalFlow(
                    d,
                    flow,
                    num_blocks,
                    flow_hidden,
                    context_dim=2 * d if self.conditional else 0,
                    seed=int(seed) + i,
                    identity_init=identity_init,
                )
                for i, name in enumerate(self.modalities)
            }
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters stage 2 trains (frozen projectors excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def experts(self) -> nn.ModuleDict:
        """Every module of the experts (encoders and flows) as one module, e.g. for
        ``fit(..., params=guide.experts, train_mode_modules=[guide.experts])``. Frozen projectors
        inside it receive no gradient and stay in eval mode."""
        return nn.ModuleDict({"encoders": self.encoders, "flows": self.flows})

    def encode(self, batch: MultimodalBatch, name: str) -> torch.Tensor:
        """Encoder output h_name ``(B, 2D)`` (``[loc | raw scale]``, also the flow's context)."""
        if name not in self.modalities:
            raise KeyError(f"unknown modality {name!r}; this guide has {self.names}")
        if name not in batch.data:
            raise KeyError(f"modality {name!r} is not in the batch (mark it missing with present=False)")
        h = self.encoders[name](batch.data[name])
        expected = (batch.batch_size, 2 * self.latent_dim)
        if tuple(h.shape) != expected:
            raise ValueError(f"encoder of {name!r} returned shape {tuple(h.shape)}, expected {expected}")
        return h

    def expert(self, batch: MultimodalBatch, name: str) -> dist.TorchDistribution:
        """q_name(z | x_name): batch ``(B,)``, event ``(D,)``; ``log_prob`` at z ``(*lead, B, D)``."""
        h = self.encode(batch, name)
        loc, scale = self.gaussian(h)
        base = dist.Normal(loc, scale).to_event(1)
        return self.flows[name](base, h if self.conditional else None)

    def expert_dists(self, batch: MultimodalBatch, names: Iterable[str] | None = None) -> dict:
        """``name → expert`` for ``names`` (default: every modality present in at least one row)."""
        if names is None:
            names = batch.observed_names(self.names)
        return {n: self.expert(batch, n) for n in names}

    def posterior(self, batch: MultimodalBatch, subset: Subset = None) -> dist.TorchDistribution:
        """q_j(z | x_j) for ONE modality: ``subset="j"`` or ``{"j"}``."""
        return self.expert(batch, single_modality(subset, self.names))
