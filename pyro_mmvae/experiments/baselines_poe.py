"""The product-of-experts baselines as (model, guide, objective) triples on a dataset's published networks.

Each builder ``build_<name>(dataset, modalities, latent_dim, **options) -> (model, guide, objective)``
returns a :class:`~pyro_mmvae.models.MultimodalVAE` with the dataset's decoders, a guide with the
dataset's encoders (:mod:`pyro_mmvae.nn.architectures`) and the model's objective, ready for
``pyro_mmvae.train.fit(model, guide, data, objective, beta=...)``; ``latent_sampler_<name>(model,
guide)`` answers "z given the observed subset S" (a :class:`~pyro_mmvae.infer.LatentSampler`) for
coherence, FID and ``pyro-mmvae evaluate``. Side by side (guide / objective / z given S):

- ``jmvae``: joint encoder + unimodal Gaussian experts / JMVAE-KL (:mod:`pyro_mmvae.infer.jmvae`) /
  the joint encoder for S = M, else the JNF product rule in closed form;
- ``mvae``: PoE with prior expert / joint + unimodal + k subset ELBOs (:mod:`pyro_mmvae.infer.mvae`) / PoE of S;
- ``mopoe``: mixture of the non-empty subsets' PoEs / ELBO under that mixture (:mod:`pyro_mmvae.infer.mopoe`) /
  the mixture of S's subset PoEs;
- ``mvtcae``: PoE without prior expert / total-correlation objective, α = 5/6 (:mod:`pyro_mmvae.infer.mvtcae`) /
  PoE of S;
- ``mmjsd``: mixture of the unimodal experts / Jensen-Shannon divergence with the dynamic prior
  (:mod:`pyro_mmvae.infer.mmjsd`) / the dynamic prior of S (a PoE with the prior).

``modalities``: Modality objects, names of the dataset's modalities, or ``None`` (all of them). Common
options: ``encoders`` / ``decoders`` (``{name: module}``, replacing the dataset's networks, e.g. small
MLPs from :mod:`pyro_mmvae.nn.networks` for tests), ``num_particles``, ``reconstruction_weights``,
``arch_options`` (keyword options of the dataset's networks, e.g. ``{"base_channels": 16}`` for the
PolyMNIST ResNets).
β (and JMVAE's warm-up) is the trainer's ``beta=`` schedule: :func:`warmup_schedule`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from ..data.batch import MultimodalBatch
from ..data.modality import Modality
from ..errors import InputError, InputTypeError, check_int

__all__ = [
    "BASELINES",
    "JMVAE_ALPHA",
    "JMVAE_WARMUP_EPOCHS",
    "DynamicPriorLatents",
    "JMVAELatents",
    "build_baseline",
    "build_jmvae",
    "build_mmjsd",
    "build_mopoe",
    "build_mvae",
    "build_mvtcae",
    "latent_sampler",
    "latent_sampler_jmvae",
    "latent_sampler_mmjsd",
    "latent_sampler_mopoe",
    "latent_sampler_mvae",
    "latent_sampler_mvtcae",
    "warmup_schedule",
]

JMVAE_ALPHA = 0.1
"""α of JMVAE-KL: MultiVae's ``JMVAEConfig`` default, "a good compromise value" (JNF paper, Appendix E.1)."""

JMVAE_WARMUP_EPOCHS = 100
"""KL warm-up of JMVAE in the JNF paper's experiments (Appendix E: "a warmup of 100 epochs")."""


# ---------------------------------------------------------------------------------------------- helpers
def warmup_schedule(beta: float = 1.0, warmup_epochs: int = JMVAE_WARMUP_EPOCHS):
    """β_e = β · min((e + 1) / W, 1) for the 0-based epoch e: MultiVae's warm-up factor epoch / warmup (1-based epochs).

    A :class:`~pyro_mmvae.train.schedules.LinearAnnealing` from β/W to β over W − 1 epochs.
    """
    from ..train.schedules import LinearAnnealing

    w = check_int(warmup_epochs, "warmup_epochs", minimum=1)
    return LinearAnnealing(beta / w, beta, w - 1)


