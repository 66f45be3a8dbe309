"""Aggregation guides: q(z | x_S) from per-modality encoders combined by a permutation-invariant rule.

Every guide here encodes each modality with its own network ``h_s = enc_s(x_s)`` — on an input
replaced by zeros in the rows where s is outside the row's subset S (missing or not sampled) — and
stacks the results into ``(B, M, ·)`` in the guide's modality order, with the per-row mask
``batch.subset_mask(subset)`` as ``(B, M)``. The aggregation rule is invariant to the modality
order and ignores entries outside S, so a row may condition on any subset, the empty one
included. ``posterior(batch, subset)`` returns a distribution with batch ``(B,)`` and event
``(D,)``:

============================  ==========================================  ========================
guide                         q(z | x_S)                                  q(z | ∅)
============================  ==========================================  ========================
:class:`PoEGuide`             prior expert × Π_{s∈S} N(μ_s, v_s)           the prior expert
:class:`MoEGuide`             Σ_{s∈S} (1/|S|) N(μ_s, σ_s²)                 N(0, I)
:class:`MoPoEGuide`           (1/2^|S|) Σ_{S'⊆S} PoE(x_{S'})              the prior expert
:class:`SumPoolingGuide`      N(ρ(Σ_{s∈S} χ(h_s)))                        N(ρ(0)), learned
:class:`SelfAttentionGuide`   N(ρ(Σ_{s∈S} g^L_s))                         N(ρ(0)), learned
``*MixtureGuide``             K-component mixture from ρ                   mixture from ρ(0)
============================  ==========================================  ========================

PoE experts use ``v = var_floor + exp(2ℓ)``; the prior expert is (μ0, ℓ0) = (0, 0), i.e.
N(0, (1 + var_floor) I). MoE experts use ``σ = min_scale + exp(ℓ)``; the set guides use
``σ = min_scale + exp_linear(ℓ)`` — the same below ℓ = 5, linear above, because their ρ sums over the
set (see :func:`~pyro_mmvae.nn.set_aggregators.exp_linear`). PoE+/MoE+ (``plus=True``)
add 4 [Dense 256, ReLU] layers before each unimodal encoder's last layer (parameter-matched
baselines). Default sizes follow the linear-Gaussian setting of "Learning multi-modal generative
models with permutation-invariant encoders and tighter variational objectives" (encoders
``D_s → 256 → 256 → ·``, set networks of width 256).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyro_mmvae.data.batch import MultimodalBatch, Subset
from pyro_mmvae.data.modality import Modality
from pyro_mmvae.data.validation import validate_batch
from pyro_mmvae.distributions.experts import (
    MAX_MOPOE_MODALITIES,
    POE_MEANS,
    VAR_FLOOR,
    DiagNormalMixture,
    mixture_of_experts,
    mixture_of_products,
    poe_variance,
    product_of_experts,
)
from pyro_mmvae.nn.networks import GaussianHead, default_encoder
from pyro_mmvae.nn.per_modality import index_modalities, per_modality_modules
from pyro_mmvae.nn.set_aggregators import SelfAttentionPooling, SetGaussianHead, SumPooling, lecun_normal_
from pyro_mmvae.nn.shared_encodings import cached, in_shared_block, tensor_key

from .base import MultimodalGuide

PLUS_LAYERS = 4
PLUS_WIDTH = 256
INITS = ("lecun", "torch")


def unimodal_encoder(
    modality: Modality,
    out_dim: int,
    hidden: Sequence[int] = (256, 256),
    arch: str = "mlp",
    extra_layers: int = 0,
    extra_width: int = PLUS_WIDTH,
) -> nn.Module:
    """Encoder ``(*lead, *shape) → (*lead, out_dim)`` with ReLU activations.

    ``extra_layers`` inserts that many [Dense ``extra_width``, ReLU] layers before the last layer
    (PoE+/MoE+). For conv encoders the conv net's own last Dense becomes the first extra layer.
    """
    if extra_layers < 0:
        raise ValueError(f"extra_layers must be >= 0, got {extra_layers}")
    if extra_layers and arch == "conv" and not modality.is_discrete:
        layers: list[nn.Module] = [default_encoder(modality, extra_width, arch="conv"), nn.ReLU()]
        for _ in range(extra_layers - 1):
            layers += [nn.Linear(extra_width, extra_width), nn.ReLU()]
        layers.append(nn.Linear(extra_width, out_dim))
        return nn.Sequential(*layers)
    return default_encoder(modality, out_dim, (*hidden, *[extra_width] * extra_layers), arch)


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


def init_networks(init: str, *networks: nn.Module) -> tuple[nn.Module, ...]:
    """The networks, re-initialised LeCun-normal with zero biases (``"lecun"``) or as built (``"torch"``), in order."""
    _check_init(init)
    return tuple(lecun_normal_(net) for net in networks) if init == "lecun" else networks


def check_poe_options(poe_mean: str, var_floor: float) -> tuple[str, float]:
    """Validated ``(poe_mean, var_floor)`` of a product of experts."""
    if poe_mean not in POE_MEANS:
        raise ValueError(f"poe_mean must be one of {POE_MEANS}, got {poe_mean!r}")
    if not var_floor > 0:
        raise ValueError(f"var_floor must be > 0, got {var_floor}")
    return poe_mean, float(var_floor)


def prior_expert(var_floor: float) -> tuple[float, float]:
    """(μ0, v0) of the always-on prior expert (μ0, ℓ0) = (0, 0): ``(0, var_floor + 1)``."""
    return 0.0, var_floor + 1.0


def poe_experts(features: torch.Tensor, var_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Experts ``[μ_s, ℓ_s] = features (B, M, 2D)`` → ``(locs (B, M, D), variances var_floor + exp(2ℓ_s))``."""
    loc, log_scale = features.chunk(2, dim=-1)
    return loc, poe_variance(log_scale, var_floor)


