"""JNFLoss: the stage-2 objective against its closed form, freezing, masking, and the trainer interface."""

import math

import pytest
import torch
from torch import nn

from pyro_mmvae.data.dataset import MultimodalDataset
from pyro_mmvae.guides.flow import FlowExpertGuide
from pyro_mmvae.guides.joint import JointGuide
from pyro_mmvae.infer.jnf import JNFLoss
from pyro_mmvae.models.multimodal_vae import MultimodalVAE
from pyro_mmvae.nn.projectors import make_projector
from pyro_mmvae.train import fit
from tests.common import small_batch, small_modalities

D = 2


def setup(num_blocks=0, flow="maf"):
    torch.manual_seed(0)
    mods = small_modalities()
    joint = JointGuide(mods, D, head_dim=8, merge_hidden=(16,), hidden=(16,))
    experts = FlowExpertGuide(mods, D, flow=flow, num_blocks=num_blocks, flow_hidden=(8,), hidden=(16,))
    model = MultimodalVAE(mods, D, hidden=(16,))
    return model, joint, experts


def hand_value(joint, experts, batch):
    """Σ_j present · [KL(q ‖ q_j) + H(q)] per row, from the diagonal-Gaussian formulas: (B,)."""
    with torch.no_grad():
        q = joint.posterior(batch)
    mu, s = q.base_dist.loc, q.base_dist.scale
    total = torch.zeros(batch.batch_size)
    for name in experts.names:
        if not batch.present[name].any():
            continue
        qj = experts.expert(batch, name)
        mj, sj = qj.base_dist.loc, qj.base_dist.scale
        # −E_q log q_j = Σ_d [log σ_j + ½ log 2π + (σ² + (μ − μ_j)²) / (2 σ_j²)]
        value = (sj.log() + 0.5 * math.log(2 * math.pi) + (s**2 + (mu - mj) ** 2) / (2 * sj**2)).sum(-1)
        total = total + torch.where(batch.present[name], value, torch.zeros_like(value))
    return total


def test_analytic_loss_equals_the_gaussian_closed_form():
    model, joint, experts = setup()
    batch = small_batch(5)
    loss = JNFLoss(joint, analytic=True).differentiable_loss(model, experts, batch)
    torch.testing.assert_close(loss, hand_value(joint, experts, batch).mean())


def test_monte_carlo_loss_matches_the_analytic_value():
    model, joint, experts = setup()
    batch = small_batch(4)
    num = 20000
    mc = JNFLoss(joint, num_particles=num)
    with torch.no_grad():
        per_particle = -sum(mc.per_datapoint_terms(experts, batch).values()).mean(1)  # (L,), i.i.d.
        analytic = JNFLoss(joint, analytic=True).differentiable_loss(model, experts, batch)
    se = per_particle.std() / math.sqrt(num)
    assert abs(per_particle.mean() - analytic) < 4 * se
    assert mc.loss(model, experts, batch) == pytest.approx(analytic.item(), abs=8 * se.item())  # a fresh estimate


def test_missing_rows_are_excluded_from_their_term():
    present = {"a": torch.tensor([True, False, True, True, False]), "c": torch.tensor([False, True, True, True, True])}
    model, joint, experts = setup()
    batch = small_batch(5, present=present)
    loss_fn = JNFLoss(joint, analytic=True)
    loss = loss_fn.differentiable_loss(model, experts, batch)
    torch.testing.assert_close(loss, hand_value(joint, experts, batch).mean())
    # The experts' values in missing rows never enter: change x_a in those rows (the joint encoder
    # ignores them too) and the loss stays the same.
    data = dict(batch.data)
    data["a"] = torch.where(present["a"].unsqueeze(-1), data["a"], 100.0 * torch.randn_like(data["a"]))
    changed = type(batch)(data, dict(batch.present))
    torch.testing.assert_close(loss_fn.differentiable_loss(model, experts, changed), loss)
    # Monte Carlo with the same z: equal to the analytic per-row masking, term by term.
    mc = JNFLoss(joint, num_particles=3)
    z = mc.joint_samples(batch)
    terms = mc.per_datapoint_terms(experts, batch, z=z)
    assert set(terms) == {"a", "b", "c"} and terms["a"].shape == (3, 5)
    assert (terms["a"][:, ~present["a"]] == 0).all() and (terms["c"][:, ~present["c"]] == 0).all()
    full_a = experts.expert(batch, "a").log_prob(z)
    torch.testing.assert_close(terms["a"][:, present["a"]], full_a[:, present["a"]])


