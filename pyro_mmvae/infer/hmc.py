"""``BatchedHMC``: many independent HMC chains on many independent targets, as ONE Pyro kernel.

Pyro's ``HMC``/``NUTS`` treat everything under a plate as one joint target: one step size, one
mass matrix scale, one trajectory and one accept/reject for all N data points, so the hardest
target sets the pace for all of them. Here every entry of the state's batch shape is its own target:
the state ``z`` has shape ``(*B, D)`` (for subset posteriors ``B = (C, N)``: C chains × N data
points) and the potential returns ``(*B,)``. Per target the kernel has

- its own Metropolis accept/reject;
- its own step size, adapted by dual averaging (Hoffman & Gelman 2014, Alg. 5; target acceptance
  0.8 by default) and re-initialised by the doubling/halving heuristic after every metric update;
- its own diagonal inverse mass matrix, estimated from the draws in Stan-style windows (fast init
  buffer 75, slow windows 25, 50, 100, ... doubling, terminal buffer 50; the variance is shrunk
  towards 1e-3 as in Stan; short warmups keep a longer terminal buffer, see
  :func:`adaptation_windows`);
- its own trajectory length, learned from U-turns during warmup (in the spirit of eHMC, Wu, Stoehr &
  Robert 2018): every few warmup iterations each trajectory is followed until it makes a U-turn
  (first ℓ with (z_ℓ − z_0) · p_ℓ < 0: the distance from the start, in the mass-matrix metric, stops
  growing), and T_u = mean + one standard deviation of those U-turn times. Each iteration then
  integrates for a time t ~ Uniform[(1 − j) c T_u, (1 + j) c T_u] (``trajectory_scale`` c = 0.4,
  ``jitter`` j = 0.3), i.e. ``ceil(t / ε)`` leapfrog steps. Why: on a Gaussian in the adapted metric
  the dynamics rotate each coordinate by the angle t, so draws have lag-1 autocorrelation E[cos t]
  for the mean and E[cos² t] for the variance, and T_u ≈ 3.3-3.6 for D ≥ 2. With these defaults
  t ∈ [1.0, 1.8] around π/2: E[cos t] ≈ 0.17, E[cos² t] ≈ 0.08. "Uniform up to the U-turn"
  (c = 0.5, j = 1) gives E[cos t] = 0 but E[cos² t] = 1/2, and a longer loop. Measured on the
  benchmark's flow targets (N = 200, ESS per 1000 sampling gradients, min over targets; bulk / sd /
  tail): c, j = 0.4, 0.3: 391 / 145 / 250; 0.45, 0.5: 378 / 96 / 219; 0.5, 1 (uniform to the
  U-turn): 290 / 47 / 104; on Gaussian targets (N = 50, D = 20): 469 / 202 / 339 vs 408 / 87 / 196;
- divergence detection: a trajectory whose energy error exceeds ``max_energy_error`` (1000) or
  becomes non-finite is stopped and its proposal rejected;
- escape detection: a target whose chain moves farther than ``escape_radius`` initial standard
  deviations (the square root of the initial inverse mass matrix) from its starting point in some
  coordinate is frozen there and flagged (``escaped``). That is what an improper target — a product of
  experts that does not fall off faster than p(z)^{|S|−1} grows — does: its chain runs off to
  infinity with a collapsing step size. Frozen targets no longer take part in the loop length or the
  adaptation, so they cannot make every other target run ``max_num_steps`` leapfrog steps.

All targets advance in lockstep: after warmup one iteration runs ``max_b ceil((1 + j) c T_u,b / ε_b)``
leapfrog steps for all of them and freezes each target (``torch.where``) once its own number of
steps is done, so the cost of an iteration is set by the longest trajectory. During warmup every
``uturn_every``-th iteration follows every target to its U-turn (1.5 T_u at the averaged step size
ε̄, which is also used for that iteration's proposal); the other warmup iterations cap the loop at
the ``warmup_loop_quantile`` of the targets' needs, because right after each dual-averaging restart
a few targets at a time have a tiny step size. Nothing in an iteration reads a tensor on the host
(no ``.item()``, no Python ``bool`` of a tensor): the loop lengths are Python ints refreshed every
``refresh_interval`` warmup iterations and once at the end of warmup, and ``logging()`` (which
``pyro.infer.MCMC`` calls every iteration) returns figures refreshed every ``log_every`` iterations.
Device and dtype follow the state tensor; randomness comes from the global torch RNG.

Chains: ``pyro.infer.MCMC`` runs ONE chain of this kernel (``num_chains=1``); C chains are a batch
dimension of the state. Pass ``initial_params={"z": z0}`` with ``z0`` of shape ``(C, N, D)``, or give
the kernel a target with ``initial_points(C)`` and ``num_chains=C``. :func:`sample_subset_posterior`
does this and returns draws ``(C, S, N, D)``.

``MCMC`` never calls ``end_warmup``: the kernel counts its own warmup iterations from ``setup``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pyro
import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

__all__ = [
    "BatchedHMC",
    "HMCRun",
    "adaptation_windows",
    "run_pyro_nuts",
    "sample_subset_posterior",
]


def adaptation_windows(
    warmup_steps: int, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25
) -> list[tuple[int, int]]:
    """Stan's slow mass-matrix windows ``[(start, end), ...]`` (iteration indices, end exclusive).

    Fewer than 20 warmup steps: no window (step size only). A window is stretched to the terminal
    buffer when the next (doubled) one would not fit. When the three defaults do not fit, the init
    buffer becomes 15 % of the warmup, one window fills the middle, and the terminal buffer keeps
    a third of the warmup (at most ``term_buffer``; Stan keeps 10 %): after the last metric update
    the step size's dual averaging restarts, and with Stan's 6 iterations at 60 warmup steps some
    targets end warmup with a step size ~4x too large (acceptance ~0).
    """
    w = int(warmup_steps)
    if w < 20:
        return []
    if init_buffer + base_window + term_buffer > w:
        init_buffer, term_buffer = int(0.15 * w), max(int(0.1 * w), min(term_buffer, w // 3))
        base_window = w - init_buffer - term_buffer
    last = w - term_buffer
    windows, start, size = [], init_buffer, base_window
    end = start + size
    while True:
        if end + 2 * size > last:
            end = last
        windows.append((start, end))
        if end >= last:
            return windows
        start, size = end, 2 * size
        end = start + size


_INITIAL_UTURN_TIME = 3.5


class _DualAveraging:
    """Per-target dual averaging of log step sizes (Hoffman & Gelman 2014, Alg. 5)."""

    def __init__(self, target_accept: float, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75):
        self.target_accept, self.gamma, self.t0, self.kappa = target_accept, gamma, t0, kappa

    def reset(self, log_eps: torch.Tensor) -> None:
        self.mu = log_eps + math.log(10.0)
        self.h_bar = torch.zeros_like(log_eps)
        self.log_eps_bar = torch.zeros_like(log_eps)
        self.t = 0

    def step(self, accept_prob: torch.Tensor) -> torch.Tensor:
        """Update with this iteration's acceptance probabilities ``(*B,)``; return the next log step sizes."""
        self.t += 1
        eta = 1.0 / (self.t + self.t0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target_accept - accept_prob)
        log_eps = self.mu - math.sqrt(self.t) / self.gamma * self.h_bar
        w = self.t ** (-self.kappa)
        self.log_eps_bar = w * log_eps + (1 - w) * self.log_eps_bar
        return log_eps


