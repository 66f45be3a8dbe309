"""``BatchedHMC``: many independent HMC chains on many independent targets, as ONE Pyro kernel.

Pyro's ``HMC``/``NUTS`` treat everything under a plate as one joint target: one step size, one
mass matrix scale, one trajectory and one accept/reject for all N data points, so the hardest
target sets the pace for all of them. Here every entry of the state's batch shape is its own target:
the state ``z`` has shape ``(*B, D)`` (for subset posteriors ``B = (C, N)``: C chains × N data
points) and the potential returns ``(*B,)``. Per target the kernel has

- its own Metropolis accept/reject;
- its own step size, adapted by dual averaging
  (:class:`~pyro_mmvae.infer.mcmc.adaptation.DualAveraging`; target acceptance 0.65 with ``"steps"``
  trajectories, 0.8 with ``"uturn"``) and
  re-initialised by the doubling/halving heuristic after every metric update;
- its own diagonal inverse mass matrix, estimated from the draws
  (:class:`~pyro_mmvae.infer.mcmc.adaptation.WelfordVariance`, shrunk towards 1e-3 as in Stan) in
  Stan-style windows (:func:`~pyro_mmvae.infer.mcmc.adaptation.adaptation_windows`: fast init buffer
  25, slow windows 50, 100, 200, ... doubling, terminal buffer 35 — shorter than Stan's 75 / 25 / 50,
  because the chains start in the bulk with a moment-matched metric; short warmups keep a longer
  terminal buffer);
- its own integration time, set one of two ways (``trajectory=``):

  - ``"steps"`` (default): every target takes the SAME number L of leapfrog steps per iteration, so
    no target idles while another finishes a longer trajectory. L = round(T / median ε) with T =
    ``trajectory_time`` = 2.0 in the adapted metric's units. After warmup each step size is capped at
    T / L, and every iteration jitters it by U[1 − j, 1 + j] (``step_jitter`` j = 0.25), so integration
    times spread over [0.75 T, 1.25 T] = [1.5, 2.5]. Why there: on a Gaussian in a matching metric the
    dynamics rotate each coordinate by the angle t, so draws have lag-1 autocorrelation E[cos t]
    ≈ −0.4 for the mean (anti-correlated: bulk ESS per draw above 1) and E[cos² t] ≈ 0.22 for the
    squares (|z| and the tails still mix; at t = π they would not move at all). No warmup iteration
    is spent measuring U-turns. Right for near-Gaussian targets in a good diagonal metric — the
    subset posteriors of unimodal flow experts with a moment-matched starting metric (measured:
    ``benchmarks/results/subset_posterior_cpu.md``);
  - ``"uturn"``: per-target lengths learned from U-turns during warmup
    (:class:`~pyro_mmvae.infer.mcmc.adaptation.TrajectoryLengthAdapter`): every few warmup iterations
    each trajectory is followed until it makes a U-turn, T_u = mean + one standard deviation of those
    U-turn times, and each iteration integrates for a time t ~ Uniform[(1 − j) c T_u, (1 + j) c T_u]
    (``trajectory_scale`` c = 0.4, ``jitter`` j = 0.3), i.e. ``ceil(t / ε)`` leapfrog steps (why these
    defaults: :mod:`pyro_mmvae.infer.mcmc.adaptation.trajectory`). For targets whose scales the
    diagonal metric does not capture (strong correlations, very non-Gaussian shapes);
- divergence detection: a trajectory whose energy error exceeds ``max_energy_error`` (1000) or
  becomes non-finite is stopped and its proposal rejected;
- escape detection: a target whose chain moves farther than ``escape_radius`` initial standard
  deviations (the square root of the initial inverse mass matrix) from its starting point in some
  coordinate is frozen there and flagged (``escaped``). That is what an improper target — a product of
  experts that does not fall off faster than p(z)^{|S|−1} grows — does: its chain runs off to
  infinity with a collapsing step size. Frozen targets no longer take part in the loop length or the
  adaptation, so they cannot make every other target run ``max_num_steps`` leapfrog steps.

All targets advance in lockstep. With ``"uturn"`` one iteration after warmup runs
``max_b ceil((1 + j) c T_u,b / ε_b)`` leapfrog steps for all of them and freezes each target
(``torch.where``) once its own number of steps is done, so the cost of an iteration is set by the
longest trajectory; during warmup every ``uturn_every``-th iteration follows every target to its
U-turn (1.5 T_u at the averaged step size ε̄, which is also used for that iteration's proposal); the
other warmup iterations cap the loop at the ``warmup_loop_quantile`` of the targets' needs, because
right after each dual-averaging restart a few targets at a time have a tiny step size.
Nothing in an iteration reads a tensor on the host
(no ``.item()``, no Python ``bool`` of a tensor): the loop lengths are Python ints refreshed every
``refresh_interval`` warmup iterations and once at the end of warmup, and ``logging()`` (which
``pyro.infer.MCMC`` calls every iteration) returns figures refreshed every ``log_every`` iterations.
Device and dtype follow the state tensor; randomness comes from the global torch RNG.

Chains: ``pyro.infer.MCMC`` runs ONE chain of this kernel (``num_chains=1``); C chains are a batch
dimension of the state. Pass ``initial_params={"z": z0}`` with ``z0`` of shape ``(C, N, D)``, or give
the kernel a target with ``initial_points(C)`` and ``num_chains=C``.
:func:`~pyro_mmvae.infer.mcmc.sample_subset_posterior` does this and returns draws ``(C, S, N, D)``.

``MCMC`` never calls ``end_warmup``: the kernel counts its own warmup iterations from ``setup``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

from ...errors import InputError, check_float, check_int
from ...sites import LATENT_SITE
from ..properness import HasInitialPoints, HasLogProbAndGrad, SamplerTarget
from .adaptation import (
    INITIAL_UTURN_TIME,
    AdaptationWindows,
    DualAveraging,
    TrajectoryLengthAdapter,
    WelfordVariance,
    shrink_variance,
)

__all__ = ["BatchedHMC"]


class BatchedHMC(MCMCKernel):
    """HMC with per-target accept/reject, step size, diagonal mass matrix and trajectory length.

    Args:
        target: a :class:`~pyro_mmvae.infer.properness.SamplerTarget`, ``log_prob(z) -> (*B,)`` (e.g. a
            :class:`~pyro_mmvae.infer.subset_posterior.SubsetPosterior`), optionally
            :class:`~pyro_mmvae.infer.properness.HasInitialPoints`
            (``initial_points(num_chains) -> (C, N, D)``) for default starting points, and optionally
            :class:`~pyro_mmvae.infer.properness.HasLogProbAndGrad` (``log_prob_and_grad(z)``, used
            instead of autograd at every leapfrog step).
        potential_fn: alternatively the per-target potential energy ``z (*B, D) -> (*B,)`` (−log density).
        num_chains: chains stacked as the leading batch dimension when starting points come from
            ``target.initial_points``; ignored when ``initial_params`` are given.
        param_name: the name of the state in Pyro's params dict.
        step_size: initial step size (refined by a doubling/halving heuristic before warmup).
        inverse_mass_matrix: initial diagonal inverse mass matrix, broadcastable to the state
            ``(*B, D)`` (e.g. a rough posterior variance); default ones. It only sets where the first
            adaptation window starts from, but badly scaled targets sampled with the identity
            metric need many tiny leapfrog steps until the first window ends.
        target_accept_prob: dual-averaging target of the mean acceptance probability; default 0.65
            for ``"steps"`` (the averaged step size it leaves realises ~0.8 on the benchmark targets: a
            larger step and three steps instead of four) and 0.8 for ``"uturn"``.
        adapt_step_size, adapt_mass_matrix, adapt_trajectory: switch the three adaptations.
        trajectory: ``"steps"`` (the same number of leapfrog steps for every target, from the median
            step size) or ``"uturn"`` (per-target integration times learned from U-turns); see above.
        trajectory_time: ``"steps"``: the integration time T the shared number of steps L aims at for the
            median target; after warmup step sizes are capped at T / L.
        step_jitter: ``"steps"``: every iteration multiplies each target's step size by U[1 − j, 1 + j].
        num_steps: ``adapt_trajectory=False``: the number of leapfrog steps (``"steps"``), or their mean
            (``"uturn"``, with the same jitter as the times). With ``"uturn"`` adaptation the first
            trajectories use T_u = 3.5, right for a unit-scale target in the initial metric, until
            U-turns are measured.
        max_num_steps: cap on leapfrog steps per iteration.
        trajectory_scale: c, the mean integration time is c × T_u (T_u: mean + sd of the U-turn times).
        jitter: j in (0, 1]: integration times are uniform on [(1 − j) c T_u, (1 + j) c T_u].
        max_energy_error: energy error above which a trajectory is divergent.
        init_buffer, term_buffer, base_window: the mass-matrix adaptation windows (Stan's schedule;
            Stan's own values are 75, 50 and 25).
        refresh_interval: warmup iterations between (host-synchronising) updates of the loop length.
        uturn_every: ``"uturn"``: every how many warmup iterations a trajectory is followed to its
            U-turn (those iterations cost ~1.5 T_u / ε leapfrog steps instead of ~0.4 T_u / ε on average).
        warmup_loop_quantile: ``"uturn"``: during warmup the loop length is this quantile (not the max)
            over targets of their needed steps; the few targets above it get shorter warmup
            trajectories. After warmup the loop always covers every target.
        pool_metric_dim: optionally a batch dimension of the state (0 for the chains of ``(C, N, D)``)
            over which each window's variance estimate is pooled, so that the chains of one data
            point share their metric; ``None`` (default): every target has its own.
        escape_radius: a chain farther than this many initial standard deviations from its start in
            some coordinate is frozen and flagged as escaped (``None``: never).
        log_every: iterations between refreshes of the figures returned by :meth:`logging`.
        initial_params: ``{param_name: z0}``, ``z0`` of shape ``(*B, D)``.
    """

    def __init__(
        self,
        target: SamplerTarget | None = None,
        *,
        potential_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_chains: int = 4,
        param_name: str = LATENT_SITE,
        step_size: float = 0.5,
        inverse_mass_matrix: torch.Tensor | None = None,
        target_accept_prob: float | None = None,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = True,
        adapt_trajectory: bool = True,
        trajectory: str = "steps",
        trajectory_time: float = 2.0,
        step_jitter: float = 0.25,
        num_steps: int = 10,
        max_num_steps: int = 256,
        trajectory_scale: float = 0.4,
        jitter: float = 0.3,
        max_energy_error: float = 1000.0,
        init_buffer: int = 25,
        term_buffer: int = 35,
        base_window: int = 50,
        refresh_interval: int = 10,
        uturn_every: int = 3,
        warmup_loop_quantile: float = 0.85,
        pool_metric_dim: int | None = None,
        escape_radius: float | None = 1000.0,
        log_every: int = 25,
        initial_params: dict | None = None,
    ):
        if (target is None) == (potential_fn is None):
            raise ValueError("give exactly one of `target` (with log_prob) and `potential_fn`")
        if target is not None and not isinstance(target, SamplerTarget):
            raise TypeError(f"target must have a log_prob(z) method, got {type(target)}")
        num_chains = check_int(num_chains, "num_chains", minimum=1)
        if trajectory not in ("uturn", "steps"):
            raise InputError(f"trajectory must be 'uturn' or 'steps', got {trajectory!r}")
        if target_accept_prob is None:
            target_accept_prob = 0.65 if trajectory == "steps" else 0.8
        if not 0 < check_float(target_accept_prob, "target_accept_prob") < 1:
            raise InputError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}")
        if not 1 <= check_int(num_steps, "num_steps") <= check_int(max_num_steps, "max_num_steps"):
            raise InputError(f"need 1 <= num_steps <= max_num_steps, got {num_steps} and {max_num_steps}")
        check_float(step_size, "step_size", positive=True)
        check_float(trajectory_scale, "trajectory_scale", positive=True)
        if not 0 < check_float(jitter, "jitter") <= 1:
            raise InputError(f"jitter must be in (0, 1], got {jitter}")
        if escape_radius is not None and not escape_radius > 0:
            raise InputError(f"escape_radius must be positive or None, got {escape_radius}")
        self.target = target
        self._potential = potential_fn if potential_fn is not None else (lambda z: -target.log_prob(z))
        # a target that differentiates itself (SubsetPosterior: closed-form Gaussians, fused MAF sweeps)
        # skips building an autograd graph at every leapfrog step
        self._log_prob_and_grad = target.log_prob_and_grad if isinstance(target, HasLogProbAndGrad) else None
        self.num_chains = int(num_chains)
        self.param_name = param_name
        self.init_step_size = float(step_size)
        self.init_inverse_mass = inverse_mass_matrix
        self.target_accept_prob = float(target_accept_prob)
        self.adapt_step_size, self.adapt_mass_matrix = adapt_step_size, adapt_mass_matrix
        self.adapt_trajectory = adapt_trajectory
        self.trajectory = trajectory
        self.trajectory_time = check_float(trajectory_time, "trajectory_time", positive=True)
        if not 0 <= check_float(step_jitter, "step_jitter") < 1:
            raise InputError(f"step_jitter must be in [0, 1), got {step_jitter}")
        self.step_jitter = float(step_jitter)
        self.num_steps, self.max_num_steps = int(num_steps), int(max_num_steps)
        self.trajectory_scale, self.jitter = float(trajectory_scale), float(jitter)
        self.max_energy_error = float(max_energy_error)
        self.init_buffer, self.term_buffer, self.base_window = init_buffer, term_buffer, base_window
        self.refresh_interval, self.log_every = max(1, int(refresh_interval)), max(1, int(log_every))
        self.uturn_every = max(1, int(uturn_every))
        self.warmup_loop_quantile = float(warmup_loop_quantile)
        self.pool_metric_dim = pool_metric_dim
        self.escape_radius = None if escape_radius is None else float(escape_radius)
        # the MCMCKernel contract: no Pyro model, the state already lives in unconstrained space
        self.model = None
        self.transforms = {}
        self._initial_params = initial_params
        self._da = DualAveraging(self.target_accept_prob)
        self.setup(0)

    # ------------------------------------------------------------------ MCMCKernel contract
    @property
    def initial_params(self) -> dict:
        if self._initial_params is None:
            if not isinstance(self.target, HasInitialPoints):
                raise ValueError(
                    "no initial_params: pass initial_params={name: z0} to the kernel or to pyro.infer.MCMC, "
                    "or give a target with initial_points(num_chains)"
                )
            self._initial_params = {self.param_name: self.target.initial_points(self.num_chains)}
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: dict) -> None:
        self._initial_params = params

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        """Reset every adaptation; the next :meth:`sample` call starts warmup from its params."""
        self._warmup_steps = int(warmup_steps)
        self._windows = AdaptationWindows(warmup_steps, self.init_buffer, self.term_buffer, self.base_window)
        self._t = 0
        self._z = None
        self._stats = {"accept_prob": [], "diverging": [], "num_steps": []}
        self._log = {}
        self._log_acc, self._log_n, self._num_divergent_draws = None, 0, None
        self.num_grad_evals = 0
        self.num_warmup_grad_evals = 0
        self._eps_cap = float("inf")  # "steps": T / L, set when warmup ends

    def cleanup(self) -> None:
        """Nothing to release; sample statistics stay available until the next :meth:`setup`."""

    def end_warmup(self) -> None:
        """Finish adaptation now (``MCMC`` never calls this: warmup ends after ``warmup_steps`` samples)."""
        if self._z is not None and not self._warm_done:
            self._finish_warmup()

    def logging(self) -> dict:
        """Figures for the progress bar, refreshed every ``log_every`` iterations (JSON-serialisable)."""
        return dict(self._log)

    def diagnostics(self) -> dict:
        """``divergences``: post-warmup draw indices where some target diverged (what ``az.from_pyro``
        reads); ``acceptance rate``: the mean acceptance probability; ``divergent transitions``: their count
        over all targets; ``escaped targets``: how many targets were frozen after escaping."""
        escaped = 0 if self._z is None else int(self._escaped.sum())
        if not self._stats["diverging"]:
            return {
                "divergences": [],
                "acceptance rate": float("nan"),
                "divergent transitions": 0,
                "escaped targets": escaped,
            }
        div = torch.stack(self._stats["diverging"]).flatten(1)
        return {
            "divergences": div.any(1).nonzero().flatten().tolist(),
            "acceptance rate": float(torch.stack(self._stats["accept_prob"]).mean()),
            "divergent transitions": int(div.sum()),
            "escaped targets": escaped,
        }

    # ------------------------------------------------------------------ public state
    @property
    def step_size(self) -> torch.Tensor:
        """Per-target step size ``(*B,)`` (the dual-averaged one after warmup)."""
        return self._eps if self._warm_done else self._log_eps.exp()

    @property
    def inverse_mass_matrix(self) -> torch.Tensor:
        """Per-target diagonal inverse mass matrix ``(*B, D)``."""
        return self._inv_mass

    @property
    def trajectory_length(self) -> torch.Tensor:
        """Per-target mean integration time ``(*B,)``: ``trajectory_scale`` × T_u (``"uturn"``), or the
        shared number of steps × the (capped) step size (``"steps"``)."""
        if self.trajectory == "steps":
            return self._loop * self.step_size.clamp(max=self._eps_cap)
        return self._trajectory.mean_time

    @property
    def escaped(self) -> torch.Tensor:
        """Bool ``(*B,)``: targets frozen because their chain ran beyond ``escape_radius`` (see the module doc)."""
        return self._escaped

    @property
    def num_loop_steps(self) -> int:
        """Leapfrog steps run per iteration for all targets (the longest target's maximum)."""
        return self._loop

    def sample_stats(self) -> dict[str, torch.Tensor]:
        """Post-warmup statistics: ``accept_prob``, ``diverging``, ``num_steps`` of shape ``(S, *B)``;
        ``step_size``, ``trajectory_length``, ``escaped`` ``(*B,)``; ``inverse_mass_matrix`` ``(*B, D)``."""
        out = {k: torch.stack(v) if v else torch.empty(0) for k, v in self._stats.items()}
        out.update(
            escaped=self.escaped,
            step_size=self.step_size,
            trajectory_length=self.trajectory_length,
            inverse_mass_matrix=self.inverse_mass_matrix,
        )
        return out

    # ------------------------------------------------------------------ numerics
    def _potential_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._log_prob_and_grad is not None:
            lp, g = self._log_prob_and_grad(z.detach())
            self.num_grad_evals += 1
            return -lp, -g
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            u = self._potential(z)
            (g,) = torch.autograd.grad(u.sum(), z)
        self.num_grad_evals += 1
        return u.detach(), g

    def _kinetic(self, p: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self._inv_mass * p * p).sum(-1)

    def _momentum(self) -> torch.Tensor:
        return torch.randn_like(self._z) * self._inv_mass.rsqrt()

    def _set_position(self, z: torch.Tensor) -> None:
        u, g = self._potential_and_grad(z)
        self._z, self._u, self._g = z.detach(), u, g

    def _initialize(self, z: torch.Tensor) -> None:
        if z.dim() < 1 or not z.dtype.is_floating_point:
            raise ValueError(
                f"{self.param_name!r} must be a floating tensor (*batch, D), got {z.dtype} {tuple(z.shape)}"
            )
        self._inv_mass = torch.ones_like(z)
        if self.init_inverse_mass is not None:
            m = torch.as_tensor(self.init_inverse_mass, dtype=z.dtype, device=z.device)
            if not bool((m > 0).all()):
                raise ValueError("inverse_mass_matrix must be positive")
            self._inv_mass = m.expand(z.shape).clone()
        self._set_position(z)
        # a chain beyond this distance from its start (per coordinate) has escaped; fixed for the run
        self._origin = self._z
        self._escape_bound = None if self.escape_radius is None else self.escape_radius * self._inv_mass.sqrt()
        self._escaped = torch.zeros(z.shape[:-1], dtype=torch.bool, device=z.device)
        if self._u.shape != z.shape[:-1]:
            raise ValueError(
                f"the potential must return one value per target, shape {tuple(z.shape[:-1])}, "
                f"got {tuple(self._u.shape)}"
            )
        if not bool(torch.isfinite(self._u).all()):
            bad = (~torch.isfinite(self._u)).nonzero().tolist()[:10]
            raise ValueError(f"the initial point has a non-finite log density for targets {bad}")
        eps0 = torch.full_like(self._u, self.init_step_size)
        self._log_eps = self._find_step_size(eps0).log()
        self._da.reset(self._log_eps)
        self._eps = self._log_eps.exp()
        # T_u starts as that of a standard Gaussian in a matching metric and is measured from the first
        # warmup trajectories on. (Not num_steps × ε: the heuristic's ε is deliberately on the large side.)
        self._trajectory = TrajectoryLengthAdapter(
            self._u, self.trajectory_scale, self.jitter, self.max_num_steps, initial_time=INITIAL_UTURN_TIME
        )
        self._welford = WelfordVariance(self._z)
        self._loop = self._explore_loop = self._fixed_loop()
        self._refresh_loop(self._eps)
        self._warm_done = False
        self._log_acc, self._log_n = torch.zeros_like(self._u), 0
        self._num_divergent_draws = torch.zeros_like(self._u)
        if self._warmup_steps == 0:
            self._finish_warmup()

    def _find_step_size(self, eps: torch.Tensor, rounds: int = 12) -> torch.Tensor:
        """Per target, double or halve ε until one leapfrog step's acceptance crosses 0.8 (Stan's heuristic)."""
        log_target = math.log(0.8)

        def log_accept(eps):
            p = self._momentum()
            e = eps.unsqueeze(-1)
            p_half = p - 0.5 * e * self._g
            u1, g1 = self._potential_and_grad(self._z + e * self._inv_mass * p_half)
            p1 = p_half - 0.5 * e * g1
            d = (self._u + self._kinetic(p)) - (u1 + self._kinetic(p1))
            return torch.nan_to_num(d, nan=-float("inf"))

        grow = log_accept(eps) > log_target
        factor = torch.where(grow, 2.0, 0.5).to(eps.dtype)
        done = torch.zeros_like(grow)
        for _ in range(rounds):
            eps = torch.where(done, eps, eps * factor)
            d = log_accept(eps)
            done = done | torch.where(grow, ~(d > log_target), ~(d < log_target))
        return eps.clamp(1e-10, 1e4)

    def _fixed_loop(self) -> int:
        if self.trajectory == "steps":
            return min(self.max_num_steps, self.num_steps)
        return min(self.max_num_steps, math.ceil((1 + self.jitter) * self.num_steps))

    def _draw_num_steps(self, eps: torch.Tensor) -> torch.Tensor:
        """This iteration's number of leapfrog steps per target (float tensor ``(*B,)``, in ``[1, loop]``)."""
        if self.trajectory == "steps":
            return torch.full_like(eps, float(self._loop))
        mean = self.num_steps * eps if not self.adapt_trajectory else self._trajectory.mean_time
        t = mean * (1.0 + self.jitter * (2.0 * torch.rand_like(eps) - 1.0))
        return torch.ceil(t / eps).clamp(1.0, float(self._loop))

    def _jittered(self, eps: torch.Tensor) -> torch.Tensor:
        """``"steps"`` trajectories: this iteration's step sizes min(ε, T / L)·U[1 − j, 1 + j] (j =
        ``step_jitter``; the cap at ``trajectory_time`` / steps after warmup only, while the step size adapts
        to the uncapped ε before)."""
        if self._warm_done:
            eps = eps.clamp(max=self._eps_cap)
        if self.step_jitter > 0:
            eps = eps * (1.0 + self.step_jitter * (2.0 * torch.rand_like(eps) - 1.0))
        return eps

    def _transition(self, eps: torch.Tensor, explore: bool):
        """One HMC iteration for every target.

        Returns the proposal's acceptance probability ``(*B,)``, divergence flags ``(*B,)``, number of
        steps ``(*B,)``, and (when ``explore``) the first U-turn times with a validity mask.
        ``explore`` (warmup with trajectory adaptation) integrates every target for the whole loop to
        observe its U-turn; the proposal is still the state after the target's own number of steps.
        """
        z0, u0, g0 = self._z, self._u, self._g
        inv_mass = self._inv_mass
        p0 = self._momentum()
        h0 = u0 + self._kinetic(p0)
        n = self._draw_num_steps(eps)
        if self.trajectory == "steps":
            eps = self._jittered(eps)
        e = eps.unsqueeze(-1)
        z, p, u, g, h = z0, p0, u0, g0, h0
        diverged = torch.zeros_like(u0, dtype=torch.bool)
        frozen = self._escaped
        if explore:
            prop = (z0, u0, g0, h0, diverged)
            turned = torch.zeros_like(diverged)
            uturn_time = torch.zeros_like(u0)
        loop = self._explore_loop if explore else self._loop
        for step in range(1, loop + 1):
            active = ~diverged & ~frozen if explore else (~diverged & ~frozen & (step <= n))
            p_half = p - 0.5 * e * g
            z_new = z + e * inv_mass * p_half
            u_new, g_new = self._potential_and_grad(z_new)
            p_new = p_half - 0.5 * e * g_new
            h_new = u_new + self._kinetic(p_new)
            ok = (h_new - h0) <= self.max_energy_error  # False for NaN as well
            diverged = diverged | (active & ~ok)
            move = active & ok
            m = move.unsqueeze(-1)
            z, p, g = torch.where(m, z_new, z), torch.where(m, p_new, p), torch.where(m, g_new, g)
            u, h = torch.where(move, u_new, u), torch.where(move, h_new, h)
            if explore:
                now = move & ~turned & (((z - z0) * p).sum(-1) < 0)
                uturn_time = torch.where(now, step * eps, uturn_time)
                turned = turned | now
                at = step == n
                a = at.unsqueeze(-1)
                prop = (
                    torch.where(a, z, prop[0]),
                    torch.where(at, u, prop[1]),
                    torch.where(a, g, prop[2]),
                    torch.where(at, h, prop[3]),
                    torch.where(at, diverged, prop[4]),
                )
        if not explore:
            prop = (z, u, g, h, diverged)
        z1, u1, g1, h1, div = prop
        accept_prob = torch.where(div | frozen, 0.0, torch.exp((h0 - h1).clamp(max=0.0)))
        accept_prob = torch.nan_to_num(accept_prob, nan=0.0)
        accept = torch.rand_like(accept_prob) < accept_prob
        a = accept.unsqueeze(-1)
        self._z, self._u, self._g = torch.where(a, z1, z0), torch.where(accept, u1, u0), torch.where(a, g1, g0)
        if self._escape_bound is not None:
            self._escaped = self._escaped | ((self._z - self._origin).abs() > self._escape_bound).any(-1)
        uturn = None
        if explore:
            # a trajectory that never turned within the loop gives a lower bound (censored): the loop
            # then grows at the next refresh; one that diverged before turning says nothing.
            censored = ~turned & ~diverged
            uturn = (torch.where(turned, uturn_time, loop * eps), turned | censored)
        return accept_prob, div, n, uturn

    # ------------------------------------------------------------------ adaptation
    def _refresh_loop(self, eps: torch.Tensor, final: bool = False) -> None:
        """Update T_u from the recorded U-turns, and the loop lengths (the one host sync of a refresh).

        T_u changes where at least 4 U-turns were recorded since its last update (any number when
        ``final``). The plain loop covers the longest jittered trajectory, (1 + j) c T_u; exploring
        warmup iterations run 1.5 T_u so that U-turns are observed.
        """
        if not self.adapt_trajectory:
            return
        if self.trajectory == "steps":
            live = eps.flatten()[~self._escaped.flatten()]
            if live.numel() == 0:
                self._loop = self._explore_loop = 1
                return
            n = int(torch.round(self.trajectory_time / live.median()).clamp(1, self.max_num_steps))
            self._loop = self._explore_loop = n
            self._eps_cap = self.trajectory_time / n
            return
        self._trajectory.update(final)
        # during warmup a few targets at a time have a transiently tiny dual-averaging step size;
        # letting them set everyone's loop would triple the warmup cost. They are clamped instead
        # (shorter warmup trajectories; U-turns are measured on exploring iterations only), while
        # exploring iterations use the averaged step size, which has no such outliers.
        self._loop, self._explore_loop = self._trajectory.loop_lengths(
            eps,
            self._explore_eps(),
            live=~self._escaped.flatten(),
            quantile=None if final else self.warmup_loop_quantile,
        )

    def _explore_eps(self) -> torch.Tensor:
        """Step sizes of exploring iterations: the dual-averaged ε̄ (the current ε before any update)."""
        if self.adapt_step_size and self._da.has_updates:
            return self._da.log_eps_bar.exp()
        return self._log_eps.exp()

    def _update_mass(self) -> None:
        """End of a slow window: the window's (shrunk) variance becomes the metric; restart the rest."""
        # pool_metric_dim: one estimate from the draws of all chains of a target (warmup only: after
        # warmup the chains stay independent), robust to one chain that mixed slowly during the window
        var, n = self._welford.variance(self.pool_metric_dim)
        var = shrink_variance(var, n)
        ratio = (self._inv_mass / var).sqrt()
        # rescale the time and step scales to the new metric: both are set by how far the metric
        # moved (largest posterior scale for T, smallest for ε), then refined by measurements.
        self._trajectory.rescale(ratio.amin(-1))
        eps = self._log_eps.exp() * ratio.amax(-1)
        self._inv_mass = var
        self._welford.reset()
        self._trajectory.reset_statistics()
        if self.adapt_step_size:
            self._log_eps = self._find_step_size(eps).log()
            self._da.reset(self._log_eps)

    def _finish_warmup(self) -> None:
        self.num_warmup_grad_evals = self.num_grad_evals
        self._eps = self._explore_eps()
        self._refresh_loop(self._eps, final=True)
        self._warm_done = True

    def _adapt(self, accept_prob: torch.Tensor, uturn) -> None:
        t = self._t  # index of the warmup iteration just done
        if self.adapt_step_size and uturn is None:  # exploring iterations do not use the iterate ε
            self._log_eps = torch.where(self._escaped, self._log_eps, self._da.step(accept_prob))
        if uturn is not None:
            self._trajectory.record(*uturn)
        if self.adapt_mass_matrix and self._windows.in_window(t):
            self._welford.update(self._z)
        done = t + 1
        if self.adapt_mass_matrix and self._windows.ends_window(done):
            self._update_mass()
            self._refresh_loop(self._log_eps.exp())
        elif done % self.refresh_interval == 0 and done < self._warmup_steps:
            self._refresh_loop(self._log_eps.exp())
        if done == self._warmup_steps:
            self._finish_warmup()

    # ------------------------------------------------------------------ the kernel step
    def sample(self, params: dict) -> dict:
        z = params[self.param_name]
        if self._z is None:
            self._initialize(z)
        elif z is not self._z:
            self._set_position(z)
        warm = not self._warm_done
        explore = warm and self.adapt_trajectory and self.trajectory == "uturn" and self._t % self.uturn_every == 0
        if explore:
            eps = self._explore_eps()
        else:
            eps = self._log_eps.exp() if warm else self._eps
        accept_prob, div, n, uturn = self._transition(eps, explore=explore)
        if warm:
            self._adapt(accept_prob, uturn)
        else:
            self._stats["accept_prob"].append(accept_prob)
            self._stats["diverging"].append(div)
            self._stats["num_steps"].append(n.to(torch.int32))
            self._num_divergent_draws = self._num_divergent_draws + div.to(self._u.dtype)
        self._t += 1
        self._log_acc, self._log_n = self._log_acc + accept_prob, self._log_n + 1
        if self._t % self.log_every == 0:
            self._refresh_log()
        return {**params, self.param_name: self._z}

    def _refresh_log(self) -> None:
        eps = self.step_size
        self._log = {
            "step size": f"{float(eps.median()):.2e}",
            "acc. prob": f"{float(self._log_acc.mean()) / max(self._log_n, 1):.3f}",
            "steps": self._loop,
            "divergences": int(self._num_divergent_draws.sum()),
            "escaped": int(self._escaped.sum()),
        }
        self._log_acc, self._log_n = torch.zeros_like(self._log_acc), 0
