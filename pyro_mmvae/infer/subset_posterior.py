"""Subset posteriors p(z | x_S) built from unimodal experts.

Following "Bridging the inference gap in Multimodal Variational Autoencoders" (Eq. 11-12), for a
subset S of modalities and one data point,

    p(z | x_S) ∝ p(z) Π_{j∈S} q_j(z | x_j) / p(z)      i.e.
    log target(z) = log p(z) + Σ_{j∈S} [log q_j(z | x_j) − log p(z)],

so the prior appears with exponent 1 − |S| overall (it is divided out |S| − 1 times, not once).
:class:`SubsetPosterior` holds this unnormalised target for a batch of N data points at once. The
experts are torch distributions with batch shape ``(N,)`` and event shape ``(D,)`` — diagonal
Gaussians, or normalising flows whose base parameters were produced by an encoder. They are built
ONCE (the data are fixed while sampling), so evaluating the target at a new z never re-runs an
encoder: only the flow transforms themselves are evaluated.

Each data point may use its own subset: ``mask[j, n]`` says whether expert j enters the product for
data point n (a point with no expert left is distributed as the prior; one expert gives q_j itself).

Shapes: ``log_prob(z)`` takes ``z`` of shape ``(*lead, N, D)`` (``lead`` e.g. chains) and returns
``(*lead, N)``; ``N`` data points are N independent targets. The properness checks (exact for Gaussian
experts, a tail probe for flows) live in :mod:`pyro_mmvae.infer.properness`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from ..data.validation import validate_for
from ..nn.flows import maf_log_prob_and_grad
from ..sites import LATENT_SITE
from . import properness
from .properness import ImproperPosteriorError

__all__ = [
    "SubsetPosterior",
    "diagonal_gaussian_params",
    "log_prob_and_grad",
]


def diagonal_gaussian_params(d: Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)`` of a diagonal Gaussian with event shape ``(D,)``, else ``None``.

    Recognises ``Independent(Normal(loc, scale), 1)`` (Pyro's ``Normal(...).to_event(1)`` included).
    The returned tensors have shape ``batch_shape + (D,)``.
    """
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1 and isinstance(d.base_dist, Normal):
        base = d.base_dist
        shape = d.batch_shape + d.event_shape
        return base.loc.expand(shape), base.scale.expand(shape)
    return None