def poe_of_features(features: torch.Tensor, mask: torch.Tensor, var_floor: float, poe_mean: str):
    """PoE of the experts ``features (B, M, 2D)`` in S (``mask (B, M)``) and the prior expert; event ``(D,)``."""
    return product_of_experts(*poe_experts(features, var_floor), mask, *prior_expert(var_floor), poe_mean)


class ModalityEncoders(nn.Module):
    """One encoder per modality, applied to inputs zeroed outside the subset: ``→ (B, M, out_dim)``.

    Args:
        modalities: the modalities; their order is the order of the stacked axis.
        out_dim: feature size per modality.
        hidden, arch, extra_layers: as in :func:`unimodal_encoder` (ignored for given encoders).
        encoders: optional name → module ``(B, *shape) → (B, out_dim)`` (used as given).
        init: ``"lecun"`` re-initialises the default encoders LeCun-normal with zero biases;
            ``"torch"`` keeps PyTorch's default initialisation.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        arch: str = "mlp",
        encoders: Mapping[str, nn.Module] | None = None,
        extra_layers: int = 0,
        init: str = "lecun",
    ):
        super().__init__()
        _check_init(init)
        self.modalities = index_modalities(modalities, "an aggregation guide")

        def build(m: Modality) -> nn.Module:
            enc = unimodal_encoder(m, out_dim, hidden, arch, extra_layers)
            return lecun_normal_(enc) if init == "lecun" else enc

        self.encoders = per_modality_modules(self.modalities, build, encoders)
        self.out_dim = int(out_dim)

    @property
    def names(self) -> list[str]:
        return list(self.modalities)

    def check_batch(self, batch: MultimodalBatch) -> None:
        """Raise if ``batch`` lacks one of the guide's modalities, has unknown ones or malformed tensors."""
        validate_batch(
            batch, self.modalities, require_all=True
        )  # the one validation path (a cache hit after posterior)

    def stacked_mask(self, batch: MultimodalBatch, subset: Subset = None) -> torch.Tensor:
        """Per-row subset ∩ presence as bool ``(B, M)`` in the guide's modality order."""
        self.check_batch(batch)
        return batch.stacked_mask(subset, self.names)

    def forward(self, batch: MultimodalBatch, mask: torch.Tensor) -> torch.Tensor:
        """Features ``(B, M, out_dim)``; modality s sees zeros in rows where ``mask[:, s]`` is False.

        Inside :func:`~pyro_mmvae.nn.shared_encodings.shared_encodings` each modality is encoded once,
        from zeros only where it is MISSING, and the features are reused for every subset: the
        aggregators ignore the entries outside ``mask``, so the result is the same.
        """
        encoders = self.encoders
        if not in_shared_block():
            return torch.stack(
                [self._encode(n, enc, batch.data[n], mask[:, i], batch) for i, (n, enc) in enumerate(encoders.items())],
                dim=-2,
            )
        inputs = [(batch.data[n], batch.present[n]) for n in encoders]
        key = (id(self), "stacked", *(k for x, p in inputs for k in (*tensor_key(x), *tensor_key(p))))
        encode = lambda: torch.stack(  # noqa: E731
            [self._encode(n, enc, x, p, batch) for (n, enc), (x, p) in zip(encoders.items(), inputs)], dim=-2
        )
        return cached(key, encode, keep=tuple(inputs))

    def _encode(self, name: str, enc: nn.Module, x: torch.Tensor, keep: torch.Tensor, batch) -> torch.Tensor:
        keep = keep.reshape(-1, *([1] * (x.dim() - 1)))
        h = enc(torch.where(keep, x, torch.zeros_like(x)))
        if h.shape != (batch.batch_size, self.out_dim):
            raise ValueError(
                f"encoder of modality {name!r} returned shape {tuple(h.shape)}, expected "
                f"({batch.batch_size}, {self.out_dim})"
            )
        return h