def _modalities(dataset: str, modalities) -> list[Modality]:
    from ..nn import architectures

    known = {m.name: m for m in architectures.dataset_modalities(dataset)}
    if modalities is None:
        return list(known.values())
    out = []
    for m in modalities:
        if isinstance(m, str):
            if m not in known:
                raise InputError(f"dataset {dataset!r} has no modality {m!r}; expected one of {list(known)}")
            out.append(known[m])
        elif isinstance(m, Modality):
            out.append(m)
        else:
            raise InputTypeError(f"modalities must be Modality objects or names, got {type(m).__name__}")
    if not out:
        raise InputError("build a baseline with at least one modality")
    return out


def _networks(make: Callable[[Modality], torch.nn.Module], modalities, given: Mapping | None, what: str) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - {m.name for m in modalities})
    if unknown:
        raise InputError(
            f"{what} given for unknown modalities {unknown}; the modalities are {[m.name for m in modalities]}"
        )
    return {m.name: given[m.name] if m.name in given else make(m) for m in modalities}


def _encoders(dataset, modalities, out_dim: int, given=None, what="encoders", arch_options=None) -> dict:
    from ..nn import architectures

    options = dict(arch_options or {})
    return _networks(lambda m: architectures.encoder(dataset, m, out_dim, **options), modalities, given, what)


def _model(dataset: str, modalities, latent_dim: int, decoders=None, arch_options=None):
    from ..distributions.likelihoods import Likelihood
    from ..models import MultimodalVAE
    from ..nn import architectures

    def make(m):
        return architectures.decoder(dataset, m, latent_dim, Likelihood(m).param_shape, **dict(arch_options or {}))

    return MultimodalVAE(modalities, latent_dim, decoders=_networks(make, modalities, decoders, "decoders"))


# ---------------------------------------------------------------------------------------------- builders
def build_jmvae(
    dataset: str,
    modalities: Iterable[Modality | str] | None,
    latent_dim: int,
    *,
    alpha: float = JMVAE_ALPHA,
    beta: float = 1.0,
    head_dim: int = 256,
    joint_merge: str = "mlp",
    analytic: bool = True,
    num_particles: int = 1,
    heads=None,
    encoders=None,
    decoders=None,
    reconstruction_weights=None,
    arch_options=None,
):
    """JMVAE-KL: a joint encoder (heads = the dataset's encoders, merged by a 2×512 MLP or concatenated with
    ``joint_merge="concat"``, as the JNF paper's Appendix E) and unimodal Gaussian experts trained jointly.

    ``beta`` is the final β of the warm-up (train with ``beta=warmup_schedule(beta, 100)``); it sets the
    objective's ``beta_ref`` so that the α term warms up with the KL (MultiVae's ``JMVAE``).
    """
    from ..guides import JointGuide, UnimodalGaussianGuide
    from ..infer.jmvae import JMVAEELBO, JMVAEGuide

    if joint_merge not in ("mlp", "concat"):
        raise InputError(f"joint_merge must be 'mlp' or 'concat', got {joint_merge!r}")
    mods = _modalities(dataset, modalities)
    model = _model(dataset, mods, latent_dim, decoders, arch_options)
    merge = (512, 512) if joint_merge == "mlp" else ()
    head_nets = _encoders(dataset, mods, head_dim, heads, "heads", arch_options)
    joint = JointGuide(mods, latent_dim, head_dim=head_dim, merge_hidden=merge, heads=head_nets)
    experts = UnimodalGaussianGuide(
        mods, latent_dim, encoders=_encoders(dataset, mods, 2 * latent_dim, encoders, arch_options=arch_options)
    )
    objective = JMVAEELBO(alpha, beta, num_particles, analytic, reconstruction_weights)
    return model, JMVAEGuide(joint, experts), objective