def log_prob_and_grad(d: Distribution, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d.log_prob(z), ∂ log_prob / ∂z)``, ``z`` ``(*lead, *batch, D)`` → ``(*lead, *batch)`` and ``z``'s shape.

    In closed form for diagonal Gaussians, by :func:`~pyro_mmvae.nn.flows.maf_log_prob_and_grad` for
    the library's MAF flows, and by ``torch.autograd.grad`` for any other distribution. Neither value
    carries an autograd graph.
    """
    params = diagonal_gaussian_params(d)
    if params is not None:
        loc, scale = params
        return d.log_prob(z).detach(), ((loc - z) / scale.pow(2)).detach()
    fused = maf_log_prob_and_grad(d, z)
    if fused is not None:
        return fused
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = d.log_prob(z)
        (g,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), g


def _without_validation(d: Distribution) -> Distribution:
    """A shallow copy of ``d`` (and of the distributions it wraps) that skips argument validation.

    Validation checks every value against the support on the host (``bool(tensor)``): once per
    expert and leapfrog step that would be a host synchronisation, which a sampler on a GPU must
    avoid. The parameters are shared, not copied.
    """
    d = copy.copy(d)
    d._validate_args = False
    for attr in ("base_dist", "_mixture_distribution", "_component_distribution"):
        inner = getattr(d, attr, None)
        if isinstance(inner, Distribution):
            setattr(d, attr, _without_validation(inner))
    return d


def _as_distribution(prior) -> Distribution:
    """A prior given as a distribution, as a model (its ``prior_dist()``: read from the program's trace for a
    :class:`~pyro_mmvae.models.FunctionModel`) or as a module whose ``forward()`` returns one."""
    if isinstance(prior, Distribution):
        return prior
    if callable(getattr(prior, "prior_dist", None)):
        return prior.prior_dist()
    if isinstance(prior, nn.Module):
        out = prior()
        if isinstance(out, Distribution):
            return out
    raise TypeError(
        f"prior must be a torch Distribution with event shape (D,) or a module returning one, got {type(prior)}"
    )


class SubsetPosterior:
    """The unnormalised subset posterior of N data points, one independent target per point.

    Args:
        prior: p(z), event shape ``(D,)``, batch shape ``()`` or ``(N,)`` (or a prior module, e.g.
            :class:`~pyro_mmvae.distributions.priors.StandardNormalPrior`, called once).
        experts: the unimodal posteriors q_j(z | x_j), each with batch shape ``(N,)`` and event
            shape ``(D,)``; a mapping ``name -> distribution`` or a sequence (named ``"0", "1", ...``).
        mask: optional per-data-point subsets: a bool tensor ``(|S|, N)`` (rows in the order of
            ``experts``) or a mapping ``name -> BoolTensor(N,)``. ``None``: every expert for every point.

    The experts are evaluated as given: build them once from cached encoder outputs (see
    :meth:`from_guide`). Device and dtype follow the experts' tensors.
    """

    def __init__(
        self,
        prior,
        experts: Mapping[str, Distribution] | Sequence[Distribution],
        mask: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    ):
        self.prior = _as_distribution(prior)
        if isinstance(experts, Mapping):
            self.experts = dict(experts)
        else:
            self.experts = {str(i): e for i, e in enumerate(experts)}
        if not self.experts:
            raise ValueError("a SubsetPosterior needs at least one expert")
        if len(self.prior.event_shape) != 1:
            raise ValueError(f"the prior must have event shape (D,), got {tuple(self.prior.event_shape)}")
        self.latent_dim = int(self.prior.event_shape[0])
        first = next(iter(self.experts.values()))
        if len(first.batch_shape) != 1:
            raise ValueError(
                f"experts must have batch shape (N,) (one distribution per data point), got "
                f"{tuple(first.batch_shape)} for expert {next(iter(self.experts))!r}"
            )
        self.num_data = int(first.batch_shape[0])
        for name, e in self.experts.items():
            if not isinstance(e, Distribution):
                raise TypeError(f"expert {name!r} must be a torch Distribution, got {type(e)}")
            if tuple(e.batch_shape) != (self.num_data,) or tuple(e.event_shape) != (self.latent_dim,):
                raise ValueError(
                    f"expert {name!r} must have batch shape ({self.num_data},) and event shape "
                    f"({self.latent_dim},), got batch {tuple(e.batch_shape)} and event {tuple(e.event_shape)}"
                )
        if tuple(self.prior.batch_shape) == (1,) and self.num_data != 1:  # one prior row for every point
            self.prior = self.prior.expand(torch.Size([self.num_data]))
        if tuple(self.prior.batch_shape) not in ((), (self.num_data,)):
            raise ValueError(
                f"the prior's batch shape must be (), (1,) or ({self.num_data},), got {tuple(self.prior.batch_shape)}"
            )
        self.mask = self._check_mask(mask)
        # the shape checks above were done on the given objects; evaluate unvalidated copies
        self.prior = _without_validation(self.prior)
        self.experts = {name: _without_validation(e) for name, e in self.experts.items()}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_gaussians(cls, prior_loc, prior_scale, locs, scales, mask=None) -> SubsetPosterior:
        """Diagonal Gaussian prior and experts.

        Args:
            prior_loc, prior_scale: ``(D,)`` (or ``(N, D)``, or broadcastable scalars with ``locs``).
            locs, scales: ``(|S|, N, D)`` expert means and standard deviations.
            mask: optional bool ``(|S|, N)``.
        """
        locs, scales = torch.as_tensor(locs), torch.as_tensor(scales)
        if locs.dim() != 3 or locs.shape != scales.shape:
            raise ValueError(
                f"locs and scales must both have shape (|S|, N, D), got {tuple(locs.shape)} and {tuple(scales.shape)}"
            )
        d = locs.shape[-1]
        prior_loc = torch.as_tensor(prior_loc, dtype=locs.dtype, device=locs.device)
        prior_scale = torch.as_tensor(prior_scale, dtype=locs.dtype, device=locs.device)
        if prior_loc.dim() == 0:
            prior_loc = prior_loc.expand(d)
        if prior_scale.dim() == 0:
            prior_scale = prior_scale.expand(d)
        prior_loc, prior_scale = torch.broadcast_tensors(prior_loc, prior_scale)
        prior = dist.Normal(prior_loc, prior_scale).to_event(1)
        experts = [dist.Normal(m, s).to_event(1) for m, s in zip(locs, scales)]
        return cls(prior, experts, mask)

    @classmethod
    def from_guide(cls, guide, batch, subset, prior) -> SubsetPosterior:
        """Experts q_j(z | x_j) = ``guide.posterior(batch, {j})`` for the modalities of ``subset``.

        Each expert is computed ONCE, without gradients and with the guide in eval mode (dropout or
        normalisation layers must not make the target change between leapfrog steps).

        Args:
            guide: a :class:`~pyro_mmvae.guides.MultimodalGuide` answering ``posterior(batch, {name})``.
            batch: the :class:`~pyro_mmvae.data.MultimodalBatch` (N rows).
            subset: names (the same subset for every row), ``None`` (every modality present in some
                row) or ``name -> BoolTensor(N,)`` per-row subsets; intersected with presence.
            prior: the model's prior: a distribution, a prior module, or the model itself (its ``prior_dist()``).
        """
        batch = validate_for(batch, guide, allow_unknown=True)  # the experts then see the safe batch
        masks = batch.subset_mask(subset)
        if subset is None:
            names = [n for n in batch.names if bool(masks[n].any())]
        elif isinstance(subset, Mapping):
            names = [n for n in batch.names if n in subset]
        else:
            names = [subset] if isinstance(subset, str) else [n for n in subset]
        if not names:
            raise ValueError(f"subset {subset!r} selects no modality")
        was_training = guide.training
        guide.eval()
        try:
            with torch.no_grad():
                experts = {name: guide.posterior(batch, {name}) for name in names}
                prior = _as_distribution(prior)
        finally:
            guide.train(was_training)
        return cls(prior, experts, {name: masks[name] for name in names})

    # ------------------------------------------------------------------ validation
    def _check_mask(self, mask) -> torch.Tensor | None:
        if mask is None:
            return None
        names = list(self.experts)
        if isinstance(mask, Mapping):
            unknown = [k for k in mask if k not in self.experts]
            if unknown:
                raise KeyError(f"mask given for unknown expert(s) {unknown}; the experts are {names}")
            missing = [k for k in names if k not in mask]
            if missing:
                raise KeyError(f"mask lacks expert(s) {missing}")
            rows = []
            for k in names:
                m = torch.as_tensor(mask[k])
                if m.dtype != torch.bool or tuple(m.shape) != (self.num_data,):
                    raise ValueError(
                        f"mask of expert {k!r} must be a bool tensor of shape ({self.num_data},), "
                        f"got {m.dtype} {tuple(m.shape)}"
                    )
                rows.append(m)
            return torch.stack(rows)
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or tuple(mask.shape) != (len(names), self.num_data):
            raise ValueError(
                f"mask must be a bool tensor of shape (|S|, N) = ({len(names)}, {self.num_data}), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        return mask

    # ------------------------------------------------------------------ properties
    @property
    def names(self) -> list[str]:
        return list(self.experts)

    @property
    def subset_sizes(self) -> torch.Tensor:
        """|S| per data point, long ``(N,)``."""
        if self.mask is None:
            return torch.full((self.num_data,), len(self.experts), dtype=torch.long)
        return self.mask.long().sum(0)

    @property
    def is_gaussian(self) -> bool:
        """Whether the prior and every expert are diagonal Gaussians (so :meth:`closed_form` exists)."""
        return diagonal_gaussian_params(self.prior) is not None and all(
            diagonal_gaussian_params(e) is not None for e in self.experts.values()
        )

    # ------------------------------------------------------------------ the target
    def _check_z(self, z: torch.Tensor) -> None:
        if z.dim() < 2 or tuple(z.shape[-2:]) != (self.num_data, self.latent_dim):
            raise ValueError(
                f"z must have shape (*lead, N, D) = (..., {self.num_data}, {self.latent_dim}), got {tuple(z.shape)}"
            )

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(z | x_S): ``z`` ``(*lead, N, D)`` → ``(*lead, N)``."""
        self._check_z(z)
        log_prior = self.prior.log_prob(z)
        if self.mask is None:
            total = (1 - len(self.experts)) * log_prior
            for expert in self.experts.values():
                total = total + expert.log_prob(z)
            return total
        total = log_prior
        mask = self._mask_on(z.device)
        for j, expert in enumerate(self.experts.values()):
            # where, not multiplication: a masked expert may be -inf at z and must not leak NaNs.
            total = total + torch.where(mask[j], expert.log_prob(z) - log_prior, torch.zeros_like(log_prior))
        return total

    def log_prob_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_prob(z), ∂ log_prob / ∂z)``: ``z`` ``(*lead, N, D)`` → ``(*lead, N)`` and ``(*lead, N, D)``.

        What :class:`~pyro_mmvae.infer.mcmc.BatchedHMC` calls at every leapfrog step. Each expert and the
        prior are differentiated by :func:`log_prob_and_grad` (closed form for Gaussians, a fused
        backward sweep for MAF flows, autograd otherwise); the values equal :meth:`log_prob` and its
        autograd gradient.
        """
        self._check_z(z)
        z = z.detach()
        lp_prior, g_prior = log_prob_and_grad(self.prior, z)
        if self.mask is None:
            k = 1 - len(self.experts)
            total, grad = k * lp_prior, k * g_prior
            for expert in self.experts.values():
                lp, g = log_prob_and_grad(expert, z)
                total, grad = total + lp, grad + g
            return total, grad
        total, grad = lp_prior, g_prior.expand_as(z)
        mask = self._mask_on(z.device)
        for j, expert in enumerate(self.experts.values()):
            lp, g = log_prob_and_grad(expert, z)
            # where, not multiplication: a masked expert may be -inf or NaN at z
            total = total + torch.where(mask[j], lp - lp_prior, torch.zeros_like(lp_prior))
            grad = grad + torch.where(mask[j].unsqueeze(-1), g - g_prior, torch.zeros_like(grad))
        return total, grad

    def _mask_on(self, device) -> torch.Tensor:
        """The mask on ``device``, copied there once."""
        if self.mask.device != device:
            cache = self.__dict__.setdefault("_mask_cache", {})
            if device not in cache:
                cache[device] = self.mask.to(device)
            return cache[device]
        return self.mask

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """Per-target potential energy −log p(z | x_S): ``(*lead, N, D)`` → ``(*lead, N)``."""
        return -self.log_prob(z)

    def potential_fn(self, params: Mapping[str, torch.Tensor], name: str = LATENT_SITE) -> torch.Tensor:
        """Pyro ``potential_fn`` adapter: ``{name: z (*lead, N, D)}`` → scalar −Σ log p(z | x_S).

        Use it with ``pyro.infer.HMC``/``NUTS(potential_fn=target.potential_fn)``: all N targets then
        share one joint Hamiltonian (one step size and one accept/reject for the whole batch).
        """
        if name not in params:
            raise KeyError(f"potential_fn expects a parameter named {name!r}, got {sorted(params)}")
        return -self.log_prob(params[name]).sum()

    # ------------------------------------------------------------------ closed form
    def _natural_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Precision Λ and Λμ of the Gaussian product, each ``(N, D)`` (not checked for properness)."""
        prior_params = diagonal_gaussian_params(self.prior)
        if prior_params is None:
            raise TypeError(f"closed_form needs a diagonal Gaussian prior, got {type(self.prior).__name__}")
        prec0 = prior_params[1].pow(-2).expand(self.num_data, self.latent_dim)
        eta0 = prec0 * prior_params[0]
        prec, eta = prec0.clone(), eta0.clone()
        for j, (name, expert) in enumerate(self.experts.items()):
            params = diagonal_gaussian_params(expert)
            if params is None:
                raise TypeError(
                    f"closed_form needs diagonal Gaussian experts; expert {name!r} is {type(expert).__name__}"
                )
            loc, scale = params
            prec_j = scale.pow(-2)
            d_prec, d_eta = prec_j - prec0, prec_j * loc - eta0
            if self.mask is not None:
                m = self.mask[j].to(prec.device).unsqueeze(-1)
                d_prec, d_eta = torch.where(m, d_prec, 0.0), torch.where(m, d_eta, 0.0)
            prec, eta = prec + d_prec, eta + d_eta
        return prec, eta

    def improper_points(self) -> list[int]:
        """Data points whose Gaussian product has a non-positive precision in some dimension (Gaussian
        experts only; see :meth:`closed_form`)."""
        prec, _ = self._natural_parameters()
        return properness.nonpositive_precision_points(prec)

    def closed_form(self) -> Distribution:
        """The exact Gaussian p(z | x_S) when the prior and every expert are diagonal Gaussians.

        Precision Λ = Σ_{j∈S} Λ_j − (|S| − 1) Λ_prior and mean Λ⁻¹ [Σ_j Λ_j μ_j − (|S| − 1) Λ_prior μ_prior],
        per data point and dimension. Returns ``Normal(mean, Λ^{-1/2}).to_event(1)``, batch ``(N,)``.

        Raises:
            TypeError: an expert or the prior is not a diagonal Gaussian.
            ImproperPosteriorError: Λ is not positive for some data points (experts broader than the
                prior); the message names those data points and dimensions.
        """
        prec, eta = self._natural_parameters()
        properness.check_precision(prec)
        return dist.Normal(eta / prec, prec.rsqrt()).to_event(1)

    # ------------------------------------------------------------------ properness
    def rising_tails(self, **probe_options) -> torch.Tensor:
        """Bool ``(N,)``: data points whose target still rises far out, with no barrier on the way there.

        The tail probe :func:`pyro_mmvae.infer.properness.rising_tails` run on this target, with its
        options (``max_radius``, ``barrier``, ``num_directions``, ``num_radii``, ``num_bulk``, ``seed``);
        Gaussian experts are settled exactly by :meth:`closed_form` instead. Deterministic given
        ``seed``, it does not touch the global random state.
        """
        return properness.rising_tails(self, **probe_options)

    # ------------------------------------------------------------------ initialisation
    def _expert_points(self, num_draws: int) -> torch.Tensor:
        """Candidate points ``(K, N, D)``: expert means where defined, else ``num_draws`` draws per expert."""
        cands = []
        for expert in self.experts.values():
            try:
                cands.append(expert.mean.unsqueeze(0))
            except NotImplementedError:
                cands.append(expert.sample((num_draws,)))
        try:
            cands.append(self.prior.mean.expand(1, self.num_data, self.latent_dim))
        except NotImplementedError:
            pass
        return torch.cat(cands)

    def _best(self, cands: torch.Tensor) -> torch.Tensor:
        """Per data point, the candidate ``(K, N, D)`` with the highest target density → ``(N, D)``."""
        return properness.highest_density_point(self, cands)

    @torch.no_grad()
    def initial_point(self, num_draws: int = 16) -> torch.Tensor:
        """A point ``(N, D)`` in the bulk of every target.

        The closed-form mean when the target is Gaussian and proper; otherwise, per data point, the
        expert mean (or one of ``num_draws`` draws of an expert without a mean, e.g. a flow) or prior
        mean with the highest target density.
        """
        if self.is_gaussian:
            try:
                return self.closed_form().mean
            except ImproperPosteriorError:
                pass
        return self._best(self._expert_points(num_draws))

    @torch.no_grad()
    def approximate_variance(self, num_draws: int = 64) -> torch.Tensor:
        """A per-target diagonal variance ``(N, D)``, e.g. for the sampler's initial mass matrix.

        Exact (the closed form's) for Gaussian experts; otherwise the same product formula applied
        to moment-matched Gaussians (``num_draws`` draws per expert without a ``variance``). Where that
        product is improper, the smallest variance among the point's experts is used instead.
        """
        if self.is_gaussian:
            try:
                return self.closed_form().variance
            except ImproperPosteriorError:
                pass

        def variance(d):
            try:
                v = d.variance
            except NotImplementedError:
                v = d.sample((num_draws,)).var(0)
            return v.expand(self.num_data, self.latent_dim)

        var0 = variance(self.prior)
        prec = 1.0 / var0
        smallest = var0.clone()
        for j, expert in enumerate(self.experts.values()):
            var_j = variance(expert)
            active = torch.ones(self.num_data, 1, dtype=torch.bool, device=var_j.device)
            if self.mask is not None:
                active = self.mask[j].to(var_j.device).unsqueeze(-1)
            prec = prec + torch.where(active, 1.0 / var_j - 1.0 / var0, 0.0)
            smallest = torch.where(active, torch.minimum(smallest, var_j), smallest)
        ok = (prec > 0) & torch.isfinite(prec)
        return torch.where(ok, 1.0 / prec, smallest)

    @torch.no_grad()
    def initial_points(self, num_chains: int, num_draws: int = 16) -> torch.Tensor:
        """Distinct starting points ``(C, N, D)`` for ``num_chains`` chains.

        Chain c starts, per data point, at the best (highest target density) of ``num_draws`` draws
        from each expert: dispersed like the experts, yet in the target's bulk. Draws come from the
        global torch RNG (seed it with ``pyro.set_rng_seed``).
        """
        if num_chains < 1:
            raise ValueError(f"num_chains must be >= 1, got {num_chains}")
        out = []
        for _ in range(num_chains):
            cands = torch.cat([e.sample((num_draws,)) for e in self.experts.values()])
            out.append(self._best(cands))
        return torch.stack(out)
