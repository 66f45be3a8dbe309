"""Fréchet distances against closed forms, their statistics, FID/MFD over extractors, and Inception's
weights handling (the error paths: no weights ship with the library and no download works offline)."""

import urllib.error

import numpy as np
import pytest
import scipy.linalg
import torch

from pyro_mmvae.errors import InputError
from pyro_mmvae.metrics import (
    FeatureMoments,
    InceptionFeatures,
    InceptionWeightsError,
    build_network,
    feature_statistics,
    fid,
    frechet_distance,
    mfd,
)
from pyro_mmvae.metrics.classifiers import Classifier


def random_spd(f: int, rng: np.random.Generator, floor: float = 0.1) -> np.ndarray:
    a = rng.normal(size=(f, f))
    return a @ a.T / f + floor * np.eye(f)


def reference_distance(mu1, cov1, mu2, cov2) -> float:
    """The textbook formula with a general (non-symmetric) matrix square root."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def test_one_dimensional_closed_form():
    # (m1 - m2)^2 + (s1 - s2)^2 for N(m1, s1^2), N(m2, s2^2)
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[0.25]]))
    assert d == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_diagonal_and_commuting_covariances_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    a, b = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))  # same eigenvectors: the covariances commute
    assert frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T) == pytest.approx(closed, rel=1e-9)


def test_general_spd_matches_the_reference_and_is_symmetric_and_non_negative():
    rng = np.random.default_rng(1)
    for _ in range(20):
        f = int(rng.integers(2, 12))
        mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
        c1, c2 = random_spd(f, rng), random_spd(f, rng)
        d12 = frechet_distance(mu1, c1, mu2, c2)
        assert d12 == pytest.approx(reference_distance(mu1, c1, mu2, c2), rel=1e-7, abs=1e-9)
        assert d12 == pytest.approx(frechet_distance(mu2, c2, mu1, c1), rel=1e-10)
        # a nearby pair has a small but non-negative distance
        near = c1 + 1e-4 * random_spd(f, rng, floor=0.0)
        assert frechet_distance(mu1, c1, mu1 + 1e-4, near) >= 0.0
        assert d12 > 0.0


def test_identical_feature_sets_give_zero():
    x = torch.randn(500, 20, dtype=torch.float64) * torch.linspace(0.1, 5.0, 20) + 3.0
    mu, cov = feature_statistics(x)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-8
    assert abs(fid(x.float(), x.float(), lambda z: z, batch_size=64)) < 1e-8


def test_near_singular_and_singular_covariances_stay_finite():
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    a = np.array([3.0, 2.0, 1.0, 0.5, 1e-6, 1e-10, 1e-14, 0.0, 0.0, 0.0])
    b = np.array([1.0, 1.0, 2.0, 1e-12, 0.3, 0.0, 1e-14, 1e-9, 0.0, 2.0])
    c1, c2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T  # rounding makes some eigenvalues slightly negative
    d = frechet_distance(np.zeros(10), c1, np.zeros(10), c2)
    assert np.isfinite(d) and d == pytest.approx(((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), abs=1e-6)
    few = torch.randn(5, 30, dtype=torch.float64)  # 5 rows in 30 dimensions: rank-4 covariances
    mu1, cov1 = feature_statistics(few)
    mu2, cov2 = feature_statistics(torch.randn(6, 30, dtype=torch.float64))
    assert np.isfinite(frechet_distance(mu1, cov1, mu2, cov2))
    assert abs(frechet_distance(mu1, cov1, mu1, cov1)) < 1e-8


def test_statistics_streamed_in_batches_equal_numpy():
    x = torch.randn(301, 7, dtype=torch.float64) * 10 + 1000.0  # a large offset: no raw sums of squares
    moments = FeatureMoments()
    for i in range(0, 301, 40):
        moments.update(x[i : i + 40])
    mu, cov = moments.statistics()
    assert torch.allclose(mu, x.mean(0), rtol=1e-12)
    assert np.allclose(cov.numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-10)
    with pytest.raises(InputError, match="at least 2 rows"):
        feature_statistics(x[:1])


def test_fid_of_gaussian_samples_matches_the_distance_of_their_moments():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 3, 2, 2, generator=g)
    shifted = torch.randn(2000, 3, 2, 2, generator=g) + 0.5

    def flatten(x):
        return x.flatten(1)

    value = fid(real, shifted, flatten, batch_size=300)
    mu1, cov1 = feature_statistics(real.flatten(1))
    mu2, cov2 = feature_statistics(shifted.flatten(1))
    assert value == pytest.approx(frechet_distance(mu1, cov1, mu2, cov2), rel=1e-9)
    # population value 12 * 0.5^2 = 3; finite-sample noise of the traces is ~ 12 * sqrt(2 / 2000) * 2
    assert value == pytest.approx(3.0, abs=1.2)
    generated = (shifted[i : i + 500] for i in range(0, 2000, 500))  # batches produced on the fly
    assert fid(real, generated, flatten) == pytest.approx(value, rel=1e-9)


def test_mfd_per_modality_with_classifier_features_and_callables():
    torch.manual_seed(0)
    net = Classifier(build_network("mlp", (6,)), (6,), "mlp")
    real = {"traj": torch.randn(200, 6), "img": torch.rand(150, 1, 4, 4)}
    generated = {"traj": torch.randn(200, 6) + 1.0, "img": real["img"].clone()}
    out = mfd(real, generated, {"traj": net, "img": lambda x: x.flatten(1)})
    assert set(out["per_modality"]) == {"traj", "img"}
    assert abs(out["per_modality"]["img"]) < 1e-8 and out["per_modality"]["traj"] > 0.01
    assert out["mean"] == pytest.approx(sum(out["per_modality"].values()) / 2)
    with pytest.raises(InputError, match="lack the modalities \\['img'\\]"):
        mfd({"traj": real["traj"]}, generated, {"traj": net, "img": net})


def test_bad_covariances_are_rejected():
    eye = np.eye(3)
    with pytest.raises(InputError, match="not symmetric"):
        frechet_distance(np.zeros(3), eye + np.triu(np.ones((3, 3)), 1), np.zeros(3), eye)
    with pytest.raises(InputError, match="not positive semi-definite"):
        frechet_distance(np.zeros(3), np.diag([1.0, -1.0, 1.0]), np.zeros(3), eye)
    with pytest.raises(InputError, match="must be \\(3, 3\\)"):
        frechet_distance(np.zeros(3), eye, np.zeros(3), np.eye(2))


# -------------------------------------------------------------------------------------------- Inception
def test_inception_without_weights_raises_never_untrained(tmp_path, monkeypatch):
    with pytest.raises(InceptionWeightsError, match="needs pretrained weights"):
        InceptionFeatures()
    with pytest.raises(InceptionWeightsError, match="absent.pth does not exist"):
        InceptionFeatures(weights=tmp_path / "absent.pth")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(InceptionWeightsError, match="could not download.*inception_v3_google"):
        InceptionFeatures(weights="download")
    torch.save({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, tmp_path / "pt_fid.pth")
    with pytest.raises(InceptionWeightsError, match="pytorch-fid"):
        InceptionFeatures(weights=tmp_path / "pt_fid.pth")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InceptionWeightsError, match="missing keys.*unexpected keys \\['conv.weight'\\]"):
        InceptionFeatures(weights=tmp_path / "other.pth")
    assert issubclass(InceptionWeightsError, ValueError)


def test_inception_features_from_a_weights_file_match_torchvision(tmp_path):
    from torchvision.models.inception import Inception3

    torch.manual_seed(0)
    reference = Inception3(aux_logits=True, transform_input=True, init_weights=False).eval()
    torch.save(reference.state_dict(), tmp_path / "inception.pth")
    features = InceptionFeatures(weights=tmp_path / "inception.pth", batch_size=2)
    grey = torch.rand(3, 1, 28, 28)
    out = features(grey)
    assert out.shape == (3, 2048) and torch.isfinite(out).all()
    # torchvision's own path: ImageNet normalisation, then transform_input inside the network
    reference.fc = torch.nn.Identity()
    x = torch.nn.functional.interpolate(grey.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = reference((x - mean[:, None, None]) / std[:, None, None])
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4)
