import pytest
import torch

from pyro_mmvae.guides import FlowExpertGuide, JointGuide
from pyro_mmvae.infer.conditional import conditional_generate
from pyro_mmvae.models import MultimodalVAE
from tests.common import small_batch, small_modalities


@pytest.fixture
def parts():
    mods = small_modalities()
    model = MultimodalVAE(mods, 2, hidden=(8,))
    joint = JointGuide(mods, 2, head_dim=8, hidden=(8,), merge_hidden=(8,))
    experts = FlowExpertGuide(mods, 2, num_blocks=0, hidden=(8,))
    return model, joint, experts


def test_routes_by_subset(parts):
    model, joint, experts = parts
    batch = small_batch(3)
    one = conditional_generate(model, batch, "a", joint_guide=joint, experts=experts, num_samples=5)
    assert one.method == "expert" and one.z.shape == (5, 3, 2) and set(one.generated) == {"b", "c"}
    assert one.generated["b"].shape == (5, 3, 1, 4, 4)
    everything = conditional_generate(model, batch, ["a", "b", "c"], joint_guide=joint, experts=experts)
    assert everything.method == "joint"
    two = conditional_generate(
        model, batch, ["a", "b"], experts=experts, num_samples=8, mcmc_warmup=30, num_chains=2, seed=0
    )
    assert two.method == "mcmc" and two.z.shape == (8, 3, 2) and set(two.generated) == {"c"}
    assert torch.isfinite(two.z).all() and "run" in two.diagnostics


def test_errors_name_the_problem(parts):
    model, joint, experts = parts
    batch = small_batch(2)
    with pytest.raises(KeyError, match="'nope'"):
        conditional_generate(model, batch, ["nope"], experts=experts)
    with pytest.raises(ValueError, match="at least one modality"):
        conditional_generate(model, batch, [], experts=experts)
    with pytest.raises(ValueError, match="joint guide"):
        conditional_generate(model, batch, ["a", "b", "c"], experts=experts)
    with pytest.raises(ValueError, match="experts"):
        conditional_generate(model, batch, ["a"], joint_guide=joint)
