import pytest
import torch
from pyro import poutine

from pyro_mmvae.guides import JointGuide, UnimodalGaussianGuide
from tests.common import small_batch, small_modalities


def test_joint_guide_shapes_and_site():
    guide = JointGuide(small_modalities(), 3, head_dim=8, hidden=(8,), merge_hidden=(8,))
    batch = small_batch(5)
    q = guide.posterior(batch)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    tr = poutine.trace(guide).get_trace(batch, beta=0.5)
    assert tr.nodes["z"]["value"].shape == (5, 3) and tr.nodes["z"]["scale"] == 0.5


def test_joint_guide_subset_equals_marking_missing():
    guide = JointGuide(small_modalities(), 3, head_dim=8, hidden=(8,), merge_hidden=(8,))
    batch = small_batch(5)
    q_subset = guide.posterior(batch, ["a", "b"])
    q_missing = guide.posterior(batch.with_missing(["c"]))
    assert torch.allclose(q_subset.mean, q_missing.mean) and torch.allclose(q_subset.stddev, q_missing.stddev)
    per_row = {"a": torch.ones(5, dtype=torch.bool), "b": torch.ones(5, dtype=torch.bool)}
    assert torch.allclose(guide.posterior(batch, per_row).mean, q_subset.mean)


def test_unimodal_guide_answers_one_modality():
    guide = UnimodalGaussianGuide(small_modalities(), 2, hidden=(8,))
    batch = small_batch(4)
    q = guide.posterior(batch, "c")
    assert q.batch_shape == (4,) and q.event_shape == (2,)
    assert torch.allclose(guide.posterior(batch, {"c"}).mean, q.mean)
    with pytest.raises(ValueError, match="ONE modality"):
        guide.posterior(batch, ["a", "b"])
    with pytest.raises(KeyError, match="unknown modality 'z'"):
        guide.posterior(batch, "z")