class AggregationGuide(MultimodalGuide):
    """Base class: per-modality encoders (``self.encoders``, a :class:`ModalityEncoders`) and a latent size."""

    def __init__(self, modalities: Iterable[Modality], latent_dim: int):
        super().__init__(modalities, latent_dim, require_modalities="an aggregation guide")

    def subset_mask(self, batch: MultimodalBatch, subset: Subset = None) -> torch.Tensor:
        """``batch.subset_mask(subset)`` stacked as bool ``(B, M)`` in the guide's modality order."""
        return self.encoders.stacked_mask(batch, subset)


# ---------------------------------------------------------------------------------------------
# experts: PoE, MoE, MoPoE
# ---------------------------------------------------------------------------------------------
class _PoEExperts(AggregationGuide):
    """Gaussian experts with PoE variances ``v_s = var_floor + exp(2ℓ_s)``."""

    def __init__(self, modalities, latent_dim, hidden, encoders, arch, poe_mean, var_floor, plus, init):
        super().__init__(modalities, latent_dim)
        self.poe_mean, self.var_floor = check_poe_options(poe_mean, var_floor)
        self.encoders = ModalityEncoders(
            self.modalities.values(), 2 * self.latent_dim, hidden, arch, encoders, PLUS_LAYERS if plus else 0, init
        )

    @property
    def prior_expert(self) -> tuple[float, float]:
        """(μ0, v0) of the always-on prior expert (μ0, ℓ0) = (0, 0)."""
        return prior_expert(self.var_floor)

    def experts(self, batch: MultimodalBatch, subset: Subset = None):
        """``(locs (B, M, D), variances (B, M, D), mask (B, M))`` in the guide's modality order."""
        mask = self.subset_mask(batch, subset)
        return (*poe_experts(self.encoders(batch, mask), self.var_floor), mask)


class PoEGuide(_PoEExperts):
    """Product of experts with an always-on prior expert (precision-weighted Gaussian product).

    Args:
        modalities: the modalities (the order only fixes the stacking order).
        latent_dim: D.
        hidden: hidden sizes of the default unimodal encoders ``D_s → hidden → 2D`` (ReLU).
        encoders: optional name → module ``(B, *shape) → (B, 2D)`` giving ``[μ_s, ℓ_s]``.
        arch: ``"mlp"`` or ``"conv"`` for the default encoders.
        poe_mean: ``"correct"`` (Σ(μ_s/v_s)/P, default) or ``"paper"`` (Σ μ_s v_s / P, the paper's
            formula; only to reproduce published numbers).
        var_floor: the 1e-3 in ``v_s = 1e-3 + exp(2ℓ_s)``.
        plus: PoE+ — 4 extra [Dense 256, ReLU] layers in every default encoder.
        init: ``"lecun"`` (default) or ``"torch"``.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        poe_mean: str = "correct",
        var_floor: float = VAR_FLOOR,
        plus: bool = False,
        init: str = "lecun",
    ):
        super().__init__(modalities, latent_dim, hidden, encoders, arch, poe_mean, var_floor, plus, init)

    def posterior(self, batch: MultimodalBatch, subset: Subset = None):
        mask = self.subset_mask(batch, subset)
        return poe_of_features(self.encoders(batch, mask), mask, self.var_floor, self.poe_mean)


class MoPoEGuide(_PoEExperts):
    """Mixture of products of experts: (1/2^|S|) Σ_{S'⊆S} PoE(x_{S'}).

    Arguments as in :class:`PoEGuide`, plus ``include_empty`` (default True: the empty subset's
    component — the prior expert — is one of the 2^|S| components; see
    :func:`~pyro_mmvae.distributions.experts.mixture_of_products`). Costs 2^M products per data
    point; more than 12 modalities raise ``ValueError`` at construction.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        poe_mean: str = "correct",
        var_floor: float = VAR_FLOOR,
        include_empty: bool = True,
        init: str = "lecun",
    ):
        modalities = list(modalities)
        if len(modalities) > MAX_MOPOE_MODALITIES:
            raise ValueError(
                f"MoPoEGuide evaluates 2^M products of experts and is limited to M <= {MAX_MOPOE_MODALITIES} "
                f"modalities (got M = {len(modalities)}); use SumPoolingGuide or SelfAttentionGuide instead"
            )
        super().__init__(modalities, latent_dim, hidden, encoders, arch, poe_mean, var_floor, False, init)
        self.include_empty = bool(include_empty)

    def posterior(self, batch: MultimodalBatch, subset: Subset = None) -> DiagNormalMixture:
        locs, variances, mask = self.experts(batch, subset)
        prior_loc, prior_var = self.prior_expert
        return mixture_of_products(locs, variances, mask, self.poe_mean, self.include_empty, prior_loc, prior_var)


