"""The warmup adaptation pieces on their own: dual averaging, Welford variance, Stan's windows, trajectory length."""

import math

import numpy as np
import pyro
import pytest
import torch

from pyro_mmvae.infer.mcmc import BatchedHMC
from pyro_mmvae.infer.mcmc.adaptation import (
    INITIAL_UTURN_TIME,
    AdaptationWindows,
    DualAveraging,
    TrajectoryLengthAdapter,
    WelfordVariance,
    adaptation_windows,
    shrink_variance,
)

# ---------------------------------------------------------------------- dual averaging
CENTRES = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)


def synthetic_accept_prob(log_eps, target=0.8):
    """Acceptance falling with the step size, one target per entry; equals ``target`` at log ε = CENTRES."""
    return torch.sigmoid(math.log(target / (1 - target)) - 2.0 * (log_eps - CENTRES))


def run_dual_averaging(num_steps, target=0.8, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    da = DualAveraging(target)
    log_eps = torch.zeros(3, dtype=torch.float64)
    da.reset(log_eps)
    for _ in range(num_steps):
        a = synthetic_accept_prob(log_eps, target)
        if noise:
            a = (a + noise * (torch.rand(3, generator=g, dtype=torch.float64) - 0.5)).clamp(0, 1)
        log_eps = da.step(a)
    return da, log_eps


def test_dual_averaging_reset_state():
    da = DualAveraging(0.8)
    da.reset(torch.tensor([0.0, math.log(0.1)]))
    assert not da.has_updates and da.t == 0
    assert torch.allclose(da.mu, torch.tensor([math.log(10.0), 0.0]), atol=1e-6)  # μ = log(10 ε0)
    assert torch.equal(da.h_bar, torch.zeros(2)) and torch.equal(da.log_eps_bar, torch.zeros(2))
    da.step(torch.tensor([0.5, 0.9]))
    assert da.has_updates and da.t == 1


def test_dual_averaging_first_step_by_hand():
    """t = 1: η = 1/11, h̄ = η (δ − α), log ε = μ − h̄ / γ, log ε̄ = log ε (weight 1^{−κ} = 1)."""
    da = DualAveraging(0.8)
    da.reset(torch.tensor([0.0]))
    log_eps = da.step(torch.tensor([0.3]))
    h_bar = (0.8 - 0.3) / 11
    assert log_eps.item() == pytest.approx(math.log(10.0) - h_bar / 0.05, rel=1e-6)
    assert da.log_eps_bar.item() == pytest.approx(log_eps.item(), rel=1e-6)


@pytest.mark.parametrize("target", [0.6, 0.8, 0.95])
def test_dual_averaging_converges_to_the_target_acceptance(target):
    da, _ = run_dual_averaging(2000, target)
    final = synthetic_accept_prob(da.log_eps_bar, target)
    assert (final - target).abs().max() < 0.01, final
    # each target found its own step size, ~20x apart
    assert (da.log_eps_bar - CENTRES).abs().max() < 0.05
    # and the error shrinks with more iterations
    early, _ = run_dual_averaging(100, target)
    assert (synthetic_accept_prob(early.log_eps_bar, target) - target).abs().max() > (final - target).abs().max()


def test_dual_averaging_with_noisy_acceptance():
    da, _ = run_dual_averaging(2000, 0.8, noise=0.2)
    assert (synthetic_accept_prob(da.log_eps_bar) - 0.8).abs().max() < 0.02


# ---------------------------------------------------------------------- Welford variance
def test_welford_mean_and_variance_equal_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(57, 4, 5)) * rng.uniform(0.1, 10, size=(4, 5))  # (draws, *B, D)
    w = WelfordVariance(torch.zeros(4, 5, dtype=torch.float64))
    for row in x:
        w.update(torch.from_numpy(row))
    var, n = w.variance()
    assert n == 57
    np.testing.assert_allclose(w.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var.numpy(), x.var(0, ddof=1), rtol=1e-10)
    w.reset()
    assert w.n == 0 and torch.equal(w.m2, torch.zeros(4, 5, dtype=torch.float64))


def test_welford_pooled_variance_is_the_variance_of_all_chains_draws():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 3, 2, 4)) + rng.normal(size=(3, 2, 4))  # chains with different means
    w = WelfordVariance(torch.zeros(3, 2, 4, dtype=torch.float64))
    for row in x:
        w.update(torch.from_numpy(row))
    var, n = w.variance(pool_dim=0)
    assert n == 90 and var.shape == (3, 2, 4)
    pooled = x.transpose(1, 0, 2, 3).reshape(90, 2, 4).var(0, ddof=1)  # every draw of every chain
    for c in range(3):
        np.testing.assert_allclose(var[c].numpy(), pooled, rtol=1e-10)


def test_shrink_variance_is_stans_regularisation():
    var = torch.tensor([2.0, 1e-8], dtype=torch.float64)
    out = shrink_variance(var, 5)  # n / (n + 5) = 1/2
    assert torch.allclose(out, torch.tensor([1.0 + 0.5e-3, 0.5e-8 + 0.5e-3], dtype=torch.float64))
    assert torch.allclose(shrink_variance(var, 995), 0.995 * var + 5e-6)
    assert torch.allclose(shrink_variance(var, 0), torch.full_like(var, 1e-3))  # no draws: the target


