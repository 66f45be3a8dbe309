"""How each model name of ``pyro-mmvae train --model NAME`` is built from a dataset's networks, stage by stage.

A recipe turns ``(modalities, preset, dataset name)`` into Pyro modules, with the dataset's published
encoders and decoders (:mod:`pyro_mmvae.nn.architectures`):

- ``joint``: stage ``joint``, a :class:`~pyro_mmvae.models.MultimodalVAE` with a
  :class:`~pyro_mmvae.guides.JointGuide` (JNF stage 1) trained with the β-ELBO;
- ``jnf``: then stage ``experts_flow``, masked-autoregressive flow experts q_j(z|x_j) fitted to the frozen
  joint encoder (JNF stage 2);
- ``jnf-shared``: stage ``projectors`` (DCCA or contrastive projectors g_j) before the joint VAE, then
  stage ``experts_shared``, flow experts on the frozen projections;
- aggregation models (``poe``, ``moe``, ``sumpooling``, ``selfattention``, ``sumpooling-mixture``,
  ``selfattention-mixture``): one stage ``vae``, a MultimodalVAE with that aggregation guide, trained with
  the masked objective (or the mixture bound, ``objective="mixture"``);
- the baselines (``jmvae``, ``mvae``, ``mmvae``, ``mopoe``, ``mvtcae``, ``mmvaeplus``, ``mmjsd``): one stage
  ``vae`` with each paper's own model, guide and objective
  (:mod:`~pyro_mmvae.experiments.baselines_poe`, :mod:`~pyro_mmvae.experiments.baselines_mixture`);
  ``objective="masked"``/``"mixture"`` trains ``mopoe``'s guide with those bounds instead.

:func:`latent_sampler` gives each trained model's answer to "z given the subset S" (the expert / joint
encoder / subset-posterior rule of JNF, or the aggregation guide's own posterior).
"""

from __future__ import annotations

from ..errors import InputError

JNF_MODELS = ("joint", "jnf", "jnf-shared")
AGGREGATION_MODELS = (
    "poe",
    "moe",
    "sumpooling",
    "selfattention",
    "sumpooling-mixture",
    "selfattention-mixture",
)
POE_BASELINES = ("jmvae", "mvae", "mopoe", "mvtcae", "mmjsd")
MIXTURE_BASELINES = ("mmvae", "mmvaeplus")
BASELINE_MODELS = ("jmvae", "mvae", "mmvae", "mopoe", "mvtcae", "mmvaeplus", "mmjsd")
MODELS = JNF_MODELS + AGGREGATION_MODELS + BASELINE_MODELS
# "auto": the model's own objective (β-ELBO for JNF, the masked bound for aggregation models, each
# baseline's paper objective); "masked"/"mixture": the permutation-invariant paper's bounds.
OBJECTIVES = ("auto", "masked", "mixture")
MIXTURE_COMPONENTS = 5


def check_model(name: str) -> str:
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; expected one of {list(MODELS)}")
    return name


def build_model(dataset: str, modalities, preset):
    """The generative model p(z) Π_m p(x_m | z) with the dataset's decoders."""
    from ..distributions.likelihoods import Likelihood
    from ..models import MultimodalVAE
    from ..nn import architectures

    shapes = {m.name: Likelihood(m).param_shape for m in modalities}
    decoders = {
        m.name: architectures.decoder(dataset, m, preset.latent_dim, shapes[m.name], **preset.arch_options())
        for m in modalities
    }
    return MultimodalVAE(modalities, preset.latent_dim, decoders=decoders)


def build_joint_guide(dataset: str, modalities, preset):
    """JNF's joint encoder: one head per modality (the dataset's encoder) merged by a 2×512 MLP, or concatenated."""
    from ..guides import JointGuide
    from ..nn import architectures

    heads = {m.name: architectures.encoder(dataset, m, preset.head_dim, **preset.arch_options()) for m in modalities}
    merge = (512, 512) if preset.joint_merge == "mlp" else ()
    return JointGuide(modalities, preset.latent_dim, head_dim=preset.head_dim, merge_hidden=merge, heads=heads)


def build_projectors(dataset: str, modalities, preset):
    """JNF-Shared's projectors g_j: the dataset's encoders onto ``projection_dim`` features."""
    from torch import nn

    from ..nn import architectures

    k = preset.projection_dim
    nets = {}
    for m in modalities:
        net = architectures.encoder(dataset, m, k, **preset.arch_options())
        net.out_dim = k
        nets[m.name] = net
    return nn.ModuleDict(nets)


def build_experts(dataset: str, modalities, preset, projectors=None, seed: int = 0):
    """Flow experts q_j(z | x_j) (``projectors=None``) or on frozen projections g_j(x_j) (JNF-Shared)."""
    from ..guides import FlowExpertGuide
    from ..nn import architectures

    d = preset.latent_dim
    if projectors is not None:
        return FlowExpertGuide(modalities, d, flow="maf", num_blocks=preset.flow_blocks, project=projectors, seed=seed)
    encoders = {m.name: architectures.encoder(dataset, m, 2 * d, **preset.arch_options()) for m in modalities}
    return FlowExpertGuide(modalities, d, flow="maf", num_blocks=preset.flow_blocks, encoders=encoders, seed=seed)


