"""BatchedHMC: Pyro's kernel contract, no host syncs, and per-target correctness against closed forms."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from scipy import stats
from torch.overrides import TorchFunctionMode

from pyro_mmvae.diagnostics import ess, import_arviz, rhat
from pyro_mmvae.infer.mcmc import BatchedHMC, HMCRun, adaptation_windows, run_pyro_nuts, sample_subset_posterior
from pyro_mmvae.infer.properness import ImproperPosteriorError, ImproperPosteriorWarning
from pyro_mmvae.infer.subset_posterior import SubsetPosterior
from pyro_mmvae.nn.flows import ConditionalFlow
from tests.infer.test_properness import mixed_properness_experts
from tests.infer.test_subset_posterior import random_gaussian_target


def z_bound(num_comparisons: int, alpha: float = 1e-3) -> float:
    """Two-sided Bonferroni critical value for ``num_comparisons`` z-scores at family level ``alpha``."""
    return float(stats.norm.isf(alpha / (2 * num_comparisons)))


def check_against_closed_form(run, target, rhat_max=1.01):
    """Per (target, dim): mean and variance within Monte Carlo error of the closed form; R-hat."""
    x = run.samples.double().numpy()
    cf = target.closed_form()
    mu, var = cf.mean.double().numpy(), cf.variance.double().numpy()
    crit = z_bound(2 * mu.size)
    z_mean = (x.mean((0, 1)) - mu) / np.sqrt(var / ess(x, "mean"))
    # Var of the sample variance of a Gaussian is 2σ⁴/n, with n the ESS of (x − mean)²
    z_var = (x.var((0, 1)) - var) / (var * np.sqrt(2 / ess(x, "sd")))
    assert np.abs(z_mean).max() < crit, f"worst mean z-score {np.abs(z_mean).max():.2f} >= {crit:.2f}"
    assert np.abs(z_var).max() < crit, f"worst variance z-score {np.abs(z_var).max():.2f} >= {crit:.2f}"
    assert rhat(x).max() < rhat_max


# ---------------------------------------------------------------------- contract
def test_kernel_runs_under_pyro_mcmc_and_arviz():
    target = random_gaussian_target(2, n=3, d=2)
    kernel = BatchedHMC(target, num_chains=2)
    assert kernel.model is None and kernel.transforms == {}
    z0 = target.initial_points(2)
    mcmc = pyro.infer.MCMC(kernel, num_samples=30, warmup_steps=30, initial_params={"z": z0}, disable_progbar=True)
    mcmc.run()
    z = mcmc.get_samples(group_by_chain=True)["z"]
    assert z.shape == (1, 30, 2, 3, 2)
    diag = kernel.diagnostics()
    assert {"divergences", "acceptance rate"} <= set(diag)
    json.dumps(kernel.logging())
    json.dumps(diag)
    stats_ = kernel.sample_stats()
    assert stats_["accept_prob"].shape == (30, 2, 3) and stats_["step_size"].shape == (2, 3)
    assert stats_["inverse_mass_matrix"].shape == (2, 3, 2)
    az = import_arviz()
    idata = az.from_pyro(mcmc)
    assert idata.sample_stats["diverging"].shape == (1, 30)


def test_initial_params_property_and_errors():
    target = random_gaussian_target(2, n=3, d=2)
    kernel = BatchedHMC(target, num_chains=3)
    assert kernel.initial_params["z"].shape == (3, 3, 2)
    kernel.initial_params = {"z": torch.zeros(1, 3, 2)}
    assert kernel.initial_params["z"].shape == (1, 3, 2)
    with pytest.raises(ValueError, match="exactly one of"):
        BatchedHMC()
    with pytest.raises(ValueError, match="no initial_params"):
        _ = BatchedHMC(potential_fn=lambda z: (z**2).sum(-1)).initial_params
    k = BatchedHMC(potential_fn=lambda z: (z**2).sum())
    k.setup(5)
    with pytest.raises(ValueError, match="one value per target"):
        k.sample({"z": torch.zeros(4, 2)})


class _HostSyncRecorder(TorchFunctionMode):
    """Records tensor → host conversions (``item``, ``bool``, ``tolist``, ...)."""

    SYNCS = {
        "item",
        "__bool__",
        "tolist",
        "__float__",
        "__int__",
        "__index__",
        "_is_all_true",
        "numpy",
        "cpu",
        "nonzero",
    }

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.SYNCS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_no_host_sync_inside_iterations():
    target = random_gaussian_target(3, n=4, d=3)
    kernel = BatchedHMC(target, refresh_interval=10, log_every=25)
    kernel.setup(60)
    params = {"z": target.initial_points(2)}
    params = kernel.sample(params)  # initialisation may synchronise (checks, step-size search)
    for i in range(1, 100):
        rec = _HostSyncRecorder()
        with rec:
            params = kernel.sample(params)
        refresh = (i + 1) % 10 == 0 or (i + 1) in {end for _, end in adaptation_windows(60)} or i + 1 == 60
        if not refresh and (i + 1) % 25:
            assert rec.calls == [], f"iteration {i}: host syncs {rec.calls}"


# ---------------------------------------------------------------------- statistics
def subset_sizes_mask(num_experts=4, per_size=3):
    """``(|S|, N)``: ``per_size`` data points of each subset size 2, ..., ``num_experts``.

    Expert 0 (the narrow one of :func:`random_gaussian_target`) is always in, which keeps every
    subset proper; the others rotate.
    """
    others = num_experts - 1
    rows = []
    for size in range(2, num_experts + 1):
        for k in range(per_size):
            rows.append([True] + [(j + k) % others < size - 1 for j in range(others)])
    return torch.tensor(rows).T


@pytest.mark.parametrize("trajectory", ["steps", "uturn"])
@pytest.mark.parametrize("d", [2, 20], ids=lambda d: f"D{d}")
def test_gaussian_subset_sizes_2_3_4_every_target(d, trajectory):
    """One run, per-data-point subsets of sizes 2, 3 and 4 (three points each), scales 0.05 .. 5."""
    mask = subset_sizes_mask(4, 3)
    target = random_gaussian_target(4, n=mask.shape[1], d=d, seed=d, mask=mask)
    assert target.subset_sizes.tolist() == [2, 2, 2, 3, 3, 3, 4, 4, 4]
    run = sample_subset_posterior(
        target, num_samples=800, warmup_steps=300, num_chains=4, seed=1, progress=False, trajectory=trajectory
    )
    assert run.samples.shape == (4, 800, 9, d)
    assert run.accept_prob.shape == (4, 800, 9) and run.step_size.shape == (4, 9)
    check_against_closed_form(run, target)
    assert run.divergences.sum() == 0


@pytest.mark.slow
@pytest.mark.parametrize("num_experts", [2, 3, 4], ids=lambda s: f"S{s}")
@pytest.mark.parametrize("d", [2, 20], ids=lambda d: f"D{d}")
def test_gaussian_subset_posterior_every_target(num_experts, d):
    """Every data point with the same subset (no mask), more targets and draws."""
    n = 20
    target = random_gaussian_target(num_experts, n=n, d=d, seed=10 * num_experts + d)
    run = sample_subset_posterior(target, num_samples=2000, warmup_steps=500, num_chains=4, seed=1, progress=False)
    check_against_closed_form(run, target)
    assert run.divergences.sum() == 0


def test_steps_trajectories_take_the_same_steps_and_stay_within_the_time():
    """``"steps"``: one number of leapfrog steps L for every target and iteration (no lockstep idling),
    from the median step size; after warmup no trajectory integrates beyond 1.25 T."""
    target = random_gaussian_target(3, n=30, d=5, seed=2)
    run = sample_subset_posterior(target, 200, 150, num_chains=4, seed=2, progress=False)
    loop = run.extra["num_loop_steps"]
    assert bool((run.num_steps == loop).all())
    assert loop == round(2.0 / float(run.step_size.median()))
    assert float(run.trajectory_length.max()) <= 2.0 + 1e-5
    with pytest.raises(ValueError, match="trajectory must be"):
        BatchedHMC(target, trajectory="nuts")


def test_identity_start_metric_and_scale_spread():
    """Posterior scales spanning ~0.03 .. 3 across dims and targets, started from the identity metric."""
    g = torch.Generator().manual_seed(3)
    locs = torch.randn(2, 4, 5, generator=g)
    scales = torch.empty(2, 4, 5).uniform_(math.log(0.05), math.log(5.0), generator=g).exp()
    target = SubsetPosterior.from_gaussians(torch.zeros(5), torch.full((5,), 10.0), locs, scales)
    sd = target.closed_form().stddev
    assert sd.max() / sd.min() > 20
    run = sample_subset_posterior(
        target, 700, 350, num_chains=4, seed=3, progress=False, inverse_mass_matrix=torch.ones(5)
    )
    check_against_closed_form(run, target)
    # the adapted metric is the posterior variance, per chain and target
    ratio = run.inverse_mass_matrix / target.closed_form().variance
    assert ratio.min() > 0.5 and ratio.max() < 2.0
    assert run.step_size.max() / run.step_size.min() < 3  # the metric took the scales out of the step size


def test_float64():
    target = random_gaussian_target(3, n=3, d=2, seed=5, dtype=torch.float64)
    run = sample_subset_posterior(target, 800, 300, num_chains=4, seed=5, progress=False)
    assert run.samples.dtype == torch.float64 and run.step_size.dtype == torch.float64
    check_against_closed_form(run, target)


@pytest.mark.parametrize("trajectory", ["uturn", "steps"])
def test_improper_targets_raise_or_escape_without_stalling_the_others(trajectory):
    """Improper points: an error naming them by default; with improper='warn' the proper points are still
    sampled correctly with short trajectories. With ``"uturn"`` the improper points' chains escape, are
    frozen and flagged (their never-ending U-turns would otherwise drive everyone's loop to 256); with
    ``"steps"`` the shared number of steps comes from the median step size and is unaffected."""
    locs, scales, improper = mixed_properness_experts(n=8, d=3, seed=1)
    prior = (torch.zeros(3), torch.ones(3))
    target = SubsetPosterior.from_gaussians(*prior, locs, scales)
    with pytest.raises(ImproperPosteriorError, match="data points 1, 4, 5"):
        sample_subset_posterior(target, 10, 10, progress=False)
    with pytest.warns(ImproperPosteriorWarning) as record:
        run = sample_subset_posterior(
            target, 600, 300, num_chains=4, seed=3, progress=False, improper="warn", trajectory=trajectory
        )
    assert "data points 1, 4, 5" in str(record[0].message)  # before sampling
    if trajectory == "uturn":
        assert any("escaped" in str(w.message) for w in record)  # after sampling
        assert run.escaped_points == improper
        assert bool(run.escaped[:, improper].all())  # every chain of an improper point
        assert run.extra["diagnostics"]["escaped targets"] == 4 * len(improper)
        assert run.extra["num_loop_steps"] < 32  # an escaping target would otherwise drive the loop to 256
    else:
        assert run.extra["num_loop_steps"] <= 6
    proper = [i for i in range(8) if i not in improper]
    check_against_closed_form(
        HMCRun(samples=run.samples[:, :, proper]),
        SubsetPosterior.from_gaussians(*prior, locs[:, proper], scales[:, proper]),
    )


def test_properness_check_does_not_change_the_draws():
    """The same seed gives the same draws whether or not the (random) tail probe ran first."""
    locs, scales, _ = mixed_properness_experts(n=6, d=2, seed=2)
    flow_like = [
        dist.TransformedDistribution(
            dist.Normal(m, s.clamp(max=0.5)).to_event(1), [T.AffineTransform(0.0, 1.0, event_dim=1)]
        )
        for m, s in zip(locs, scales)
    ]
    target = SubsetPosterior(dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1), flow_like)
    runs = [
        sample_subset_posterior(target, 20, 20, num_chains=2, seed=4, progress=False, improper=policy)
        for policy in ("raise", "ignore")
    ]
    assert torch.equal(runs[0].samples, runs[1].samples)


def test_escape_radius_validation_and_off_switch():
    target = random_gaussian_target(2, n=2, d=2)
    with pytest.raises(ValueError, match="escape_radius"):
        BatchedHMC(target, escape_radius=0.0)
    kernel = BatchedHMC(target, escape_radius=None, num_chains=2)
    mcmc = pyro.infer.MCMC(kernel, num_samples=5, warmup_steps=5, disable_progbar=True)
    mcmc.run()
    assert not bool(kernel.escaped.any())


def _coupling_expert(loc, scale, seed, strength=1.0):
    """q(z | x) = a random affine coupling flow (fixed weights) pushed from N(loc, scale): non-Gaussian."""
    torch.manual_seed(seed)
    coupling = T.affine_coupling(loc.shape[-1], hidden_dims=[8])
    with torch.no_grad():
        coupling.nn.layers[-1].weight.mul_(strength)
        coupling.nn.layers[-1].bias.mul_(strength)
    perm = T.Permute(torch.arange(loc.shape[-1] - 1, -1, -1))
    return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), [perm, coupling])


def _importance_mean(target, num_draws=60000):
    """Self-normalised importance sampling of the mean, proposal = mixture of the experts; with its MC error."""
    experts = list(target.experts.values())
    with torch.no_grad():
        draws = torch.cat([e.sample((num_draws // len(experts),)) for e in experts])
        log_r = torch.logsumexp(torch.stack([e.log_prob(draws) for e in experts]), 0) - math.log(len(experts))
        w = torch.softmax(target.log_prob(draws) - log_r, 0)
        mean = (w[..., None] * draws).sum(0)
        se = (w[..., None] ** 2 * (draws - mean) ** 2).sum(0).sqrt()
    return mean.double().numpy(), se.double().numpy(), (1 / (w**2).sum(0)).min().item()


def _maf_expert(loc, scale, seed, strength=0.5):
    """q(z | x) = the library's conditional MAF (random weights) pushed from N(loc, scale): the fused gradient path."""
    flow = ConditionalFlow(
        loc.shape[-1], "maf", num_blocks=2, hidden=(8, 8), context_dim=3, seed=seed, identity_init=False
    )
    flow = flow.to(loc.dtype)
    with torch.no_grad():
        for net in flow.nets:
            net.layers[-1].weight.mul_(strength)
            net.layers[-1].bias.mul_(strength)
        context = torch.randn(loc.shape[0], 3, generator=torch.Generator().manual_seed(seed), dtype=loc.dtype)
        return flow.requires_grad_(False)(dist.Normal(loc, scale).to_event(1), context)


@pytest.mark.parametrize("make_expert", [_coupling_expert, _maf_expert], ids=["coupling", "maf"])
def test_flow_experts_against_importance_sampling(make_expert):
    n, d = 4, 2
    g = torch.Generator().manual_seed(0)
    z_true = torch.randn(n, d, generator=g)
    locs = [z_true + 0.3 * torch.randn(n, d, generator=g) for _ in range(3)]
    scales = [0.2 + 0.6 * torch.rand(n, d, generator=g) for _ in range(3)]
    # two flow experts and a Gaussian one (modalities may differ in how their experts are built)
    experts = [make_expert(locs[s], scales[s], s) for s in range(2)] + [dist.Normal(locs[2], scales[2]).to_event(1)]
    target = SubsetPosterior(dist.Normal(torch.zeros(d), torch.ones(d)).to_event(1), experts)
    assert not target.is_gaussian
    mean_is, se_is, is_ess = _importance_mean(target)
    assert is_ess > 300  # the SNIS error below accounts for the rest
    run = sample_subset_posterior(target, 400, 250, num_chains=4, seed=6, progress=False)
    x = run.samples.double().numpy()
    z = (x.mean((0, 1)) - mean_is) / np.sqrt(x.var((0, 1)) / ess(x, "mean") + se_is**2)
    assert np.abs(z).max() < z_bound(z.size)
    assert rhat(x).max() < 1.02


def test_reference_nuts_runs_on_the_same_target():
    target = random_gaussian_target(2, n=3, d=2, seed=8)
    run = run_pyro_nuts(target, num_samples=200, warmup_steps=100, num_chains=2, seed=0, progress=False)
    assert run.samples.shape == (2, 200, 3, 2)
    cf = target.closed_form()
    x = run.samples.double().numpy()
    z = (x.mean((0, 1)) - cf.mean.double().numpy()) / np.sqrt(cf.variance.double().numpy() / ess(x, "mean"))
    assert np.abs(z).max() < z_bound(z.size)


def test_a_target_with_its_own_gradient_gives_the_autograd_chains():
    """``log_prob_and_grad`` (closed-form Gaussians, fused MAF sweeps) replaces autograd without changing a draw."""
    g = torch.Generator().manual_seed(3)
    n, d = 5, 3
    locs = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3)]
    scales = [0.3 + torch.rand(n, d, generator=g, dtype=torch.float64) for _ in range(3)]
    experts = [_maf_expert(locs[j], scales[j], j) for j in range(2)] + [dist.Normal(locs[2], scales[2]).to_event(1)]
    prior = dist.Normal(torch.zeros(d, dtype=torch.float64), 1.0).to_event(1)
    target = SubsetPosterior(prior, experts)
    calls = []
    own_gradient = target.log_prob_and_grad
    target.log_prob_and_grad = lambda z: calls.append(1) or own_gradient(z)
    runs = []
    for potential_fn in (None, lambda z: -target.log_prob(z)):
        torch.manual_seed(0)
        z0 = target.initial_points(2)
        kw = {"potential_fn": potential_fn} if potential_fn else {"target": target}
        kernel = BatchedHMC(**kw, initial_params={"z": z0})
        mcmc = pyro.infer.MCMC(kernel, num_samples=20, warmup_steps=30, disable_progbar=True)
        torch.manual_seed(1)
        mcmc.run()
        runs.append(mcmc.get_samples()["z"])
    assert len(calls) > 50  # the first run differentiated through the target's own method
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-8, atol=1e-8)