def build_mvae(
    dataset: str,
    modalities: Iterable[Modality | str] | None,
    latent_dim: int,
    *,
    num_subsets: int = 1,
    num_particles: int = 1,
    stl: bool = False,
    encoders=None,
    decoders=None,
    reconstruction_weights=None,
    arch_options=None,
):
    """MVAE: a PoE guide with prior expert and the sub-sampled objective (joint + unimodal + ``num_subsets`` ELBOs)."""
    from ..guides import PoEGuide
    from ..infer.mvae import MVAEELBO

    mods = _modalities(dataset, modalities)
    guide = PoEGuide(
        mods, latent_dim, encoders=_encoders(dataset, mods, 2 * latent_dim, encoders, arch_options=arch_options)
    )
    objective = MVAEELBO(num_subsets, num_particles, stl, reconstruction_weights)
    return _model(dataset, mods, latent_dim, decoders, arch_options), guide, objective


def build_mopoe(
    dataset: str,
    modalities: Iterable[Modality | str] | None,
    latent_dim: int,
    *,
    sampling: str = "stratified",
    kl: str = "average",
    include_empty: bool = False,
    num_particles: int = 1,
    encoders=None,
    decoders=None,
    reconstruction_weights=None,
    arch_options=None,
):
    """MoPoE: the mixture of the non-empty subsets' PoEs (``include_empty=False``, as the authors' code) and
    its ELBO with one stratified component per row and the average of the components' KLs."""
    from ..guides import MoPoEGuide
    from ..infer.mopoe import MoPoEELBO

    mods = _modalities(dataset, modalities)
    encoders = _encoders(dataset, mods, 2 * latent_dim, encoders, arch_options=arch_options)
    guide = MoPoEGuide(mods, latent_dim, encoders=encoders, include_empty=include_empty)
    objective = MoPoEELBO(sampling, kl, num_particles, reconstruction_weights)
    return _model(dataset, mods, latent_dim, decoders, arch_options), guide, objective


def build_mvtcae(
    dataset: str,
    modalities: Iterable[Modality | str] | None,
    latent_dim: int,
    *,
    alpha: float | None = None,
    prior_expert: bool = False,
    num_particles: int = 1,
    encoders=None,
    decoders=None,
    reconstruction_weights=None,
    arch_options=None,
):
    """MVTCAE: a PoE of the unimodal experts (no prior expert, as the authors) and the total-correlation
    objective with ``alpha`` (default 5/6, the authors' PolyMNIST value; train with β = 2.5 there)."""
    from ..infer.mvtcae import ALPHA, MVTCAEELBO, MVTCAEGuide

    mods = _modalities(dataset, modalities)
    encoders = _encoders(dataset, mods, 2 * latent_dim, encoders, arch_options=arch_options)
    guide = MVTCAEGuide(mods, latent_dim, encoders=encoders, prior_expert=prior_expert)
    objective = MVTCAEELBO(ALPHA if alpha is None else alpha, num_particles, reconstruction_weights)
    return _model(dataset, mods, latent_dim, decoders, arch_options), guide, objective


def build_mmjsd(
    dataset: str,
    modalities: Iterable[Modality | str] | None,
    latent_dim: int,
    *,
    sampling: str = "stratified",
    num_particles: int = 1,
    encoders=None,
    decoders=None,
    reconstruction_weights=None,
    arch_options=None,
):
    """MMJSD: a mixture of the unimodal Gaussian experts and the Jensen-Shannon objective with its dynamic prior."""
    from ..guides import MoEGuide
    from ..infer.mmjsd import MMJSDELBO

    mods = _modalities(dataset, modalities)
    guide = MoEGuide(
        mods, latent_dim, encoders=_encoders(dataset, mods, 2 * latent_dim, encoders, arch_options=arch_options)
    )
    objective = MMJSDELBO(sampling, num_particles, reconstruction_weights)
    return _model(dataset, mods, latent_dim, decoders, arch_options), guide, objective


