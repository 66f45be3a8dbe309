"""One run of q(·|x_S) with 2L particles gives z_S and q(z_M | x_S): the same as separate runs.

The masked bound traces the guide for z_M ~ q(·|x_M), then once with subset S and 2L particles: the
first L are fresh draws z_S, the last L replay z_M (``_ReplayTrailingParticles``). Per site, the
trailing half must hold exactly z_M with the log-densities of a ``poutine.replay`` run, and the
leading half the log-densities of q(·|x_S) at its own values; the model, run once on all 2L
particles, must give each half's terms of a separate run.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_mmvae.guides.aggregation import SumPoolingMixtureGuide
from pyro_mmvae.guides.equivariant import EquivariantSelfAttentionGuide
from pyro_mmvae.infer.masked import MaskedELBO
from pyro_mmvae.infer.traces import _ReplayTrailingParticles, sample_sites, trace_guide, trace_model
from pyro_mmvae.models import MultimodalVAE
from pyro_mmvae.models.private import PrivateLatentVAE
from pyro_mmvae.nn.shared_encodings import shared_encodings

from .test_masked_with_aggregation import ATTN, MODS, POOL, batch_with_missing

L, BETA = 3, 0.7
SUBSET = {
    "a": torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool),
    "b": torch.tensor([0, 1, 0, 1, 0, 0], dtype=torch.bool),
    "c": torch.zeros(6, dtype=torch.bool),
}


def function_guide(batch, subset=None, beta=1.0):
    """A plain Pyro guide: q(z | x_S) = N(Σ_{s∈S} mean(x_s), 1) per row."""
    mask = batch.subset_mask(subset)
    loc = sum(torch.where(mask[n], batch.data[n].mean(-1), 0.0) for n in batch.names)
    with pyro.plate("data", batch.batch_size), poutine.scale(scale=beta):
        return pyro.sample("z", dist.Normal(loc.unsqueeze(-1).expand(-1, 2), 1.0).to_event(1))


def cases():
    torch.manual_seed(0)
    yield (
        "mixture",
        MultimodalVAE(MODS, 2, hidden=(8,), prior="gmm", num_components=3),
        SumPoolingMixtureGuide(MODS, 2, num_components=3, feature_dim=6, **POOL),
    )
    yield (
        "private",
        PrivateLatentVAE(MODS, 2, 2, hidden=(8,)),
        EquivariantSelfAttentionGuide(MODS, 2, 2, feature_dim=8, **ATTN),
    )
    yield "function", MultimodalVAE(MODS, 2, hidden=(8,)), function_guide


@pytest.mark.parametrize("name,model,guide", list(cases()), ids=[c[0] for c in cases()])
def test_one_run_of_q_given_s_equals_separate_runs(name, model, guide):
    batch = batch_with_missing()
    pyro.set_rng_seed(1)
    with shared_encodings():
        g_m = trace_guide(guide, batch, None, BETA, L)
        both = trace_guide(guide, batch, SUBSET, BETA, 2 * L, outer=_ReplayTrailingParticles(g_m))
        replayed = trace_guide(poutine.replay(guide, trace=g_m), batch, SUBSET, BETA, L)
        leading = {s: both.nodes[s]["value"][:L] for s in sample_sites(both, observed=False)}
        fresh = trace_guide(poutine.condition(guide, data=leading), batch, SUBSET, BETA, L)
        for s in leading:  # conditioned values, to be replayed as latent draws
            fresh.nodes[s]["is_observed"] = False
        m_both = trace_model(model, both, batch, BETA, 2 * L)
        m_s, m_m = trace_model(model, fresh, batch, BETA, L), trace_model(model, g_m, batch, BETA, L)
    sites = sample_sites(g_m, observed=False)
    assert sites == sample_sites(both, observed=False) and sites[0] == "z"
    for s in sites:
        value = both.nodes[s]["value"]
        assert value.shape[0] == 2 * L
        assert torch.equal(value[L:], g_m.nodes[s]["value"]), s
        assert not torch.equal(value[:L], value[L:]), s  # the leading half is a fresh draw
        torch.testing.assert_close(both.nodes[s]["log_prob"][L:], replayed.nodes[s]["log_prob"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(both.nodes[s]["log_prob"][:L], fresh.nodes[s]["log_prob"], rtol=1e-6, atol=1e-6)
    for s in sample_sites(m_both):
        lp = m_both.nodes[s]["log_prob"]
        torch.testing.assert_close(lp[:L], m_s.nodes[s]["log_prob"], rtol=1e-6, atol=1e-6, msg=s)
        torch.testing.assert_close(lp[L:], m_m.nodes[s]["log_prob"], rtol=1e-6, atol=1e-6, msg=s)


def test_masked_bound_runs_three_programs_per_evaluation():
    model = MultimodalVAE(MODS, 2, hidden=(8,))
    runs = []

    def counted_guide(batch, subset=None, beta=1.0):
        runs.append("guide")
        return function_guide(batch, subset, beta)

    def counted_model(batch, beta=1.0):
        runs.append("model")
        return model(batch, beta)

    loss = MaskedELBO(num_particles=2).differentiable_loss(counted_model, counted_guide, batch_with_missing())
    assert torch.isfinite(loss)
    assert runs == ["guide", "guide", "model"]