def build_aggregation_guide(name: str, dataset: str, modalities, preset):
    """The aggregation guide ``name`` with the dataset's unimodal encoders."""
    from .. import guides
    from ..nn import architectures

    d = preset.latent_dim
    poe_like = {"poe": guides.PoEGuide, "moe": guides.MoEGuide, "mopoe": guides.MoPoEGuide}  # mopoe: masked/mixture
    if name in poe_like:
        encoders = {m.name: architectures.encoder(dataset, m, 2 * d, **preset.arch_options()) for m in modalities}
        return poe_like[name](modalities, d, encoders=encoders)
    feature = max(2 * d, 64)
    encoders = {m.name: architectures.encoder(dataset, m, feature, **preset.arch_options()) for m in modalities}
    common = dict(feature_dim=feature, encoders=encoders)
    if name == "sumpooling":
        return guides.SumPoolingGuide(modalities, d, **common)
    if name == "selfattention":
        return guides.SelfAttentionGuide(modalities, d, **common)
    if name == "sumpooling-mixture":
        return guides.SumPoolingMixtureGuide(modalities, d, MIXTURE_COMPONENTS, **common)
    if name == "selfattention-mixture":
        return guides.SelfAttentionMixtureGuide(modalities, d, MIXTURE_COMPONENTS, **common)
    raise InputError(f"{name!r} is not an aggregation model; expected one of {list(AGGREGATION_MODELS)}")


def aggregation_objective(objective: str):
    """The masked objective ``L_S + L_\\S`` (``"masked"``, ``"auto"``) or the mixture bound, one particle, STL."""
    from ..infer.masked import MaskedELBO, MixtureELBO

    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; expected one of {list(OBJECTIVES)}")
    return (MixtureELBO if objective == "mixture" else MaskedELBO)(num_particles=1, stl=True)


def uses_own_objective(name: str, objective: str) -> bool:
    """Whether ``name`` trains with its paper's objective (a baseline with ``objective="auto"``)."""
    return name in BASELINE_MODELS and (objective == "auto" or name != "mopoe")


def build_main_stage(name: str, dataset: str, modalities, preset, objective: str = "auto"):
    """``(model, guide, loss)`` of the stage that trains the generative model (``joint`` or ``vae``)."""
    from ..infer.elbo import BetaELBO

    check_model(name)
    if name in JNF_MODELS:
        return build_model(dataset, modalities, preset), build_joint_guide(dataset, modalities, preset), BetaELBO()
    if uses_own_objective(name, objective):
        options = {"arch_options": preset.arch_options()}
        if name in MIXTURE_BASELINES:
            from .baselines_mixture import BUILDERS, MMVAEPLUS_LATENT_DIMS

            if name == "mmvaeplus":  # the published modality-specific size, else the shared one
                options["private_dim"] = MMVAEPLUS_LATENT_DIMS.get(dataset, (None, preset.latent_dim))[1]
            return BUILDERS[name](dataset, modalities, preset.latent_dim, **options)
        from .baselines_poe import build_baseline

        if name == "jmvae":
            options.update(beta=preset.beta, head_dim=preset.head_dim, joint_merge=preset.joint_merge)
        return build_baseline(name, dataset, modalities, preset.latent_dim, **options)
    guide = build_aggregation_guide(name, dataset, modalities, preset)
    return build_model(dataset, modalities, preset), guide, aggregation_objective(objective)


def latent_sampler(
    model_name: str, model, guide, experts=None, *, objective: str = "auto", mcmc_warmup: int = 300, seed: int = 0
):
    """The trained model's "z given S" (:class:`~pyro_mmvae.infer.LatentSampler`).

    JNF models (with ``experts``): expert / joint encoder / subset posterior by BatchedHMC (improper
    subset posteriors are reported and their rows skipped with a warning); the baselines: each one's own
    rule (e.g. JMVAE's closed-form product of Gaussian experts, MMVAE's mixture of the experts of S);
    ``joint`` alone and the aggregation models: the guide's own posterior of the subset.
    """
    from ..infer.conditional import GuideLatents, JNFLatents

    if model_name in ("jnf", "jnf-shared"):
        return JNFLatents(
            model.names, guide, experts, model.prior_dist(), mcmc_warmup=mcmc_warmup, seed=seed, improper="warn"
        )
    if uses_own_objective(model_name, objective):
        if model_name in MIXTURE_BASELINES:
            from .baselines_mixture import latent_sampler as mixture_sampler

            return mixture_sampler(model_name, model, guide)
        from .baselines_poe import latent_sampler as poe_sampler

        return poe_sampler(model_name, model, guide)
    return GuideLatents(guide)