class BatchedHMC(MCMCKernel):
    """HMC with per-target accept/reject, step size, diagonal mass matrix and trajectory length.

    Args:
        target: an object with ``log_prob(z) -> (*B,)`` (e.g. a
            :class:`~pyro_mmvae.infer.subset_posterior.SubsetPosterior`) and, optionally,
            ``initial_points(num_chains) -> (C, N, D)`` for default starting points.
        potential_fn: alternatively the per-target potential energy ``z (*B, D) -> (*B,)`` (−log density).
        num_chains: chains stacked as the leading batch dimension when starting points come from
            ``target.initial_points``; ignored when ``initial_params`` are given.
        param_name: the name of the state in Pyro's params dict.
        step_size: initial step size (refined by a doubling/halving heuristic before warmup).
        inverse_mass_matrix: initial diagonal inverse mass matrix, broadcastable to the state
            ``(*B, D)`` (e.g. a rough posterior variance); default ones. It only sets where the first
            adaptation window starts from, but badly scaled targets sampled with the identity
            metric need many tiny leapfrog steps until the first window ends.
        target_accept_prob: dual-averaging target of the mean acceptance probability.
        adapt_step_size, adapt_mass_matrix, adapt_trajectory: switch the three adaptations.
        num_steps: the mean number of leapfrog steps when ``adapt_trajectory=False`` (with the same
            jitter). With adaptation the first trajectories use T_u = 3.5, right for a unit-scale
            target in the initial metric, until U-turns are measured.
        max_num_steps: cap on leapfrog steps per iteration.
        trajectory_scale: c, the mean integration time is c × T_u (T_u: mean + sd of the U-turn times).
        jitter: j in (0, 1]: integration times are uniform on [(1 − j) c T_u, (1 + j) c T_u].
        max_energy_error: energy error above which a trajectory is divergent.
        init_buffer, term_buffer, base_window: Stan's mass-matrix adaptation windows.
        refresh_interval: warmup iterations between (host-synchronising) updates of the loop length.
        uturn_every: every how many warmup iterations a trajectory is followed to its U-turn (those
            iterations cost ~1.5 T_u / ε leapfrog steps instead of ~0.4 T_u / ε on average).
        warmup_loop_quantile: during warmup the loop length is this quantile (not the max) over
            targets of their needed steps; the few targets above it get shorter warmup trajectories.
            After warmup the loop always covers every target.
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
        target=None,
        *,
        potential_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_chains: int = 4,
        param_name: str = "z",
        step_size: float = 0.5,
        inverse_mass_matrix: torch.Tensor | None = None,
        target_accept_prob: float = 0.8,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = True,
        adapt_trajectory: bool = True,
        num_steps: int = 10,
        max_num_steps: int = 256,
        trajectory_scale: float = 0.4,
        jitter: float = 0.3,
        max_energy_error: float = 1000.0,
        init_buffer: int = 75,
        term_buffer: int = 50,
        base_window: int = 25,
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
        if target is not None and not hasattr(target, "log_prob"):
            raise TypeError(f"target must have a log_prob(z) method, got {type(target)}")
        if not 0 < target_accept_prob < 1:
            raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}")
        if not 1 <= num_steps <= max_num_steps:
            raise ValueError(f"need 1 <= num_steps <= max_num_steps, got {num_steps} and {max_num_steps}")
        if step_size <= 0 or trajectory_scale <= 0:
            raise ValueError("step_size and trajectory_scale must be positive")
        if not 0 < jitter <= 1:
            raise ValueError(f"jitter must be in (0, 1], got {jitter}")
        if escape_radius is not None and not escape_radius > 0:
            raise ValueError(f"escape_radius must be positive or None, got {escape_radius}")
        self.target = target
        self._potential = potential_fn if potential_fn is not None else (lambda z: -target.log_prob(z))
        self.num_chains = int(num_chains)
        self.param_name = param_name
        self.init_step_size = float(step_size)
        self.init_inverse_mass = inverse_mass_matrix
        self.target_accept_prob = float(target_accept_prob)
        self.adapt_step_size, self.adapt_mass_matrix = adapt_step_size, adapt_mass_matrix
        self.adapt_trajectory = adapt_trajectory
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
        self._da = _DualAveraging(self.target_accept_prob)
        self.setup(0)

    # ------------------------------------------------------------------ MCMCKernel contract
    @property
    def initial_params(self) -> dict:
        if self._initial_params is None:
            if self.target is None or not hasattr(self.target, "initial_points"):
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
        self._windows = adaptation_windows(warmup_steps, self.init_buffer, self.term_buffer, self.base_window)
        self._window_ends = {end: start for start, end in self._windows}
        self._t = 0
        self._z = None
        self._stats = {"accept_prob": [], "diverging": [], "num_steps": []}
        self._log = {}
        self._log_acc, self._log_n, self._num_divergent_draws = None, 0, None
        self.num_grad_evals = 0

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
        """Per-target mean integration time ``(*B,)`` (``trajectory_scale`` × T_u)."""
        return self.trajectory_scale * self._traj_time

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
        # T_u of a standard Gaussian in a matching metric (≈ π + its spread); measured from the first
        # warmup trajectories on. (Not num_steps × ε: the heuristic's ε is deliberately on the large side.)
        self._traj_time = torch.full_like(self._u, _INITIAL_UTURN_TIME)
        self._reset_uturn()
        self._reset_welford()
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

    def _reset_uturn(self) -> None:
        self._uturn_sum = torch.zeros_like(self._u)
        self._uturn_sq = torch.zeros_like(self._u)
        self._uturn_count = torch.zeros_like(self._u)

    def _fixed_loop(self) -> int:
        return min(self.max_num_steps, math.ceil((1 + self.jitter) * self.num_steps))

    def _reset_welford(self) -> None:
        self._w_mean = torch.zeros_like(self._z)
        self._w_m2 = torch.zeros_like(self._z)
        self._w_n = 0

    def _draw_num_steps(self, eps: torch.Tensor) -> torch.Tensor:
        """This iteration's number of leapfrog steps per target (float tensor ``(*B,)``, in ``[1, loop]``)."""
        mean = self.num_steps * eps if not self.adapt_trajectory else self.trajectory_scale * self._traj_time
        t = mean * (1.0 + self.jitter * (2.0 * torch.rand_like(eps) - 1.0))
        return torch.ceil(t / eps).clamp(1.0, float(self._loop))

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
    def _refresh_loop(self, eps: torch.Tensor, final: bool = False, min_count: int = 4) -> None:
        """Update T_u from the recorded U-turns, and the loop lengths (the one host sync of a refresh).

        T_u changes where at least ``min_count`` U-turns were recorded since its last update (any
        number when ``final``). The plain loop covers the longest jittered trajectory, (1 + j) c T_u;
        exploring warmup iterations run 1.5 T_u so that U-turns are observed (a censored one, recorded
        as the loop's end, lengthens the next loop).
        """
        if not self.adapt_trajectory:
            return
        n = self._uturn_count
        mean = self._uturn_sum / n.clamp(min=1)
        sd = (self._uturn_sq / n.clamp(min=1) - mean * mean).clamp(min=0).sqrt() * torch.where(n > 1, 1.0, 0.0)
        update = n > 0 if final else n >= min_count
        self._traj_time = torch.where(update, mean + sd, self._traj_time)
        keep = (~update).to(n.dtype)
        self._uturn_sum, self._uturn_sq, self._uturn_count = self._uturn_sum * keep, self._uturn_sq * keep, n * keep
        # escaped (frozen) targets take no steps: they must not set everyone's loop (this refresh reads
        # the host anyway, so the live targets are selected by boolean indexing)
        live = ~self._escaped.flatten()
        plain = (1 + self.jitter) * self.trajectory_scale * (self._traj_time / eps).flatten()[live]
        explore = (1.5 * self._traj_time / self._explore_eps()).flatten()[live]
        if plain.numel() == 0:  # every target escaped: nothing left to integrate
            plain = explore = torch.ones(1, dtype=eps.dtype, device=eps.device)
        if final or self.warmup_loop_quantile >= 1:
            plain = plain.max()
        else:
            # during warmup a few targets at a time have a transiently tiny dual-averaging step size;
            # letting them set everyone's loop would triple the warmup cost. They are clamped instead
            # (shorter warmup trajectories; U-turns are measured on exploring iterations only).
            plain = torch.quantile(plain, self.warmup_loop_quantile)
        # exploring iterations integrate with the averaged step size, which has no such outliers,
        # and cover EVERY target: a censored U-turn would bias the hardest targets' T_u low.
        explore = explore.max()
        plain, explore = torch.stack([plain, explore]).ceil().clamp(1, self.max_num_steps).tolist()
        self._loop, self._explore_loop = int(plain), max(int(plain), int(explore))

    def _explore_eps(self) -> torch.Tensor:
        """Step sizes of exploring iterations: the dual-averaged ε̄ (the current ε before any update)."""
        if self.adapt_step_size and self._da.t > 0:
            return self._da.log_eps_bar.exp()
        return self._log_eps.exp()

    def _update_mass(self) -> None:
        n = self._w_n
        var = self._w_m2 / max(n - 1, 1)
        if self.pool_metric_dim is not None:
            # one estimate from the draws of all chains of a target (warmup only: after warmup the
            # chains stay independent), robust to one chain that mixed slowly during the window
            k = self.pool_metric_dim
            c = self._w_mean.shape[k]
            spread = (self._w_mean - self._w_mean.mean(k, keepdim=True)).pow(2).sum(k, keepdim=True)
            var = ((self._w_m2.sum(k, keepdim=True) + n * spread) / max(c * n - 1, 1)).expand_as(var)
            n = c * n
        var = (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))  # Stan's regularisation
        ratio = (self._inv_mass / var).sqrt()
        # rescale the time and step scales to the new metric: both are set by how far the metric
        # moved (largest posterior scale for T, smallest for ε), then refined by measurements.
        self._traj_time = self._traj_time * ratio.amin(-1)
        eps = self._log_eps.exp() * ratio.amax(-1)
        self._inv_mass = var
        self._reset_welford()
        self._reset_uturn()
        if self.adapt_step_size:
            self._log_eps = self._find_step_size(eps).log()
            self._da.reset(self._log_eps)

    def _finish_warmup(self) -> None:
        self._eps = self._da.log_eps_bar.exp() if (self.adapt_step_size and self._da.t > 0) else self._log_eps.exp()
        self._refresh_loop(self._eps, final=True)
        self._warm_done = True

    def _adapt(self, accept_prob: torch.Tensor, uturn) -> None:
        t = self._t  # index of the warmup iteration just done
        if self.adapt_step_size and uturn is None:  # exploring iterations do not use the iterate ε
            self._log_eps = torch.where(self._escaped, self._log_eps, self._da.step(accept_prob))
        if uturn is not None:
            time_, valid = uturn
            self._uturn_sum = self._uturn_sum + torch.where(valid, time_, 0.0)
            self._uturn_sq = self._uturn_sq + torch.where(valid, time_ * time_, 0.0)
            self._uturn_count = self._uturn_count + valid.to(self._uturn_count.dtype)
        if self.adapt_mass_matrix and any(s <= t < e for s, e in self._windows):
            self._w_n += 1
            delta = self._z - self._w_mean
            self._w_mean = self._w_mean + delta / self._w_n
            self._w_m2 = self._w_m2 + delta * (self._z - self._w_mean)
        done = t + 1
        if self.adapt_mass_matrix and done in self._window_ends:
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
        explore = warm and self.adapt_trajectory and self._t % self.uturn_every == 0
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


