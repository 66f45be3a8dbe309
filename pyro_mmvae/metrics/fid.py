"""Fréchet distances between feature Gaussians: FID over images and MFD over any modality.

- :func:`frechet_distance`: ``‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½}`` in float64, with
  symmetric eigendecompositions only (no complex numbers; see the function for why this equals the
  usual ``tr (Σ₁Σ₂)^{½}``).
- :func:`feature_statistics`: mean ``(F,)`` and covariance ``(F, F)`` (float64, unbiased) of features
  ``(N, F)``; :class:`FeatureMoments` accumulates them batch by batch.
- :func:`fid`: the distance between the feature statistics of real and generated images, over a
  pluggable feature extractor, any callable ``(N, C, H, W) -> (N, F)``.
- :class:`InceptionFeatures`: the standard Inception-v3 2048-d pool features, from weights given as a
  path or downloaded on request; never untrained weights (:class:`InceptionWeightsError` instead).
- :func:`mfd`: per-modality Fréchet distances over per-modality feature networks (e.g. the
  ``features`` of a :class:`~pyro_mmvae.metrics.Classifier` trained by ``train_classifier``), and their mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, InputTypeError, check_int
from ..utils import resolve_device
from .classifiers import load_network_state

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
INCEPTION_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"  # torchvision IMAGENET1K_V1


def _as_float64(x, name: str, ndim: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{name} must be a tensor or numpy array, got {type(x).__name__}")
    x = x.detach().to("cpu", torch.float64)
    if x.dim() != ndim:
        raise InputError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} has non-finite entries")
    return x


def _drop_rounding(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix with those below its rounding level (F · eps · max |λ|) set to 0.

    Their computed values are noise of either sign; square roots would amplify that noise from
    eps to √eps (e.g. an FID of -1e-3 between a 2048-d feature set of 100 images and itself).
    """
    tol = w.shape[0] * torch.finfo(w.dtype).eps * w.abs().max()
    return torch.where(w > tol, w, torch.zeros_like(w))


