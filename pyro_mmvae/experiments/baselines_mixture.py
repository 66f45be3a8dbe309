"""The mixture-of-experts baselines MMVAE and MMVAE+ as ``(model, guide, objective)`` from a dataset's networks.

Each builder takes a dataset name of :mod:`pyro_mmvae.nn.architectures` (``"toy"``, ``"polymnist"``,
``"mnist-svhn"``, ...), the modalities (:class:`~pyro_mmvae.data.Modality` objects or names of the
dataset's modalities) and the latent size, and wires the published encoders and decoders into the
library's pieces:

============  =========================================  ==============================  ==========================
model         generative model                           guide                           objective
============  =========================================  ==============================  ==========================
MMVAE         :class:`~pyro_mmvae.models.MultimodalVAE`   :class:`~pyro_mmvae.guides.     :class:`~pyro_mmvae.infer.
              with a Laplace (or Normal) prior            laplace_moe.LaplaceMoEGuide`    mmvae.MMVAEELBO`
MMVAE+        :class:`~pyro_mmvae.models.mmvaeplus.       :class:`~pyro_mmvae.guides.     :class:`~pyro_mmvae.infer.
              MMVAEPlus`                                  mmvaeplus.MMVAEPlusGuide`       mmvaeplus.MMVAEPlusELBO`
============  =========================================  ==============================  ==========================

Defaults, with their sources:

- K = 10 particles per modality, DReG gradients: the JNF paper ("Bridging the inference gap in
  Multimodal Variational Autoencoders"), Appendix E ("we set K=10 for the number of samples in the
  ELBO", every dataset); DReG as in both authors' code (``--obj dreg``);
- the stratified bound: MMVAE's ``--looser`` objective, used for its published results (README of
  iffsid/mmvae), the only one in MMVAE+'s code;
- Laplace prior and posterior (``family="laplace"``): JNF Appendix E.1 for MNIST-SVHN ("following
  [MMVAE]"), MMVAE+'s code default for PolyMNIST; Gaussian for MHD (JNF Appendix E.4: "Gaussian
  distributions to model all posterior, prior and decoding distributions");
- latent sizes (:data:`MMVAE_LATENT_DIMS`, :data:`MMVAEPLUS_LATENT_DIMS`): JNF Appendix E — MMVAE 20
  (MNIST-SVHN, Table 6), 64 (PolyMNIST, E.2), 100 (Translated PolyMNIST, E.3), 64 (MHD, E.4); MMVAE+
  10 + 10 (MNIST-SVHN, E.1) and 32 + 32 elsewhere (E.2-E.4, as MMVAE+'s PolyMNIST runs);
- encoder scales ``softmax(ℓ)·D + eta`` (eta 1e-6 MMVAE, 1e-20 MMVAE+) and MMVAE's learned prior
  scale (``--learn-prior``, "Results in our paper are produced with this enabled"): the authors' code.

β is the trainer's (``fit(..., beta=...)``); MMVAE+'s PolyMNIST script uses β = 2.5.

"z given S" (:func:`latent_sampler_mmvae`, :func:`latent_sampler_mmvaeplus`): for both models a draw
from the guide's mixture over the experts of S (pick s ∈ S uniformly, draw from q(z | x_s)).
MMVAE+ decodes modality n from (z, w_n):
:meth:`~pyro_mmvae.models.mmvaeplus.MMVAEPlus.reconstruct` ``(z, names)`` draws each w_n it is not
given from the prior p(w_n) (the authors' test-time rule; ``private_source="auxiliary"`` draws from
r_n), so :func:`~pyro_mmvae.infer.conditional.conditional_decoder` works unchanged;
:func:`conditional_generator` also uses q(w_n | x_n) for targets inside S (self-reconstruction).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..data.batch import MultimodalBatch
from ..data.modality import Modality
from ..errors import InputError, InputTypeError

K_PARTICLES = 10
"""JNF paper, Appendix E: K = 10 for MMVAE and MMVAE+ on every dataset."""

MMVAE_LATENT_DIMS = {"mnist-svhn": 20, "polymnist": 64, "translated-polymnist": 100, "mhd": 64}
"""JNF paper, Appendix E: MMVAE's latent size per dataset (Table 6, E.2, E.3, E.4)."""

