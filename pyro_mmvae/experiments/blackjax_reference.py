"""The JAX peer for the Gaussian-expert subset-posterior benchmark: BlackJAX window adaptation + NUTS.

What a JAX user would write for N independent subset posteriors: per target and chain, BlackJAX's
``window_adaptation`` (Stan's schedule: step size by dual averaging, diagonal metric from doubling
windows) followed by NUTS draws, ``jax.vmap``-ed over chains and targets and ``jax.jit``-compiled.
The target is the Gaussian subset posterior

    log p(z | x_S) = log N(z; m_0, s_0) + Σ_{j∈S} [log N(z; m_j, s_j) − log N(z; m_0, s_0)]

with the experts' locations and scales taken from a Gaussian
:class:`~pyro_mmvae.infer.subset_posterior.SubsetPosterior`, started from the same points and the same
initial diagonal metric as :class:`~pyro_mmvae.infer.mcmc.BatchedHMC`.

Under ``vmap`` NUTS's tree building runs in lockstep: each iteration executes as many leapfrog steps
as the longest trajectory in the batch, while every chain counts its own. Both numbers are reported.
Compile time is measured separately (``jit(...).lower(...).compile()``) and excluded from the wall
times. XLA is asked for one compute thread (unless ``XLA_FLAGS`` is set or jax already runs).
``jax`` and ``blackjax`` are optional (the ``[bench]`` extra): :func:`blackjax_available` says
whether they are installed.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import torch

from ..infer.mcmc import HMCRun
from ..infer.subset_posterior import SubsetPosterior, diagonal_gaussian_params

__all__ = ["blackjax_available", "run_blackjax_nuts"]


def blackjax_available() -> str | None:
    """``None`` when ``jax`` and ``blackjax`` are installed, else why not (for the skip message).

    Looks the packages up without importing them: jax reads its thread settings when it starts.
    """
    missing = [name for name in ("jax", "blackjax") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (the optional extra: pip install 'pyro_mmvae[bench]')"
    return None


def single_threaded_xla() -> None:
    """Ask XLA for one compute thread (as the torch samplers get), unless jax already started or
    ``XLA_FLAGS`` is set by the user."""
    import os
    import sys

    if "jax" not in sys.modules and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _gaussian_parameters(target: SubsetPosterior) -> tuple[np.ndarray, ...]:
    """``(prior_loc (N, D), prior_scale (N, D), locs (N, |S|, D), scales (N, |S|, D))`` as float32 arrays."""
    if target.mask is not None:
        raise ValueError("the BlackJAX reference takes targets without a per-point mask")
    n, d = target.num_data, target.latent_dim
    prior = diagonal_gaussian_params(target.prior)
    if prior is None or not target.is_gaussian:
        raise TypeError("the BlackJAX reference needs a Gaussian prior and Gaussian experts")
    pl, ps = (p.expand(n, d).detach().cpu().float().numpy() for p in prior)
    params = [diagonal_gaussian_params(e) for e in target.experts.values()]
    locs = np.stack([p[0].detach().cpu().float().numpy() for p in params], axis=1)
    scales = np.stack([p[1].detach().cpu().float().numpy() for p in params], axis=1)
    return pl, ps, locs, scales


def run_blackjax_nuts(
    target: SubsetPosterior,
    initial_params: torch.Tensor,
    inverse_mass_matrix: torch.Tensor,
    num_samples: int,
    warmup_steps: int,
    seed: int = 0,
    target_accept_prob: float = 0.8,
) -> HMCRun:
    """Window adaptation + NUTS per target and chain, vmapped over both and jitted.

    Args:
        target: a Gaussian :class:`~pyro_mmvae.infer.subset_posterior.SubsetPosterior` (N targets in D).
        initial_params: starting points ``(C, N, D)``; inverse_mass_matrix: initial diagonal metric ``(N, D)``.
        num_samples, warmup_steps: per chain, as for BatchedHMC.

    Returns:
        :class:`~pyro_mmvae.infer.mcmc.HMCRun` with ``samples`` ``(C, S, N, D)``, ``num_steps`` ``(C, S, N)``
        (leapfrog steps per draw), ``diverging`` ``(C, S, N)``, ``step_size`` ``(C, N)``, wall times without
        compilation, and in ``extra``: ``compile_s``; ``warmup_grad_evals`` and ``sampling_grad_evals``
        (the gradients each chain's own trajectories needed, summed over chains and targets);
        ``executed_grad_evals`` and ``executed_warmup_grad_evals`` (what the lockstep batch computed: per
        iteration the longest trajectory times C x N); ``executed_steps_per_sampling_iteration``.
    """
    single_threaded_xla()
    import blackjax
    import jax
    import jax.numpy as jnp

    pl, ps, locs, scales = _gaussian_parameters(target)
    z0 = initial_params.detach().cpu().float().numpy()  # (C, N, D)
    imm = inverse_mass_matrix.detach().cpu().float().expand(target.num_data, target.latent_dim).numpy()
    num_chains, n = z0.shape[0], z0.shape[1]
    num_experts = locs.shape[1]

    def logdensity(z, pl, ps, locs, scales):
        prior = -0.5 * jnp.sum(((z - pl) / ps) ** 2 + 2 * jnp.log(ps))
        experts = -0.5 * jnp.sum(((z - locs) / scales) ** 2 + 2 * jnp.log(scales))
        return (1 - num_experts) * prior + experts

    def warm_one(key, z, pl, ps, locs, scales, imm):
        fn = lambda x: logdensity(x, pl, ps, locs, scales)  # noqa: E731
        adapt = blackjax.window_adaptation(
            blackjax.nuts, fn, initial_inverse_mass_matrix=imm, target_acceptance_rate=target_accept_prob
        )
        (state, params), info = adapt.run(key, z, num_steps=warmup_steps)
        return state, params["step_size"], params["inverse_mass_matrix"], info.info.num_integration_steps

    def sample_one(key, state, step_size, inv_mass, pl, ps, locs, scales):
        fn = lambda x: logdensity(x, pl, ps, locs, scales)  # noqa: E731
        step = blackjax.nuts(fn, step_size=step_size, inverse_mass_matrix=inv_mass).step

        def body(state, key):
            state, info = step(key, state)
            return state, (state.position, info.num_integration_steps, info.is_divergent)

        _, out = jax.lax.scan(body, state, jax.random.split(key, num_samples))
        return out

    # vmap over targets (inner, sharing nothing) and chains (outer, sharing the target's parameters)
    per_target = (0, 0, 0, 0, 0, 0, 0)
    warm = jax.jit(jax.vmap(jax.vmap(warm_one, per_target), (0, 0, None, None, None, None, None)))
    per_state = (0, 0, 0, 0, 0, 0, 0, 0)
    sample = jax.jit(jax.vmap(jax.vmap(sample_one, per_state), (0, 0, 0, 0, None, None, None, None)))

    key = jax.random.PRNGKey(seed)
    k_warm, k_sample = jax.random.split(key)
    warm_keys = jax.random.split(k_warm, num_chains * n).reshape(num_chains, n, -1)
    sample_keys = jax.random.split(k_sample, num_chains * n).reshape(num_chains, n, -1)
    args = (warm_keys, jnp.asarray(z0), pl, ps, locs, scales, imm)

    t0 = time.perf_counter()
    warm_c = warm.lower(*args).compile()
    state_shape = jax.eval_shape(warm, *args)
    sample_args_shape = (sample_keys, state_shape[0], state_shape[1], state_shape[2], pl, ps, locs, scales)
    sample_c = sample.lower(*sample_args_shape).compile()
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    state, step_size, inv_mass, warm_steps = jax.block_until_ready(warm_c(*args))
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    draws, steps, div = jax.block_until_ready(sample_c(sample_keys, state, step_size, inv_mass, pl, ps, locs, scales))
    sample_s = time.perf_counter() - t0

    warm_steps, steps = np.array(warm_steps), np.array(steps)  # (C, N, W), (C, N, S)
    # under vmap every iteration runs the batch's longest trajectory for all C x N chains
    executed_warm, executed_sample = warm_steps.max(axis=(0, 1)), steps.max(axis=(0, 1))
    batch = num_chains * n
    return HMCRun(
        samples=torch.from_numpy(np.array(draws)).transpose(1, 2),  # (C, N, S, D) -> (C, S, N, D)
        num_steps=torch.from_numpy(steps).transpose(1, 2),
        diverging=torch.from_numpy(np.array(div)).transpose(1, 2),
        accept_prob=None,
        step_size=torch.from_numpy(np.array(step_size)),
        wall_time=warm_s + sample_s,
        sampling_time=sample_s,
        num_grad_evals=int(warm_steps.sum() + steps.sum()),
        extra={
            "compile_s": compile_s,
            "warmup_grad_evals": int(warm_steps.sum()),
            "sampling_grad_evals": int(steps.sum()),
            "executed_grad_evals": int(batch * (executed_warm.sum() + executed_sample.sum())),
            "executed_warmup_grad_evals": int(batch * executed_warm.sum()),
            "executed_steps_per_sampling_iteration": float(executed_sample.mean()),
        },
    )