# ---------------------------------------------------------------------- windows
def test_adaptation_windows_follow_stan():
    assert adaptation_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert adaptation_windows(200) == [(75, 100), (100, 150)]
    assert adaptation_windows(100) == [(15, 67)]  # short warmup: a third stays for the terminal buffer
    assert adaptation_windows(60) == [(9, 40)]
    assert adaptation_windows(10) == []


@pytest.mark.parametrize("warmup", [150, 151, 300, 500, 1000, 2000, 5000])
def test_windows_structure_with_the_default_buffers(warmup):
    """Init buffer 75, contiguous windows 25, 50, 100, ... doubling, the last stretched to the
    terminal buffer of 50 (never shorter than twice its predecessor would have been)."""
    windows = adaptation_windows(warmup)
    assert windows[0][0] == 75 and windows[-1][1] == warmup - 50
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))
    sizes = [e - s for s, e in windows]
    assert sizes[:-1] == [25 * 2**k for k in range(len(sizes) - 1)]
    assert sizes[-1] >= 25 * 2 ** (len(sizes) - 1)  # stretched, not cut short
    assert sizes[-1] < 25 * 2 ** (len(sizes) - 1) * 3  # ... by less than the next doubled window


@pytest.mark.parametrize("warmup", [20, 33, 60, 100, 149])
def test_short_warmups_keep_one_window_and_a_third_for_the_terminal_buffer(warmup):
    ((start, end),) = adaptation_windows(warmup)
    assert start == int(0.15 * warmup)
    assert warmup - end == max(int(0.1 * warmup), min(50, warmup // 3))


def test_adaptation_windows_object():
    w = AdaptationWindows(200)
    assert w.windows == [(75, 100), (100, 150)]
    assert [t for t in range(200) if w.in_window(t)] == list(range(75, 150))
    assert [d for d in range(201) if w.ends_window(d)] == [100, 150]
    assert AdaptationWindows(10).windows == [] and not AdaptationWindows(10).in_window(5)


# ---------------------------------------------------------------------- trajectory length
def test_trajectory_adapter_updates_from_enough_uturns():
    adapter = TrajectoryLengthAdapter(torch.zeros(3, dtype=torch.float64), 0.4, 0.3, 256)
    assert torch.equal(adapter.time, torch.full((3,), INITIAL_UTURN_TIME, dtype=torch.float64))
    assert torch.allclose(adapter.mean_time, 0.4 * adapter.time)
    times = torch.tensor([[2.0, 1.0, 9.0], [4.0, 1.5, 9.0], [3.0, 1.0, 9.0], [5.0, 9.0, 9.0], [6.0, 9.0, 9.0]])
    valid = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.bool)
    for t, v in zip(times.double(), valid):
        adapter.record(t, v)
    adapter.update()  # target 0: 5 U-turns, target 1: 3, target 2: 1 (fewer than 4: kept)
    first = times[:, 0].double().numpy()
    assert adapter.time[0].item() == pytest.approx(first.mean() + first.std(), rel=1e-12)  # mean + sd
    assert adapter.time[1:].tolist() == [INITIAL_UTURN_TIME] * 2
    adapter.update(final=True)  # any recorded U-turn counts; target 0's records were cleared
    second = np.array([1.0, 1.5, 1.0])
    assert adapter.time[0].item() == pytest.approx(first.mean() + first.std(), rel=1e-12)
    assert adapter.time[1].item() == pytest.approx(second.mean() + second.std(), rel=1e-12)
    assert adapter.time[2].item() == 9.0  # one U-turn: no spread
    adapter.rescale(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64))
    assert adapter.time[2].item() == 4.5


def test_trajectory_adapter_loop_lengths():
    adapter = TrajectoryLengthAdapter(torch.zeros(4), trajectory_scale=0.5, jitter=1.0, max_num_steps=50)
    adapter.time = torch.tensor([2.5, 4.0, 2.5, 100.0])
    eps = torch.tensor([0.125, 0.5, 0.25, 0.01])
    live = torch.tensor([True, True, True, False])  # an escaped target does not set the loop
    # plain: (1 + j) c T / ε = 20, 8, 10; explore: 1.5 T / ε̄ with ε̄ = 2 ε: 15, 6, 7.5
    assert adapter.loop_lengths(eps, 2 * eps, live, quantile=None) == (20, 20)
    # with ε̄ = ε / 2 exploring needs 60 steps: capped at max_num_steps
    assert adapter.loop_lengths(eps, 0.5 * eps, live, quantile=None) == (20, 50)
    plain, _ = adapter.loop_lengths(eps, 2 * eps, live, quantile=0.5)
    assert plain == 10  # the median target's need during warmup
    assert adapter.loop_lengths(eps, eps, torch.zeros(4, dtype=torch.bool), quantile=None) == (1, 1)


def test_learned_trajectory_scales_with_the_target():
    """On an isotropic Gaussian of standard deviation s in the identity metric, the U-turn time is
    s × (≈ 3.3-4 for D = 10): the adapter has to move from its initial 3.5 to about 3.5 s."""
    s, d = 3.0, 10
    pyro.set_rng_seed(0)
    kernel = BatchedHMC(
        potential_fn=lambda z: 0.5 * (z * z).sum(-1) / s**2, adapt_mass_matrix=False, trajectory="uturn"
    )
    mcmc = pyro.infer.MCMC(
        kernel, num_samples=1, warmup_steps=150, initial_params={"z": s * torch.randn(1, 16, d)}, disable_progbar=True
    )
    mcmc.run()
    uturn_time = kernel.trajectory_length / kernel.trajectory_scale
    assert 3.0 * s < uturn_time.median() < 4.5 * s