MMVAEPLUS_LATENT_DIMS = {
    "mnist-svhn": (10, 10),
    "polymnist": (32, 32),
    "translated-polymnist": (32, 32),
    "mhd": (32, 32),
}
"""JNF paper, Appendix E: MMVAE+'s (shared, modality-specific) latent sizes per dataset."""

GAUSSIAN_DATASETS = ("mhd",)
"""JNF paper, Appendix E.4: Gaussian priors and posteriors on MHD; Laplace elsewhere."""

MODELS = ("mmvae", "mmvaeplus")


def _modalities(dataset: str, modalities: Iterable[Modality | str]) -> list[Modality]:
    from ..nn import architectures

    known = None
    out = []
    for m in modalities:
        if isinstance(m, str):
            known = known or {k.name: k for k in architectures.dataset_modalities(dataset)}
            if m not in known:
                raise InputError(f"dataset {dataset!r} has no modality {m!r}; expected one of {list(known)}")
            m = known[m]
        elif not isinstance(m, Modality):
            raise InputTypeError(f"modalities must be Modality objects or names, got {type(m).__name__}")
        out.append(m)
    if not out:
        raise InputError("build a mixture baseline over at least one modality (modalities is empty)")
    return out


def _latent_dim(dataset: str, latent_dim, table: dict, what: str):
    if latent_dim is not None:
        return latent_dim
    if dataset not in table:
        raise InputError(f"no published {what} for dataset {dataset!r} (known: {sorted(table)}); pass latent_dim")
    return table[dataset]


def default_family(dataset: str) -> str:
    """``"normal"`` for the datasets where the JNF paper uses Gaussian latents (MHD), else ``"laplace"``."""
    return "normal" if dataset in GAUSSIAN_DATASETS else "laplace"


def build_mmvae(
    dataset: str,
    modalities: Iterable[Modality | str],
    latent_dim: int | None = None,
    *,
    family: str | None = None,
    num_particles: int = K_PARTICLES,
    dreg: bool = True,
    bound: str = "stratified",
    learn_prior: bool = True,
    scale: str = "softmax",
    arch_options=None,
):
    """MMVAE: ``(model, guide, objective)`` with the dataset's encoders ``→ 2D`` and decoders ``D →``.

    Args:
        dataset, modalities: see the module docstring.
        latent_dim: D (default: :data:`MMVAE_LATENT_DIMS` of the dataset).
        family: ``"laplace"`` / ``"normal"`` prior and experts (default: :func:`default_family`).
        num_particles, dreg, bound: of :class:`~pyro_mmvae.infer.mmvae.MMVAEELBO`.
        learn_prior: learn the prior's scale ``softmax(ℓ)·D`` (MMVAE's ``--learn-prior``).
        scale: the experts' positive map (:class:`~pyro_mmvae.guides.laplace_moe.ExpertScale`).
        arch_options: keyword options of the dataset's networks (e.g. ``{"base_channels": 16}``).
    """
    from ..distributions.laplace import SoftmaxScalePrior
    from ..distributions.likelihoods import Likelihood
    from ..guides.laplace_moe import LaplaceMoEGuide
    from ..infer.mmvae import MMVAEELBO
    from ..models import MultimodalVAE
    from ..nn import architectures

    mods = _modalities(dataset, modalities)
    d = _latent_dim(dataset, latent_dim, MMVAE_LATENT_DIMS, "MMVAE latent size")
    family = default_family(dataset) if family is None else family
    decoders = {
        m.name: architectures.decoder(dataset, m, d, Likelihood(m).param_shape, **dict(arch_options or {}))
        for m in mods
    }
    model = MultimodalVAE(mods, d, prior=SoftmaxScalePrior(d, family, learn=learn_prior), decoders=decoders)
    encoders = {m.name: architectures.encoder(dataset, m, 2 * d, **dict(arch_options or {})) for m in mods}
    guide = LaplaceMoEGuide(mods, d, encoders=encoders, family=family, scale=scale)
    return model, guide, MMVAEELBO(num_particles, dreg=dreg, bound=bound)