class MoEGuide(AggregationGuide):
    """Mixture of experts Σ_{s∈S} (1/|S|) N(μ_s, diag σ_s²), ``σ = min_scale + exp(ℓ)``; S = ∅ → N(0, I).

    Samples carry pathwise gradients through the component choice (see
    :class:`~pyro_mmvae.distributions.experts.DiagNormalMixture`). Arguments as in
    :class:`PoEGuide`; ``min_scale`` bounds σ below; ``plus`` makes MoE+.
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        min_scale: float = 1e-3,
        plus: bool = False,
        init: str = "lecun",
    ):
        super().__init__(modalities, latent_dim)
        self.encoders = ModalityEncoders(
            self.modalities.values(), 2 * self.latent_dim, hidden, arch, encoders, PLUS_LAYERS if plus else 0, init
        )
        self.gaussian = GaussianHead(min_scale, positive="exp")

    def experts(self, batch: MultimodalBatch, subset: Subset = None):
        """``(locs (B, M, D), scales (B, M, D), mask (B, M))`` in the guide's modality order."""
        mask = self.subset_mask(batch, subset)
        loc, scale = self.gaussian(self.encoders(batch, mask))
        return loc, scale, mask

    def posterior(self, batch: MultimodalBatch, subset: Subset = None) -> DiagNormalMixture:
        return mixture_of_experts(*self.experts(batch, subset))


# ---------------------------------------------------------------------------------------------
# learned set aggregation: SumPooling, SelfAttention and their mixture heads
# ---------------------------------------------------------------------------------------------
def gaussian_output_dim(latent_dim: int, num_components: int | None) -> int:
    """Size of ρ's output: 2D for a Gaussian, (2D + 1)K for a K-component mixture."""
    return 2 * latent_dim if num_components is None else (2 * latent_dim + 1) * num_components


def distribution_from_output(out: torch.Tensor, latent_dim: int, num_components: int | None, min_scale: float):
    """ρ's output ``(B, O)`` → diagonal Normal (event ``(D,)``) or :class:`DiagNormalMixture`.

    Mixture layout: ``out[..., :2DK]`` is K blocks ``[μ_k, ℓ_k]``, ``out[..., 2DK:]`` the K logits;
    ``σ = min_scale + exp_linear(ℓ)`` (:class:`~pyro_mmvae.nn.set_aggregators.SetGaussianHead`).
    """
    head = SetGaussianHead(min_scale)
    if num_components is None:
        loc, scale = head(out)
        return dist.Normal(loc, scale).to_event(1)
    k, d = num_components, latent_dim
    blocks = out[..., : 2 * d * k].unflatten(-1, (k, 2 * d))
    loc, scale = head(blocks)
    return DiagNormalMixture(loc, scale, out[..., 2 * d * k :])