# ---------------------------------------------------------------------- convenience runners
@dataclass
class HMCRun:
    """Draws and per-target statistics of an MCMC run over N targets with C chains.

    ``samples`` ``(C, S, N, D)``; ``accept_prob``, ``diverging``, ``num_steps`` ``(C, S, N)`` (``None``
    for samplers that do not report them per target); ``escaped`` ``(C, N)``: chains frozen after
    running away (their draws are meaningless); ``step_size`` ``(C, N)`` or ``(C,)``;
    ``wall_time`` in seconds (warmup + sampling) and ``sampling_time`` (after warmup);
    ``num_grad_evals`` gradient evaluations of the whole batch.
    """

    samples: torch.Tensor
    accept_prob: torch.Tensor | None = None
    diverging: torch.Tensor | None = None
    num_steps: torch.Tensor | None = None
    step_size: torch.Tensor | None = None
    inverse_mass_matrix: torch.Tensor | None = None
    trajectory_length: torch.Tensor | None = None
    escaped: torch.Tensor | None = None
    wall_time: float = float("nan")
    sampling_time: float = float("nan")
    num_grad_evals: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def escaped_points(self) -> list[int]:
        """Data points (indices along N) where some chain escaped."""
        return [] if self.escaped is None else self.escaped.any(0).nonzero().flatten().tolist()

    @property
    def divergences(self) -> torch.Tensor | None:
        """Divergent transitions per chain and target ``(C, N)``."""
        return None if self.diverging is None else self.diverging.sum(1)

    def to_inference_data(self, target_ids=None, var_name: str = "z"):
        """ArviZ ``InferenceData`` (see :func:`pyro_mmvae.diagnostics.to_inference_data`)."""
        from pyro_mmvae.diagnostics import to_inference_data

        stats = {}
        if self.accept_prob is not None:
            stats = {"acceptance_rate": self.accept_prob, "diverging": self.diverging, "n_steps": self.num_steps}
        return to_inference_data(self.samples, stats, target_ids=target_ids, var_name=var_name)


