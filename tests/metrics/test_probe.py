"""Latent linear probe: multinomial logistic regression in torch."""

import math

import pytest
import torch

from pyro_mmvae.data.synthetic import ivae_bimodal
from pyro_mmvae.guides import JointGuide
from pyro_mmvae.metrics.probe import LinearProbe, encode_dataset, latent_linear_probe, linear_probe_accuracy


def blobs(n_per: int, k: int = 4, d: int = 3, spread: float = 8.0, noise_seed: int = 0):
    """Well separated Gaussian clusters (fixed centres) with unit noise."""
    centres = spread * torch.randn(k, d, generator=torch.Generator().manual_seed(100))
    y = torch.arange(k).repeat_interleave(n_per)
    return centres[y] + torch.randn(k * n_per, d, generator=torch.Generator().manual_seed(noise_seed)), y


def test_separable_data_is_classified_perfectly():
    z, y = blobs(200)
    z_test, y_test = blobs(200, noise_seed=1)
    assert linear_probe_accuracy(z, y, z_test, y_test) >= 0.99


def test_random_labels_give_chance_accuracy():
    g = torch.Generator().manual_seed(2)
    k, n = 4, 4000
    z_tr, z_te = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    y_tr, y_te = torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
    acc = linear_probe_accuracy(z_tr, y_tr, z_te, y_te)
    p = 1 / k
    assert abs(acc - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_probe_api_and_errors():
    z, y = blobs(50, k=3)
    probe = LinearProbe(num_classes=3).fit(z, y)
    assert probe.logits(z).shape == (150, 3) and probe.predict(z).dtype == torch.long
    with pytest.raises(RuntimeError, match="fit"):
        LinearProbe().predict(z)
    with pytest.raises(ValueError, match="disagree"):
        LinearProbe().fit(z, y[:10])
    with pytest.raises(ValueError, match="out of range"):
        LinearProbe(num_classes=2).fit(z, y)


def test_latent_linear_probe_on_a_guide():
    data = ivae_bimodal(num_samples=500, seed=0)
    guide = JointGuide(data.modalities, 2, head_dim=8, hidden=(16,), merge_hidden=(16,))
    z = encode_dataset(guide, data.train, subset=["x"], batch_size=128)
    assert z.shape == (500, 2)
    acc = latent_linear_probe(guide, data.train, data.train, label="label", subset=["x"], sample=False)
    assert 0.0 <= acc <= 1.0
    with pytest.raises(KeyError, match="label"):
        latent_linear_probe(guide, data.train, data.train, label="digit")