class SetAggregationGuide(AggregationGuide):
    """Unimodal features ``(B, M, E)`` → a set network ``(B, M, E), (B, M) → (B, O)`` → q(z | x_S).

    Subclasses build ``self.aggregator``; ``num_components=None`` gives a Gaussian, an int K a
    K-component mixture of diagonal Gaussians (pathwise gradients through the component choice).
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        feature_dim: int | None,
        hidden: Sequence[int],
        encoders: Mapping[str, nn.Module] | None,
        arch: str,
        min_scale: float,
        num_components: int | None,
        init: str,
    ):
        super().__init__(modalities, latent_dim)
        if num_components is not None and num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.feature_dim = int(feature_dim) if feature_dim is not None else 2 * self.latent_dim
        self.num_components, self.min_scale, self.init = num_components, float(min_scale), init
        self.encoders = ModalityEncoders(self.modalities.values(), self.feature_dim, hidden, arch, encoders, 0, init)

    @property
    def output_dim(self) -> int:
        return gaussian_output_dim(self.latent_dim, self.num_components)

    def _finish(self, aggregator: nn.Module) -> None:
        (self.aggregator,) = init_networks(self.init, aggregator)

    def features(self, batch: MultimodalBatch, subset: Subset = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h (B, M, E), mask (B, M))`` with h computed on inputs zeroed outside the subset."""
        mask = self.subset_mask(batch, subset)
        return self.encoders(batch, mask), mask

    def posterior(self, batch: MultimodalBatch, subset: Subset = None):
        h, mask = self.features(batch, subset)
        return distribution_from_output(self.aggregator(h, mask), self.latent_dim, self.num_components, self.min_scale)


class SumPoolingGuide(SetAggregationGuide):
    """DeepSets guide: ``q(z | x_S) = N(ρ(Σ_{s∈S} χ(h_s)))``; S = ∅ → N(ρ(0)).

    Args:
        modalities, latent_dim, encoders, arch, init: as in :class:`PoEGuide`.
        feature_dim: E, the unimodal feature size (default 2D, the linear-Gaussian setting's 60 for D = 30).
        hidden: hidden sizes of the default unimodal encoders ``D_s → hidden → E`` (ReLU).
        width: H, hidden width of χ and ρ; pooled_dim: P; num_hidden: hidden layers of χ and ρ.
        min_scale: σ = min_scale + exp_linear(ℓ) (exp(ℓ) up to ℓ = 5, linear above).
        num_components: ``None`` (Gaussian) or K (mixture, see :class:`SumPoolingMixtureGuide`).
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        feature_dim: int | None = None,
        hidden: Sequence[int] = (256, 256),
        width: int = 256,
        pooled_dim: int = 256,
        num_hidden: int = 2,
        min_scale: float = 1e-3,
        encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        num_components: int | None = None,
        init: str = "lecun",
    ):
        super().__init__(modalities, latent_dim, feature_dim, hidden, encoders, arch, min_scale, num_components, init)
        self._finish(SumPooling(self.feature_dim, self.output_dim, width, pooled_dim, num_hidden))


class SelfAttentionGuide(SetAggregationGuide):
    """Set-transformer guide: ``q(z | x_S) = N(ρ(Σ_{s∈S} g^L_s))``; S = ∅ → N(ρ(0)).

    Args as in :class:`SumPoolingGuide`, plus ``dim`` (P = attention width), ``num_layers`` (L,
    masked pre-LN blocks) and ``num_heads`` (4).
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        feature_dim: int | None = None,
        hidden: Sequence[int] = (256, 256),
        width: int = 256,
        dim: int = 256,
        num_layers: int = 1,
        num_heads: int = 4,
        num_hidden: int = 2,
        min_scale: float = 1e-3,
        encoders: Mapping[str, nn.Module] | None = None,
        arch: str = "mlp",
        num_components: int | None = None,
        init: str = "lecun",
    ):
        super().__init__(modalities, latent_dim, feature_dim, hidden, encoders, arch, min_scale, num_components, init)
        self._finish(
            SelfAttentionPooling(self.feature_dim, self.output_dim, width, dim, num_layers, num_heads, num_hidden)
        )


class SumPoolingMixtureGuide(SumPoolingGuide):
    """:class:`SumPoolingGuide` whose ρ outputs K components ``[μ_k, ℓ_k]`` and K logits (default K = 5)."""

    def __init__(self, modalities: Iterable[Modality], latent_dim: int, num_components: int = 5, **kwargs):
        super().__init__(modalities, latent_dim, num_components=num_components, **kwargs)


class SelfAttentionMixtureGuide(SelfAttentionGuide):
    """:class:`SelfAttentionGuide` whose ρ outputs K components ``[μ_k, ℓ_k]`` and K logits (default K = 5)."""

    def __init__(self, modalities: Iterable[Modality], latent_dim: int, num_components: int = 5, **kwargs):
        super().__init__(modalities, latent_dim, num_components=num_components, **kwargs)