def _psd_eigh(cov: torch.Tensor, name: str):
    """Eigen-decomposition of a symmetric positive semi-definite matrix, rounding-level eigenvalues set to 0."""
    scale = cov.abs().max().item() or 1.0
    asym = (cov - cov.T).abs().max().item()
    if asym > 1e-6 * scale:
        raise InputError(f"{name} is not symmetric (max |Σ - Σᵀ| = {asym:.3g})")
    w, v = torch.linalg.eigh(0.5 * (cov + cov.T))
    if w.min().item() < -1e-6 * scale:  # far below rounding: not a covariance
        raise InputError(f"{name} is not positive semi-definite (smallest eigenvalue {w.min().item():.3g})")
    return _drop_rounding(w), v


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (2-Wasserstein) distance² between N(mu1, cov1) and N(mu2, cov2), in float64.

    Args:
        mu1, mu2: means ``(F,)``; cov1, cov2: covariances ``(F, F)`` (tensors or numpy arrays).

    ``tr (Σ₁Σ₂)^{½}`` is computed as ``tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½}``: Σ₁Σ₂ is similar to the symmetric
    PSD matrix ``S = Σ₁^{½} Σ₂ Σ₁^{½}``, so both square roots have the same eigenvalues √λ(S). Two
    symmetric eigendecompositions, with eigenvalues below the rounding level ``F · eps · max λ``
    (tiny negative ones included) set to 0, keep singular and near-singular covariances (fewer
    samples than features) finite and accurate. The result itself is not clipped: identical inputs
    give a rounding-level number (|d| ≲ 1e-12 · tr Σ), possibly a tiny negative one.
    """
    mu1, mu2 = _as_float64(mu1, "mu1", 1), _as_float64(mu2, "mu2", 1)
    cov1, cov2 = _as_float64(cov1, "cov1", 2), _as_float64(cov2, "cov2", 2)
    f = mu1.shape[0]
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        if c.shape != (f, f):
            raise InputError(f"{name} must be ({f}, {f}) to match the means, got {tuple(c.shape)}")
    if mu2.shape != (f,):
        raise InputError(f"mu2 must be ({f},) like mu1, got {tuple(mu2.shape)}")
    w1, v1 = _psd_eigh(cov1, "cov1")
    _psd_eigh(cov2, "cov2")  # checks cov2 the same way
    sqrt1 = (v1 * w1.sqrt()) @ v1.T
    s = sqrt1 @ cov2 @ sqrt1
    ws = _drop_rounding(torch.linalg.eigvalsh(0.5 * (s + s.T)))
    diff = mu1 - mu2
    return float(diff @ diff + cov1.trace() + cov2.trace() - 2.0 * ws.sqrt().sum())


class FeatureMoments:
    """Running mean and covariance of feature rows ``(n, F)``, merged batch by batch in float64.

    Each batch contributes its own mean and centred scatter matrix (Chan et al.'s pairwise update),
    which avoids the cancellation of accumulating raw sums of squares.
    """

    def __init__(self):
        self.n, self.mean_, self.scatter = 0, None, None

    def update(self, features: torch.Tensor) -> FeatureMoments:
        x = _as_float64(features, "features", 2)
        n_b = x.shape[0]
        if n_b == 0:
            return self
        mean_b = x.mean(0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        if self.n == 0:
            self.n, self.mean_, self.scatter = n_b, mean_b, scatter_b
            return self
        if x.shape[1] != self.mean_.shape[0]:
            raise InputError(f"features have {x.shape[1]} columns, earlier batches had {self.mean_.shape[0]}")
        n = self.n + n_b
        delta = mean_b - self.mean_
        self.scatter = self.scatter + scatter_b + torch.outer(delta, delta) * (self.n * n_b / n)
        self.mean_ = self.mean_ + delta * (n_b / n)
        self.n = n
        return self

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (F,), covariance (F, F))``, the covariance with the unbiased 1/(n − 1)."""
        if self.n < 2:
            raise InputError(f"feature statistics need at least 2 rows, got {self.n}")
        return self.mean_, self.scatter / (self.n - 1)


def feature_statistics(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(F,)`` and unbiased covariance ``(F, F)`` (float64) of ``features (N, F)``, N ≥ 2."""
    return FeatureMoments().update(features).statistics()


def _chunks(data, batch_size: int) -> Iterable[torch.Tensor]:
    """Row chunks of a tensor, or the tensors of an iterable (e.g. batches generated on the fly)."""
    if isinstance(data, torch.Tensor):
        return (data[i : i + batch_size] for i in range(0, len(data), batch_size))
    if isinstance(data, np.ndarray):
        raise InputTypeError("images must be torch tensors (convert with torch.as_tensor), got a numpy array")
    return iter(data)


@torch.no_grad()
def extract_statistics(data, extractor: FeatureExtractor, batch_size: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature mean and covariance of ``data`` (a tensor ``(N, ...)`` or an iterable of such batches)."""
    batch_size = check_int(batch_size, "batch_size", 1)
    moments = FeatureMoments()
    for chunk in _chunks(data, batch_size):
        feats = extractor(chunk)
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] != chunk.shape[0]:
            got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise InputError(f"the feature extractor must return ({chunk.shape[0]}, F) for a chunk, got {got}")
        moments.update(feats)
    return moments.statistics()


def fid(real, generated, extractor: FeatureExtractor, batch_size: int = 200) -> float:
    """Fréchet distance between the extractor's features of ``real`` and of ``generated``.

    Args:
        real, generated: images ``(N, C, H, W)`` (tensors, or iterables of batches).
        extractor: ``(n, C, H, W) -> (n, F)``, e.g. :class:`InceptionFeatures` (the standard FID) or a
            classifier's ``features``. Numbers are comparable only under the same extractor and weights.
        batch_size: rows per extractor call when the data are tensors.
    """
    mu1, cov1 = extract_statistics(real, extractor, batch_size)
    mu2, cov2 = extract_statistics(generated, extractor, batch_size)
    return frechet_distance(mu1, cov1, mu2, cov2)


def mfd(real: Mapping, generated: Mapping, feature_nets: Mapping, batch_size: int = 200) -> dict:
    """Per-modality Fréchet distances over per-modality feature networks, and their mean.

    Args:
        real, generated: ``{modality: (N, *shape)}`` (tensors, or iterables of batches).
        feature_nets: ``{modality: extractor}``: a callable ``(n, *shape) -> (n, F)`` or anything with a
            ``features`` method (a trained :class:`~pyro_mmvae.metrics.Classifier`).

    Returns:
        ``{"per_modality": {modality: distance}, "mean": mean over the modalities}``.
    """
    names = list(feature_nets)
    for what, d in (("real", real), ("generated", generated)):
        lacking = [n for n in names if n not in d]
        if lacking:
            raise InputError(f"mfd: {what} data lack the modalities {lacking} that have feature networks")
    per = {}
    for name in names:
        net = feature_nets[name]
        extractor = net.features if hasattr(net, "features") and callable(net.features) else net
        per[name] = fid(real[name], generated[name], extractor, batch_size)
    return {"per_modality": per, "mean": sum(per.values()) / len(per) if per else float("nan")}


# ------------------------------------------------------------------------------------------- Inception
class InceptionWeightsError(InputError):
    """No usable Inception-v3 weights: none given, a missing or wrong file, or a failed download."""


class InceptionFeatures:
    """The standard Inception-v3 pool features ``(N, C, H, W) -> (N, 2048)`` for FID.

    The network is torchvision's ``inception_v3`` with its ``IMAGENET1K_V1`` weights (the file
    ``inception_v3_google-0cc3c7bd.pth``), read from ``weights`` (a path) or downloaded by torch.hub
    when ``weights="download"``. Without weights it raises :class:`InceptionWeightsError`: untrained
    features would give meaningless numbers.

    These weights are a port of Google's original TF Inception-v3 checkpoint, but the FID of
    pytorch-fid (and TTUR, used by most papers) runs the 2015 TF "FID Inception" graph, whose weights
    and a few pooling layers differ; that file (1008 classes) is rejected here. Its FIDs and ours
    differ by a few percent: numbers are comparable only when computed with the same weights.
    Use pytorch-fid's own network as the extractor (any callable) to reproduce published FIDs.

    Inputs are images in [0, 1]: grey images (C = 1) are replicated to 3 channels, every image is
    resized to 299×299 (bilinear) and scaled to [-1, 1], the input scaling of these weights (what
    torchvision's ``transform_input`` produces from ImageNet-normalised input).

    Args:
        weights: a path to the state dict, or ``"download"``.
        device: where the network runs; batch_size: images per forward pass.
    """

    def __init__(self, weights=None, device="cpu", batch_size: int = 50, progress: bool = True):
        from torchvision.models.inception import Inception3

        state = self._state_dict(weights, progress)
        net = Inception3(num_classes=1000, aux_logits=True, transform_input=False, init_weights=False)
        self._check_and_load(net, state, weights)
        net.fc = torch.nn.Identity()  # the 2048-d average-pool output is the feature vector
        self.device = resolve_device(device)
        self.network = net.to(self.device).eval()
        self.batch_size = check_int(batch_size, "batch_size", 1)

    @staticmethod
    def _state_dict(weights, progress: bool) -> dict:
        hint = (
            f"pass weights=<path to torchvision's inception_v3 IMAGENET1K_V1 file> (from {INCEPTION_URL}) or "
            "weights='download'"
        )
        if weights is None:
            raise InceptionWeightsError(f"InceptionFeatures needs pretrained weights, none were given: {hint}")
        if isinstance(weights, str) and weights == "download":
            try:
                return torch.hub.load_state_dict_from_url(
                    INCEPTION_URL, map_location="cpu", progress=progress, check_hash=True, weights_only=True
                )
            except Exception as err:  # URLError, HTTPError, hash mismatch, ...: all mean "no weights"
                raise InceptionWeightsError(
                    f"could not download the Inception-v3 weights from {INCEPTION_URL} "
                    f"({type(err).__name__}: {err}); without internet, copy that file here and pass its path"
                ) from err
        path = Path(weights)
        if not path.is_file():
            raise InceptionWeightsError(f"Inception-v3 weights file {path} does not exist; {hint}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors have many types
            raise InceptionWeightsError(f"cannot read Inception-v3 weights file {path}: {err}") from err

    @staticmethod
    def _check_and_load(net, state, source) -> None:
        if not isinstance(state, Mapping):
            raise InceptionWeightsError(f"{source}: expected a state dict, got {type(state).__name__}")
        fc = state.get("fc.weight")
        if isinstance(fc, torch.Tensor) and fc.shape[0] == 1008:
            raise InceptionWeightsError(
                f"{source} holds pytorch-fid's TF 'FID Inception' weights (1008 classes), which need that "
                "package's modified network; use pytorch_fid.inception.InceptionV3 as the feature extractor, "
                "or pass torchvision's IMAGENET1K_V1 weights here"
            )
        load_network_state(net, state, f"Inception-v3 weights {source}", error=InceptionWeightsError)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
            raise InputTypeError("InceptionFeatures takes float image tensors (N, C, H, W) in [0, 1]")
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise InputError(f"InceptionFeatures takes (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
        out = [
            self.network(self._prepare(images[i : i + self.batch_size].to(self.device, torch.float32))).cpu()
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(out) if out else images.new_zeros(0, 2048)
