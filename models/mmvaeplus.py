"""``MMVAEPlus``: the generative model of MMVAE+, p(z) Π_s p(w_s) p(x_s | z, w_s), and its auxiliary priors.

MMVAE+ ("MMVAE+: Enhancing the generative quality of multimodal VAEs without compromises", Palumbo
et al. 2023). Site names as in :class:`~pyro_mmvae.models.private.PrivateLatentVAE`: shared latent
``"z"`` (event ``(D,)``), a private latent ``"w_<s>"`` (event ``(D̃,)``) per modality, sampled for
every modality present or not, observations ``"x_<s>"`` masked by presence, decoders reading
``[z, w_s]``, latent sites under ``poutine.scale(β)``.

Distributions (the authors' code, srl-ethz/mmvaeplus, PolyMNIST; ``family="laplace"`` is their
default ``--priorposterior``):

- p(z) = family(0, softmax(0)·D + 1e-20) = family(0, 1), fixed (``_pz_params``, ``requires_grad=False``);
- p(w_s) = family(0, 1), fixed (``_pw_params``);
- the auxiliary priors r_s(w_s) = family(0, softmax(ℓ_s)·D̃ + 1e-20) with ℓ_s LEARNED, initialised
  at 0 (``_pw_params_aux``: "It is important that this log-variance vector is learnable"). The
  objective decodes modality s from the shared latent of another modality with w_s ~ r_s (it does
  not enter the importance weights); see :class:`~pyro_mmvae.infer.mmvaeplus.MMVAEPlusELBO`.
  For ``family="normal"`` the same softmax scale is used, so r_s = p(w_s) at initialisation in
  both families (the authors' Normal variant uses softplus scales, 0.693 at ℓ = 0, for p as well).

Decoding an unobserved modality needs its w_s as well as z. :meth:`MMVAEPlus.reconstruct` takes the
``z``-only form every conditional-generation entry point uses (``reconstruct(z, names)``, see
:func:`~pyro_mmvae.infer.conditional.conditional_decoder`) and draws each missing w_s itself: from
the prior p(w_s) (``private="prior"``, default: the authors' test-time rule in
``self_and_cross_modal_generation_forward`` and ``generate_unconditional``) or from the auxiliary
r_s (``private="auxiliary"``: the training-time cross-reconstruction rule, and MultiVae's
``encode``). Given private latents ``w={s: (*lead, D̃)}`` are used as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..data.modality import Modality
from ..distributions.laplace import SoftmaxScalePrior, check_family, diagonal
from ..sites import private_site
from .private import PrivateLatentVAE

MMVAEPLUS_ETA = 1e-20
"""The authors' ``Constants.eta`` (srl-ethz/mmvaeplus ``src/utils.py``), added to every softmax scale."""

PRIVATE_SOURCES = ("prior", "auxiliary")


class MMVAEPlus(PrivateLatentVAE):
    """Shared latent z ∈ R^D, private w_s ∈ R^D̃ per modality, Laplace (or Gaussian) priors, auxiliary r_s.

    Args:
        modalities: the modalities.
        latent_dim: D, the shared latent (site ``"z"``).
        private_dim: D̃, every private latent (sites ``"w_<s>"``).
        family: ``"laplace"`` (default, the authors') or ``"normal"``.
        decoders: optional name → module ``(*lead, D + D̃) → (*lead, *param_shape)`` reading ``[z, w_s]``.
        hidden, arch: of the default decoders.
        learn_auxiliary: learn the scales of the auxiliary priors r_s (the authors do).
        private_source: where :meth:`reconstruct` draws the private latents it is not given:
            ``"prior"`` (p(w_s), default) or ``"auxiliary"`` (r_s).
    """

    def __init__(
        self,
        modalities: Iterable[Modality],
        latent_dim: int,
        private_dim: int,
        family: str = "laplace",
        decoders: Mapping[str, nn.Module] | None = None,
        hidden=(512, 512),
        arch: str = "mlp",
        learn_auxiliary: bool = True,
        private_source: str = "prior",
    ):
        family = check_family(family)
        if private_source not in PRIVATE_SOURCES:
            raise ValueError(f"private_source must be one of {PRIVATE_SOURCES}, got {private_source!r}")
        prior = SoftmaxScalePrior(int(latent_dim), family, learn=False, eta=MMVAEPLUS_ETA)
        super().__init__(modalities, latent_dim, private_dim, prior=prior, decoders=decoders, hidden=hidden, arch=arch)
        self.family, self.private_source = family, private_source
        self.private_prior = SoftmaxScalePrior(self.private_dim, family, learn=False, eta=MMVAEPLUS_ETA)
        self.auxiliary = nn.ModuleDict(
            {
                n: SoftmaxScalePrior(self.private_dim, family, learn=learn_auxiliary, eta=MMVAEPLUS_ETA)
                for n in self.names
            }
        )

    # ------------------------------------------------------------------ distributions
    def private_prior_dist(self, z: torch.Tensor):
        """p(w_s) = family(0, 1) for ``z (*lead, D)``: batch ``lead``, event ``(D̃,)`` (independent of z)."""
        prior = self.private_prior
        return diagonal(self.family, prior.loc, prior.scale()).expand(z.shape[:-1])

    def auxiliary_dist(self, name: str):
        """r_name(w): batch ``()``, event ``(D̃,)``."""
        if name not in self.modalities:
            raise KeyError(f"unknown modality {name!r}; this model has {self.names}")
        return self.auxiliary[name]()

    def draw_private(self, name: str, lead: torch.Size, private: str | None = None) -> torch.Tensor:
        """w_name ``(*lead, D̃)`` from p(w_name) (``"prior"``) or r_name (``"auxiliary"``, with pathwise gradients).

        ``private=None`` takes the model's ``private_source``.
        """
        private = self.private_source if private is None else private
        if private not in PRIVATE_SOURCES:
            raise ValueError(f"private must be one of {PRIVATE_SOURCES}, got {private!r}")
        source = self.auxiliary_dist(name) if private == "auxiliary" else self.private_prior()
        return source.rsample(torch.Size(lead))

    def reconstruct(self, z: torch.Tensor, names=None, w: Mapping[str, torch.Tensor] | None = None, private=None):
        """Decoded means ``name -> (*lead, *shape)`` at ``z (*lead, D)``.

        ``w`` (optional) maps names to private latents ``(*lead, D̃)``; every other requested modality
        gets a fresh w from the prior (``private="prior"``) or its auxiliary prior (``"auxiliary"``);
        ``private=None`` takes the model's ``private_source``.
        ``reconstruct(z, w_mapping)`` (the parent's positional order) is accepted too.
        """
        if isinstance(names, Mapping):  # PrivateLatentVAE.reconstruct(z, w, names) order
            names, w = w, names
        names = self.names if names is None else list(names)
        given = dict(w or {})
        latents = {n: given[n] if n in given else self.draw_private(n, z.shape[:-1], private) for n in names}
        return super().reconstruct(z, latents, names)

    @torch.no_grad()
    def sample_joint(self, num_samples: int) -> dict[str, torch.Tensor]:
        """Unconditional generation: ``{"z": (N, D), "w_<s>": (N, D̃), s: decoded mean (N, *shape)}`` from the priors."""
        z = self.sample_prior(num_samples)
        w = {n: self.draw_private(n, z.shape[:-1], "prior") for n in self.names}
        out = {"z": z, **{private_site(n): v for n, v in w.items()}}
        out.update(self.reconstruct(z, self.names, w))
        return out