def test_joint_encoder_and_model_are_frozen_and_the_model_is_not_run():
    model, joint, experts = setup(num_blocks=2)
    calls = []
    for dec in model.decoders.values():
        dec.register_forward_hook(lambda *args: calls.append(1))
    joint.train()
    model.train()
    assert all(p.requires_grad for p in joint.parameters())  # the caller "forgot" to freeze
    loss = JNFLoss(joint, num_particles=2).differentiable_loss(model, experts, small_batch(5), beta=2.5)
    loss.backward()
    assert not calls
    assert not joint.training and not model.training
    assert all(p.grad is None for p in joint.parameters())
    assert all(p.grad is None for p in model.parameters())
    grads = [p.grad for p in experts.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


class _ExplodingModel(nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("stage 2 must not run the generative model")


def test_model_may_be_anything_it_is_never_called():
    _, joint, experts = setup()
    loss = JNFLoss(joint).differentiable_loss(_ExplodingModel(), experts, small_batch(3))
    assert torch.isfinite(loss)


def test_elbo_module_trains_the_experts_only():
    model, joint, experts = setup()
    module = JNFLoss(joint, analytic=True)(model, experts)
    params = {id(p) for p in module.parameters()}
    assert {id(p) for p in experts.parameters()} <= params
    assert not params & {id(p) for p in joint.parameters()}
    joint_before = [p.detach().clone() for p in joint.parameters()]
    opt = torch.optim.Adam(experts.parameters(), lr=1e-2)
    batch = small_batch(8)
    history = []
    for _ in range(30):
        opt.zero_grad()
        loss = module(batch)
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < history[0] - 0.5
    assert all(torch.equal(a, b) for a, b in zip(joint_before, joint.parameters()))


@pytest.mark.parametrize("flow", ["maf", "coupling"])
def test_flow_experts_loss_is_finite_and_differentiable(flow):
    model, joint, experts = setup(num_blocks=2, flow=flow)
    fn = JNFLoss(joint, num_particles=4)
    value = fn.loss_and_grads(model, experts, small_batch(6))
    assert math.isfinite(value)
    assert all(p.grad is not None for p in experts.flows.parameters())


def test_bad_configurations_raise():
    model, joint, experts = setup(num_blocks=2)
    with pytest.raises(TypeError, match="Gaussian experts"):
        JNFLoss(joint, analytic=True).differentiable_loss(model, experts, small_batch(3))
    with pytest.raises(ValueError, match="num_particles"):
        JNFLoss(joint, num_particles=0)
    with pytest.raises(TypeError, match="posterior"):
        JNFLoss(object())
    fn = JNFLoss(joint)
    with pytest.raises(ValueError, match=r"z must have shape \(L, 3, D\)"):
        fn.per_datapoint_terms(experts, small_batch(3), z=torch.zeros(3, D))


def test_jnf_shared_experts_train_without_touching_the_projectors():
    mods = small_modalities()
    torch.manual_seed(0)
    joint = JointGuide(mods, D, head_dim=8, merge_hidden=(16,), hidden=(16,))
    projectors = {m.name: make_projector(m, 4, hidden=(8,)) for m in mods}
    experts = FlowExpertGuide(mods, D, flow_hidden=(8,), hidden=(16,), project=projectors, project_hidden=(16, 16))
    JNFLoss(joint, num_particles=2).loss_and_grads(None, experts, small_batch(6))
    assert all(p.grad is None for g in projectors.values() for p in g.parameters())
    assert all(p.grad is not None for p in experts.trainable_parameters())


def test_stage_two_with_the_trainer():
    model, joint, experts = setup(num_blocks=2)
    data = MultimodalDataset(small_batch(48).data, modalities=small_modalities())
    frozen = [p.detach().clone() for p in [*joint.parameters(), *model.parameters()]]
    result = fit(
        model,
        experts,
        data,
        elbo=JNFLoss(joint, num_particles=4),
        epochs=3,
        batch_size=16,
        params=experts.experts,
        train_mode_modules=[experts.experts],
        progress=False,
        device="cpu",
    )
    losses = [row["train_loss"] for row in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(frozen, [*joint.parameters(), *model.parameters()]))
