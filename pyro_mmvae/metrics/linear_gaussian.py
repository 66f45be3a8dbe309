"""The linear-Gaussian evaluation: a learned model's exact log-likelihood against the MLE's.

Used for the linear experiments of "Learning multi-modal generative models with
permutation-invariant encoders and tighter variational objectives" (Tables 1-2): the learned
model's exact log-likelihood log N(x; b̂, ŴŴᵀ + σ²I), read from its affine decoders by
:func:`linear_decoder_model`, the maximum-likelihood solution of probabilistic PCA
(:func:`~pyro_mmvae.data.linear_gaussian.ppca_mle`), and the relative gap
(ℓ_MLE − ℓ_learned) / |ℓ_MLE| (:func:`relative_llh_gap`). Computations run in float64; results
are returned in float64.

The closed forms themselves (:class:`~pyro_mmvae.data.linear_gaussian.LinearGaussian`,
``gaussian_log_prob``, ``gaussian_mle``, ``ppca_mle``) live in :mod:`pyro_mmvae.data.linear_gaussian`
and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..data.linear_gaussian import LinearGaussian, gaussian_log_prob, gaussian_mle, ppca_mle

__all__ = [
    "LinearGaussian",
    "gaussian_log_prob",
    "gaussian_mle",
    "ppca_mle",
    "relative_llh_gap",
    "affine_params",
    "linear_decoder_model",
    "stack_modalities",
]


def relative_llh_gap(ll_mle: float | torch.Tensor, ll_model: float | torch.Tensor) -> float:
    """(ℓ_MLE − ℓ_model) / |ℓ_MLE| for summed log-likelihoods (tensors are summed first)."""
    ll_mle = float(torch.as_tensor(ll_mle, dtype=torch.float64).sum())
    ll_model = float(torch.as_tensor(ll_model, dtype=torch.float64).sum())
    if ll_mle == 0:
        raise ValueError("the MLE log-likelihood is 0: the relative gap is undefined")
    return (ll_mle - ll_model) / abs(ll_mle)


# ---------------------------------------------------------------------------------------------- learned models
def affine_params(fn: Callable[[torch.Tensor], torch.Tensor], in_dim: int, rtol: float = 1e-4, dtype=None, device=None):
    """Read (A, c) of an affine map ``fn(z (*, in_dim)) -> (*, *out)`` by probing; raise if it is not affine.

    Returns A ``(out_numel, in_dim)`` and c ``(out_numel,)`` in float64, with outputs flattened.
    """
    with torch.no_grad():
        eye = torch.eye(in_dim, dtype=dtype, device=device)
        zero = torch.zeros(1, in_dim, dtype=dtype, device=device)
        c = fn(zero).reshape(1, -1).double()
        cols = fn(eye).reshape(in_dim, -1).double() - c
        A = cols.T.contiguous()
        g = torch.Generator().manual_seed(0)
        probe = torch.randn(8, in_dim, generator=g, dtype=torch.float64)
        got = fn(probe.to(dtype=dtype or torch.get_default_dtype(), device=device)).reshape(8, -1).double()
        want = probe.to(got.device) @ A.T + c
        err = (got - want).abs().max().item()
        tol = rtol * (1.0 + got.abs().max().item())
        if not err <= tol:
            raise ValueError(f"the map is not affine in its input (max deviation {err:.3g} > tolerance {tol:.3g})")
    return A.cpu(), c.reshape(-1).cpu()


def linear_decoder_model(model, names: Iterable[str] | None = None, rtol: float = 1e-4) -> LinearGaussian:
    """The linear-Gaussian model of a learned VAE whose decoders are affine with Normal likelihoods.

    ``model`` must offer ``latent_dim`` (D) and ``likelihood_dist(name, z)`` (as ``MultimodalVAE`` does);
    modalities (default ``model.names``) are stacked in order, each flattened. Raises if a decoder is
    not affine or a likelihood is not Normal with a latent-independent scale.

    Models with private latents (a ``private_dim`` D̃ and ``likelihood_dist(name, z, w)`` reading the
    shared z ``(*, D)`` and modality ``name``'s private w ``(*, D̃)``, as
    :class:`~pyro_mmvae.models.private.PrivateLatentVAE` does): the returned model's latent is
    (z′, z̃_{names[0]}, …, z̃_{names[K-1]}) of size D + K·D̃ with K = len(names), every block N(0, I);
    modality s loads z′ and its own block only, so ``W`` is ``(Dx, D + K·D̃)`` with zeros outside them.
    """
    names = list(model.names if names is None else names)
    d = int(model.latent_dim)
    dp = int(getattr(model, "private_dim", 0) or 0)
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else None

    def dist_at(name: str, zw: torch.Tensor):
        """p(x_name | ·) at the decoder input ``zw (*, D + D̃)`` (``(*, D)`` without private latents)."""
        return model.likelihood_dist(name, zw[..., :d], zw[..., d:]) if dp else model.likelihood_dist(name, zw)

    def variance_at(name: str, zw: torch.Tensor) -> torch.Tensor:
        """Observation variances ``(rows, numel)`` in float64, squared from the Normal's own scale."""
        with torch.no_grad():
            lik = dist_at(name, zw.to(dtype=dtype, device=device))
        base = getattr(lik, "base_dist", lik)
        if type(base).__name__ != "Normal":
            raise ValueError(f"modality {name!r}: an analytic log-likelihood needs a Normal likelihood, got {base}")
        return base.scale.double().pow(2).reshape(zw.shape[0], -1)

    in_dim = d + dp
    probe = torch.randn(3, in_dim, generator=torch.Generator().manual_seed(1))
    Ws, bs, vs = [], [], []
    for j, name in enumerate(names):
        var = variance_at(name, torch.zeros(2, in_dim))
        try:
            A, c = affine_params(lambda zw, name=name: dist_at(name, zw).mean, in_dim, rtol, dtype, device)
        except ValueError as err:
            raise ValueError(f"modality {name!r}: decoder is not affine ({err})") from None
        var2 = variance_at(name, probe)
        if not torch.allclose(var2, var[:1].expand_as(var2)):
            raise ValueError(f"modality {name!r}: the observation variance depends on z; no analytic likelihood")
        if dp:  # place the private columns on modality j's own block of the stacked latent
            W = A.new_zeros(A.shape[0], d + len(names) * dp)
            W[:, :d], W[:, d + j * dp : d + (j + 1) * dp] = A[:, :d], A[:, d:]
            A = W
        Ws.append(A)
        bs.append(c)
        vs.append(var[0].cpu())
    return LinearGaussian(torch.cat(Ws), torch.cat(bs), torch.cat(vs))


def stack_modalities(batch_or_data, names: Iterable[str]) -> torch.Tensor:
    """Concatenate modality tensors ``(N, *shape)`` (flattened) in ``names`` order → ``(N, Dx)`` float64."""
    data = getattr(batch_or_data, "data", batch_or_data)
    return torch.cat([data[n].reshape(data[n].shape[0], -1).double() for n in names], -1)
