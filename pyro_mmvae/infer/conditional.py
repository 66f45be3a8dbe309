"""Conditional generation: draw z given any observed subset S and decode the other modalities.

Which posterior answers depends on S (JNF: "Bridging the inference gap in Multimodal Variational
Autoencoders", Section 3.3):

- |S| = 1: the unimodal expert q_j(z | x_j) (a flow or a Gaussian), sampled directly;
- S = every modality of the model: the joint encoder q(z | X);
- otherwise: the subset posterior p(z | x_S) ∝ Π_{j∈S} q_j(z|x_j) / p(z)^{|S|−1}, sampled by
  :class:`~pyro_mmvae.infer.mcmc.BatchedHMC` (one independent target per data point).

``method="mcmc"`` forces the subset posterior for any |S| ≥ 1 (useful to compare with the joint
encoder).

One interface answers "z given the observed subset S" for every kind of model, so coherence, FID and
the evaluation command never ask which kind they hold: a :class:`LatentSampler` is a callable
``(batch, given, num_samples) -> z (num_samples, B, D)``. :class:`GuideLatents` uses a guide's own
``posterior(batch, subset)`` (aggregation guides: PoE, MoE, MoPoE, SumPooling, SelfAttention, ...);
:class:`JNFLatents` uses JNF's rule above. :func:`conditional_decoder` turns a model and a latent
sampler into ``generate(batch, given, targets) -> {target: (B, *shape)}``, the form
:func:`~pyro_mmvae.metrics.coherence.subset_coherence` takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..data.batch import MultimodalBatch
from ..data.validation import validate_for
from ..errors import InputError, check_int
from ..models.function import as_model
from .mcmc import sample_subset_posterior
from .subset_posterior import SubsetPosterior


@dataclass
class ConditionalSamples:
    """``z``: ``(num_samples, B, D)``; ``generated``: name → ``(num_samples, B, *shape)`` decoded means;
    ``method``: which posterior produced z (``"expert"``, ``"joint"`` or ``"mcmc"``); ``diagnostics``:
    ``{"run": HMCRun}`` when MCMC ran (per-target acceptance, divergences, step sizes)."""

    z: torch.Tensor
    generated: dict[str, torch.Tensor]
    method: str
    diagnostics: dict = field(default_factory=dict)


def _given_names(given, model_names: list[str]) -> list[str]:
    given = [given] if isinstance(given, str) else list(given)
    if not given:
        raise ValueError("condition on at least one modality (given is empty)")
    unknown = [g for g in given if g not in model_names]
    if unknown:
        raise KeyError(f"unknown modality name(s) {unknown}; the model has {model_names}")
    return given


@torch.no_grad()
def sample_latents(
    batch: MultimodalBatch,
    given: Iterable[str] | str,
    *,
    names: list[str],
    joint_guide=None,
    experts=None,
    prior=None,
    num_samples: int = 1,
    method: str = "auto",
    mcmc_warmup: int = 300,
    num_chains: int = 4,
    seed: int | None = None,
    progress: bool = False,
    improper: str = "raise",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, str, dict]:
    """Draw ``(num_samples, B, D)`` latents given the modalities ``given``; see the module docstring.

    ``improper`` is passed to :func:`~pyro_mmvae.infer.mcmc.sample_subset_posterior`: with ``"warn"``
    the rows whose subset posterior is improper get meaningless latents, listed in
    ``diagnostics["run"].escaped_points`` and by an ``ImproperPosteriorWarning``.

    ``chunk_size``: sample the subset posteriors in chunks of this many rows, spread over the processes
    under ``torchrun`` (:func:`~pyro_mmvae.infer.mcmc.sharded.sample_sharded`; every process gets all the
    draws, the same whatever the number of processes; ``diagnostics["sharded"]`` holds the run).
    """
    given = _given_names(given, names)
    if method not in ("auto", "mcmc"):
        raise InputError(f"method must be 'auto' or 'mcmc', got {method!r}")
    num_samples = check_int(num_samples, "num_samples", minimum=1)
    num_chains = check_int(num_chains, "num_chains", minimum=1)
    mcmc_warmup = check_int(mcmc_warmup, "mcmc_warmup", minimum=0)
    batch = validate_for(batch, joint_guide, experts, allow_unknown=True)
    if method == "auto" and set(given) == set(names):
        if joint_guide is None:
            raise ValueError("conditioning on every modality needs the joint guide")
        return joint_guide.posterior(batch, given).sample((num_samples,)), "joint", {}
    if experts is None:
        raise ValueError(f"conditioning on {given} needs unimodal experts (e.g. a FlowExpertGuide)")
    if method == "auto" and len(given) == 1:
        return experts.posterior(batch, given).sample((num_samples,)), "expert", {}
    if prior is None:
        raise ValueError("the subset posterior needs the prior p(z)")
    chains = max(1, min(num_chains, num_samples))
    per_chain = -(-num_samples // chains)
    if chunk_size is not None:
        from .mcmc.sharded import sample_sharded

        with torch.enable_grad():
            sharded = sample_sharded(
                lambda a, b: SubsetPosterior.from_guide(experts, batch[a:b], given, prior),
                batch.batch_size,
                per_chain,
                mcmc_warmup,
                chunk_size=chunk_size,
                num_chains=chains,
                seed=0 if seed is None else seed,
                progress=progress,
                improper=improper,
            )
        z = sharded.samples.reshape(-1, *sharded.samples.shape[2:])[:num_samples].to(batch.device)
        return z, "mcmc", {"sharded": sharded}
    with torch.enable_grad():
        target = SubsetPosterior.from_guide(experts, batch, given, prior)
        run = sample_subset_posterior(
            target,
            num_samples=per_chain,
            warmup_steps=mcmc_warmup,
            num_chains=chains,
            seed=seed,
            progress=progress,
            improper=improper,
        )
    z = run.samples.reshape(-1, *run.samples.shape[2:])[:num_samples]  # (C·S, N, D) → (num_samples, N, D)
    return z.detach(), "mcmc", {"run": run}


@torch.no_grad()
def conditional_generate(
    model, batch: MultimodalBatch, given, *, joint_guide=None, experts=None, num_samples: int = 1, **kwargs
) -> ConditionalSamples:
    """Latents given ``given`` and the decoded means of every other modality of ``model``.

    ``model`` is a library model, a user's ``PyroModule`` with ``names``/``prior_dist``/``reconstruct``, or a
    Pyro function that declares its modalities (:class:`~pyro_mmvae.models.FunctionModel`: the prior and the
    decoded means are read from the program itself).
    """
    model = as_model(model, joint_guide if joint_guide is not None else experts, batch)
    names = list(model.names)
    given = _given_names(given, names)
    z, method, stats = sample_latents(
        batch,
        given,
        names=names,
        joint_guide=joint_guide,
        experts=experts,
        prior=model.prior_dist(),
        num_samples=num_samples,
        **kwargs,
    )
    targets = [n for n in names if n not in given] or names
    return ConditionalSamples(z, model.reconstruct(z, targets), method, stats)


class LatentSampler(Protocol):
    """Answers "z given the observed subset S": ``(batch, given, num_samples) -> z (num_samples, B, D)``."""

    def __call__(self, batch: MultimodalBatch, given: list[str], num_samples: int = 1) -> torch.Tensor: ...


class GuideLatents:
    """z ~ ``guide.posterior(batch, given)``: for guides that encode any subset themselves (aggregation guides)."""

    def __init__(self, guide):
        self.guide = guide

    @torch.no_grad()
    def __call__(self, batch: MultimodalBatch, given: list[str], num_samples: int = 1) -> torch.Tensor:
        num_samples = check_int(num_samples, "num_samples", minimum=1)
        return self.guide.posterior(batch, list(given)).sample((num_samples,))


class JNFLatents:
    """JNF's rule (module docstring): expert for |S| = 1, joint encoder for S = M, subset posterior by HMC otherwise.

    Args:
        names: every modality of the model (S = ``names`` uses the joint encoder).
        joint_guide, experts, prior: q(z | X), the unimodal experts and p(z) (``model.prior_dist()``).
        options: keyword arguments of :func:`sample_latents` (``mcmc_warmup``, ``num_chains``, ``seed``,
            ``improper``, ``method``, ``progress``).
    """

    def __init__(self, names, joint_guide, experts, prior, **options):
        self.names, self.joint_guide, self.experts, self.prior = list(names), joint_guide, experts, prior
        self.options = options
        self.last_diagnostics: dict = {}

    def __call__(self, batch: MultimodalBatch, given: list[str], num_samples: int = 1) -> torch.Tensor:
        z, _, self.last_diagnostics = sample_latents(
            batch,
            given,
            names=self.names,
            joint_guide=self.joint_guide,
            experts=self.experts,
            prior=self.prior,
            num_samples=num_samples,
            **self.options,
        )
        return z


def conditional_decoder(model, latents: LatentSampler):
    """``generate(batch, given, targets) -> {target: decoded mean (B, *shape)}`` from one z per row given ``given``."""

    @torch.no_grad()
    def generate(batch: MultimodalBatch, given: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
        z = latents(batch, list(given), 1)[0]
        return model.reconstruct(z, list(targets))

    return generate