# ---------------------------------------------------------------------------------------------- z given S
class JMVAELatents:
    """JMVAE's "z given S": the joint encoder for S = every modality, the closed-form JNF product rule otherwise.

    ``improper="warn"`` (default) lets rows whose product is improper use the plain product p Π_j q_j with an
    :class:`~pyro_mmvae.infer.ImproperPosteriorWarning`; ``"raise"`` refuses them.
    """

    def __init__(self, model, guide, improper: str = "warn"):
        self.model, self.guide, self.improper = model, guide, improper

    @torch.no_grad()
    def __call__(self, batch: MultimodalBatch, given: list[str], num_samples: int = 1) -> torch.Tensor:
        num_samples = check_int(num_samples, "num_samples", minimum=1)
        q = self.guide.subset_posterior(batch, list(given), self.model.prior_dist(), self.improper)
        return q.sample((num_samples,))


class DynamicPriorLatents:
    """MMJSD's "z given S": the expert for a single modality S, else the dynamic prior (PoE of p and S's experts)."""

    def __init__(self, model, guide):
        self.model, self.guide = model, guide

    @torch.no_grad()
    def __call__(self, batch: MultimodalBatch, given: list[str], num_samples: int = 1) -> torch.Tensor:
        from ..infer.mmjsd import dynamic_prior

        num_samples = check_int(num_samples, "num_samples", minimum=1)
        return dynamic_prior(self.guide, batch, list(given), self.model).sample((num_samples,))


def latent_sampler_jmvae(model, guide, method: str = "closed_form", improper: str = "warn", **mcmc_options):
    """``method="closed_form"``: :class:`JMVAELatents`; ``"mcmc"``: JNF's sampler
    (:class:`~pyro_mmvae.infer.JNFLatents`: subset posteriors by BatchedHMC with the Gaussian experts;
    ``mcmc_options`` as its options)."""
    from ..infer.conditional import JNFLatents

    if method == "closed_form":
        return JMVAELatents(model, guide, improper)
    if method == "mcmc":
        return JNFLatents(
            model.names, guide.joint, guide.experts, model.prior_dist(), improper=improper, **mcmc_options
        )
    raise InputError(f"method must be 'closed_form' or 'mcmc', got {method!r}")


def _guide_latents(model, guide):
    from ..infer.conditional import GuideLatents

    return GuideLatents(guide)


def latent_sampler_mvae(model, guide):
    """The PoE of S with the prior expert (the guide's own ``posterior``)."""
    return _guide_latents(model, guide)


def latent_sampler_mopoe(model, guide):
    """The mixture of the PoEs of S's non-empty subsets (the guide's own ``posterior``)."""
    return _guide_latents(model, guide)


def latent_sampler_mvtcae(model, guide):
    """The PoE of S's experts (the guide's own ``posterior``)."""
    return _guide_latents(model, guide)


def latent_sampler_mmjsd(model, guide):
    """:class:`DynamicPriorLatents`."""
    return DynamicPriorLatents(model, guide)


BASELINES: dict[str, tuple[Callable, Callable]] = {
    "jmvae": (build_jmvae, latent_sampler_jmvae),
    "mvae": (build_mvae, latent_sampler_mvae),
    "mopoe": (build_mopoe, latent_sampler_mopoe),
    "mvtcae": (build_mvtcae, latent_sampler_mvtcae),
    "mmjsd": (build_mmjsd, latent_sampler_mmjsd),
}
"""name → (builder, latent-sampler factory)."""


def _check_name(name: str) -> str:
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}; expected one of {list(BASELINES)}")
    return name


def build_baseline(name: str, dataset: str, modalities, latent_dim: int, **options):
    """``BASELINES[name]``'s builder: ``(model, guide, objective)``."""
    return BASELINES[_check_name(name)][0](dataset, modalities, latent_dim, **options)


def latent_sampler(name: str, model, guide, **options):
    """``BASELINES[name]``'s "z given S" for a trained ``(model, guide)``."""
    return BASELINES[_check_name(name)][1](model, guide, **options)