class _PhaseClock:
    """An ``MCMC`` hook that adds up the time spent after warmup (from the last warmup iteration on)."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps, self.sampling_time, self._start = warmup_steps, 0.0, None

    def start(self) -> None:
        self._start = time.perf_counter() if self.warmup_steps == 0 else None

    def __call__(self, kernel, params, stage, i) -> None:
        if stage.startswith("Warmup") and i == self.warmup_steps - 1:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is not None:
            self.sampling_time += time.perf_counter() - self._start
        self._start = None


def _chain_first(x: torch.Tensor) -> torch.Tensor:
    """``(S, C, ...)`` → ``(C, S, ...)`` on the CPU."""
    return x.transpose(0, 1).cpu()


def sample_subset_posterior(
    target,
    num_samples: int,
    warmup_steps: int,
    num_chains: int = 4,
    seed: int | None = None,
    progress: bool = True,
    initial_params: torch.Tensor | None = None,
    improper: str = "raise",
    **kernel_kwargs,
) -> HMCRun:
    """Sample every target of ``target`` (e.g. a :class:`SubsetPosterior`) with :class:`BatchedHMC`.

    Runs ``pyro.infer.MCMC(BatchedHMC(target, ...), num_samples, warmup_steps)`` with the C chains as
    a batch dimension of one Pyro chain.

    Args:
        target: ``log_prob(z (C, N, D)) -> (C, N)`` and ``initial_points(C) -> (C, N, D)``.
        seed: seeds Pyro/torch/numpy's global RNGs (``pyro.set_rng_seed``) when given.
        initial_params: optional starting points ``(C, N, D)``.
        improper: what to do, before sampling, with data points whose target is improper — exactly
            (Gaussian experts: :meth:`SubsetPosterior.closed_form`) or by the tail probe
            (:meth:`SubsetPosterior.rising_tails`): ``"raise"`` (default) an
            :class:`ImproperPosteriorError` naming them, ``"warn"`` an :class:`ImproperPosteriorWarning`
            and sample anyway (their chains are frozen once they escape, see ``HMCRun.escaped``),
            ``"ignore"`` no check.
        kernel_kwargs: passed to :class:`BatchedHMC`; ``inverse_mass_matrix`` defaults to
            ``target.approximate_variance()`` when the target has it.

    Returns:
        :class:`HMCRun` with ``samples`` ``(C, S, N, D)`` and per-target statistics. Chains that
        escaped during the run (``HMCRun.escaped``) are reported with an ``ImproperPosteriorWarning``
        unless ``improper="ignore"``.

    Raises:
        ImproperPosteriorError: ``improper="raise"`` and the target is improper for some data points.
    """
    from .subset_posterior import ImproperPosteriorError, ImproperPosteriorWarning, improper_points

    if improper not in ("raise", "warn", "ignore"):
        raise ValueError(f"improper must be 'raise', 'warn' or 'ignore', got {improper!r}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    if improper != "ignore":
        with torch.random.fork_rng():  # the check's random draws must not shift the sampler's stream
            bad, how = improper_points(target)
        if bad:
            msg = f"the subset posterior is improper ({how}) for data points {_list_points(bad)}"
            if improper == "raise":
                raise ImproperPosteriorError(msg + "; pass improper='warn' to sample the others anyway")
            warnings.warn(msg + "; their chains will run away and be frozen", ImproperPosteriorWarning, stacklevel=2)
    if initial_params is None:
        initial_params = target.initial_points(num_chains)
    if "inverse_mass_matrix" not in kernel_kwargs and hasattr(target, "approximate_variance"):
        kernel_kwargs["inverse_mass_matrix"] = target.approximate_variance()
    kernel = BatchedHMC(target, num_chains=num_chains, **kernel_kwargs)
    mcmc = pyro.infer.MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        initial_params={kernel.param_name: initial_params},
        disable_progbar=not progress,
        hook_fn=(clock := _PhaseClock(warmup_steps)),
    )
    start = time.perf_counter()
    clock.start()
    mcmc.run()
    clock.stop()
    wall = time.perf_counter() - start
    draws = mcmc.get_samples(group_by_chain=True)[kernel.param_name][0]  # (S, C, N, D)
    stats = kernel.sample_stats()
    run = HMCRun(
        samples=_chain_first(draws),
        accept_prob=_chain_first(stats["accept_prob"]),
        diverging=_chain_first(stats["diverging"]),
        num_steps=_chain_first(stats["num_steps"]),
        step_size=stats["step_size"].cpu(),
        inverse_mass_matrix=stats["inverse_mass_matrix"].cpu(),
        trajectory_length=stats["trajectory_length"].cpu(),
        escaped=stats["escaped"].cpu(),
        wall_time=wall,
        sampling_time=clock.sampling_time,
        num_grad_evals=kernel.num_grad_evals,
        extra={"num_loop_steps": kernel.num_loop_steps, "diagnostics": kernel.diagnostics()},
    )
    if improper != "ignore" and run.escaped_points:
        warnings.warn(
            f"chains escaped beyond {kernel.escape_radius:g} initial standard deviations (an improper target) "
            f"and were frozen at data points {_list_points(run.escaped_points)}; their draws are meaningless",
            ImproperPosteriorWarning,
            stacklevel=2,
        )
    return run


def _list_points(points: list[int], shown: int = 20) -> str:
    more = f" and {len(points) - shown} more" if len(points) > shown else ""
    return ", ".join(map(str, points[:shown])) + more


def _joint_potential(params, target, name):
    return -target.log_prob(params[name]).sum()


class _NUTSWithInitialMetric(pyro.infer.NUTS):
    """Stock NUTS whose diagonal inverse mass matrix starts from a given vector instead of ones."""

    def __init__(self, *args, initial_inverse_mass: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._initial_inverse_mass = initial_inverse_mass

    def _initialize_adapter(self):
        super()._initialize_adapter()
        if self._initial_inverse_mass is not None:
            (site,) = self.initial_params
            self.mass_matrix_adapter.inverse_mass_matrix = {(site,): self._initial_inverse_mass.reshape(-1)}
            if self._adapter.adapt_step_size:  # re-find the step size for the new metric
                self._adapter.reset_step_size_adaptation(self._initial_params)


def run_pyro_nuts(
    target,
    num_samples: int,
    warmup_steps: int,
    num_chains: int = 4,
    seed: int | None = None,
    progress: bool = True,
    initial_params: torch.Tensor | None = None,
    inverse_mass_matrix: torch.Tensor | None = None,
    **nuts_kwargs,
) -> HMCRun:
    """The reference: stock ``pyro.infer.NUTS`` with one joint potential over all N targets.

    ``potential_fn({"z": z (N, D)}) = −Σ_n log p(z_n | x_S)``: one step size, one diagonal mass matrix
    over the N·D coordinates, one tree and one accept/reject per iteration for all N targets (what
    putting the data points under one plate gives). The C chains run one after another in this
    process (no multiprocessing), each from ``initial_params[c]`` ``(N, D)``. ``inverse_mass_matrix``
    ``(N, D)`` optionally sets the initial diagonal metric (as :func:`sample_subset_posterior` does by
    default), so that both samplers start from the same information.

    Returns:
        :class:`HMCRun` with ``samples`` ``(C, S, N, D)``, ``step_size`` ``(C,)`` and the per-chain
        divergence lists in ``extra["divergences"]``.
    """
    if seed is not None:
        pyro.set_rng_seed(seed)
    if initial_params is None:
        initial_params = target.initial_points(num_chains)
    draws, steps, divs = [], [], []
    potential = partial(_joint_potential, target=target, name="z")
    clock = _PhaseClock(warmup_steps)
    start = time.perf_counter()
    for c in range(num_chains):
        kernel = _NUTSWithInitialMetric(potential_fn=potential, initial_inverse_mass=inverse_mass_matrix, **nuts_kwargs)
        mcmc = pyro.infer.MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            initial_params={"z": initial_params[c]},
            disable_progbar=not progress,
            hook_fn=clock,
        )
        clock.start()
        mcmc.run()
        clock.stop()
        draws.append(mcmc.get_samples()["z"].cpu())
        steps.append(float(kernel.step_size))
        divs.append(list(mcmc.diagnostics()["divergences"]["chain 0"]))
    wall = time.perf_counter() - start
    return HMCRun(
        samples=torch.stack(draws),
        step_size=torch.tensor(steps),
        wall_time=wall,
        sampling_time=clock.sampling_time,
        extra={"divergences": divs},
    )