def build_mmvaeplus(
    dataset: str,
    modalities: Iterable[Modality | str],
    latent_dim: int | None = None,
    private_dim: int | None = None,
    *,
    family: str | None = None,
    num_particles: int = K_PARTICLES,
    dreg: bool = True,
    bound: str = "stratified",
    learn_auxiliary: bool = True,
    private_source: str = "prior",
    scale: str = "softmax",
    arch_options=None,
):
    """MMVAE+: ``(model, guide, objective)``; two encoders per modality (``→ 2D`` shared, ``→ 2D̃`` private).

    Args:
        dataset, modalities: see the module docstring.
        latent_dim, private_dim: D and D̃ (default: :data:`MMVAEPLUS_LATENT_DIMS` of the dataset).
        family: ``"laplace"`` / ``"normal"`` (default: :func:`default_family`).
        num_particles, dreg, bound: of :class:`~pyro_mmvae.infer.mmvaeplus.MMVAEPlusELBO`.
        learn_auxiliary: learn the auxiliary priors' scales (the authors do).
        private_source: where ``model.reconstruct`` draws missing private latents (``"prior"``/``"auxiliary"``).
        scale: the experts' positive map.
        arch_options: keyword options of the dataset's networks (e.g. ``{"base_channels": 16}``).
    """
    from ..distributions.likelihoods import Likelihood
    from ..guides.mmvaeplus import MMVAEPlusGuide
    from ..infer.mmvaeplus import MMVAEPlusELBO
    from ..models.mmvaeplus import MMVAEPlus
    from ..nn import architectures

    mods = _modalities(dataset, modalities)
    if latent_dim is None or private_dim is None:
        d0, p0 = _latent_dim(dataset, None, MMVAEPLUS_LATENT_DIMS, "MMVAE+ latent sizes")
        latent_dim = d0 if latent_dim is None else latent_dim
        private_dim = p0 if private_dim is None else private_dim
    d, p = latent_dim, private_dim
    family = default_family(dataset) if family is None else family
    decoders = {
        m.name: architectures.decoder(dataset, m, d + p, Likelihood(m).param_shape, **dict(arch_options or {}))
        for m in mods
    }
    model = MMVAEPlus(
        mods, d, p, family, decoders=decoders, learn_auxiliary=learn_auxiliary, private_source=private_source
    )
    shared = {m.name: architectures.encoder(dataset, m, 2 * d, **dict(arch_options or {})) for m in mods}
    private = {m.name: architectures.encoder(dataset, m, 2 * p, **dict(arch_options or {})) for m in mods}
    guide = MMVAEPlusGuide(mods, d, p, shared_encoders=shared, private_encoders=private, family=family, scale=scale)
    return model, guide, MMVAEPlusELBO(num_particles, dreg=dreg, bound=bound)


BUILDERS = {"mmvae": build_mmvae, "mmvaeplus": build_mmvaeplus}


def latent_sampler_mmvae(model, guide):
    """MMVAE's "z given S" (:class:`~pyro_mmvae.infer.LatentSampler`): a draw from the mixture of the experts
    of S (the guide's own ``posterior``), ``(num_samples, B, D)``."""
    from ..infer.conditional import GuideLatents

    return GuideLatents(guide)


def latent_sampler_mmvaeplus(model, guide):
    """MMVAE+'s "z given S": the shared latent from the mixture of the experts of S, ``(num_samples, B, D)``;
    ``model.reconstruct(z, names)`` supplies the private latents when decoding (module docstring)."""
    from ..infer.conditional import GuideLatents

    return GuideLatents(guide)


def latent_sampler(model_name: str, model, guide):
    """:func:`latent_sampler_mmvae` or :func:`latent_sampler_mmvaeplus` by name (``"mmvae"``, ``"mmvaeplus"``)."""
    samplers = {"mmvae": latent_sampler_mmvae, "mmvaeplus": latent_sampler_mmvaeplus}
    if model_name not in samplers:
        raise InputError(f"unknown mixture baseline {model_name!r}; expected one of {list(samplers)}")
    return samplers[model_name](model, guide)


def conditional_generator(model, guide):
    """``generate(batch, given, targets) -> {target: (B, *shape)}`` for MMVAE+ (the form coherence takes).

    One z per row from the mixture over the experts of ``given``; a target inside ``given`` is decoded
    with w from its posterior q(w | x), any other with w from the model's ``private_source``.
    """

    @torch.no_grad()
    def generate(batch: MultimodalBatch, given: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
        given, targets = list(given), list(targets)
        z = guide.posterior(batch, given).sample()
        inside = [t for t in targets if t in given]
        private = guide.private_posterior(batch, given, z) if inside else {}
        w = {t: private[t].sample() for t in inside}
        return model.reconstruct(z, targets, w)

    return generate
