"""MCMC diagnostics for many targets at once, and the ArviZ adapter.

Draws are arrays ``(C, S, *shape)`` (chains, draws, then e.g. ``(N, D)`` targets × latent dims),
numpy or torch. :func:`rhat` and :func:`ess` return arrays of ``shape`` computed vectorised over all
entries, with the definitions of ArviZ 0.23 (Vehtari et al. 2021):

- ``rhat``: rank-normalised split R-hat, the max of the bulk (z-scaled ranks) and tail (z-scaled
  ranks of |x − median|) versions (``arviz.rhat(method="rank")``);
- ``ess``: ``"bulk"`` (split chains, z-scaled ranks), ``"tail"`` (min of the 5 % and 95 % quantile
  indicator ESS), ``"mean"`` (split chains) and ``"sd"`` (split chains of (x − mean)²), each with
  Geyer's initial positive and monotone sequence on FFT autocovariances (``arviz.ess(method=...)``).

ArviZ itself loops over the entries in Python; these are vectorised over them. Everything that
touches ArviZ (InferenceData, plots) is in this module, and ArviZ is imported lazily with its
import/plotting warnings filtered narrowly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import fft, special

from .sites import LATENT_SITE

__all__ = [
    "diagnose",
    "ess",
    "import_arviz",
    "plot_targets",
    "rhat",
    "summarize_targets",
    "to_inference_data",
    "worst_targets",
]

_CHUNK = 4096  # series per vectorised block: bounds memory to a few tens of MB


def import_arviz():
    """``import arviz``, silencing only its once-a-day FutureWarning about the 1.x refactor."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
        import arviz  # lazily: optional and slow to import (seconds), needed only for InferenceData and plots

    return arviz


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _series(samples) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(C, S, *shape)`` → ``(M, C, S)`` with M = prod(shape), and ``shape``.

    float32 draws stay float32 for the rank-based steps (as in ArviZ, which ranks and folds in the
    input's precision; it is also faster); autocovariances and R-hat sums are taken in float64.
    """
    x = _as_numpy(samples)
    if x.ndim < 2:
        raise ValueError(f"draws must have shape (chain, draw, *shape), got {x.shape}")
    c, s, *shape = x.shape
    dtype = np.float32 if x.dtype == np.float32 else np.float64
    x = np.moveaxis(x.reshape(c, s, -1).astype(dtype, copy=False), -1, 0)
    return x, tuple(shape)


def _split_chains(x: np.ndarray) -> np.ndarray:
    """``(M, C, S)`` → ``(M, 2C, S // 2)``: first halves, then last halves (the middle draw of odd S dropped)."""
    half = x.shape[-1] // 2
    return np.concatenate([x[..., :half], x[..., x.shape[-1] - half :]], axis=1)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis of ``(M, n)``, ties sharing their average rank (scipy's "average").

    Ties are common in MCMC draws (a rejected proposal repeats the previous draw). After one sort,
    each run of equal values gets the mean of its first and last position; runs are found on the
    flattened sorted array (every row starts a new run), which needs no per-row loop.
    """
    m, n = x.shape
    order = np.argsort(x, axis=-1)
    xs = np.take_along_axis(x, order, axis=-1)
    new = np.empty((m, n), dtype=bool)
    new[:, 0] = True
    np.not_equal(xs[:, 1:], xs[:, :-1], out=new[:, 1:])
    new = new.ravel()
    starts = np.flatnonzero(new)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:] - 1
    ends[-1] = m * n - 1
    run_rank = (starts + ends) / 2.0 - (starts // n) * n + 1.0  # average 1-based rank within the row
    sorted_ranks = run_rank[np.cumsum(new) - 1]
    ranks = np.empty(m * n)
    ranks[(order + (np.arange(m) * n)[:, None]).ravel()] = sorted_ranks
    return ranks.reshape(m, n)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks of each series ``(M, C, S)`` (average ranks for ties, Blom offset 3/8)."""
    m, c, s = x.shape
    ranks = _average_ranks(x.reshape(m, c * s))
    return special.ndtri((ranks - 0.375) / (c * s + 0.25)).reshape(m, c, s)


def _rhat_core(x: np.ndarray) -> np.ndarray:
    """Classic R-hat of each series ``(M, C, S)`` → ``(M,)``."""
    x = np.asarray(x, dtype=np.float64)
    s = x.shape[-1]
    between = s * np.var(x.mean(-1), axis=-1, ddof=1)
    within = np.mean(np.var(x, axis=-1, ddof=1), axis=-1)
    return np.sqrt((between / within + s - 1) / s)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance of each chain along the last axis (FFT)."""
    n = x.shape[-1]
    m = fft.next_fast_len(2 * n)
    x = x - x.mean(-1, keepdims=True)
    f = fft.rfft(x, n=m, axis=-1)
    return fft.irfft(f * np.conjugate(f), n=m, axis=-1)[..., :n] / n


def _ess_core(x: np.ndarray) -> np.ndarray:
    """ESS of each series ``(M, C, S)`` → ``(M,)`` (Geyer's initial positive + monotone sequence)."""
    x = np.asarray(x, dtype=np.float64)
    m, n_chain, n_draw = x.shape
    out = np.full(m, np.nan)
    finite = ~np.isnan(x).any(axis=(1, 2))
    const = finite & ((x.max(axis=(1, 2)) - x.min(axis=(1, 2))) < np.finfo(float).resolution)
    out[const] = n_chain * n_draw
    todo = finite & ~const
    if not todo.any():
        return out
    x = x[todo]
    acov = _autocov(x)
    mean_var = acov[..., 0].mean(-1) * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus = var_plus + np.var(x.mean(-1), axis=-1, ddof=1)
    rho = 1.0 - (mean_var[:, None] - acov.mean(1)) / var_plus[:, None]
    rho[:, 0] = 1.0
    num_pairs = n_draw // 2
    even, odd = rho[:, 0 : 2 * num_pairs : 2], rho[:, 1 : 2 * num_pairs : 2]
    pair = even + odd  # (M', K): pair k holds lags 2k, 2k + 1
    k = np.arange(num_pairs)
    # pairs 1, 2, ... are computed while 2k < n_draw - 2 and the previous pair sum is > 0; the last
    # computed one (k_last) ends the sequence (it is the first non-positive one, or the last allowed).
    k_max = (n_draw - 3) // 2
    allowed = (k >= 1) & (k <= k_max)
    stop = allowed[None, :] & (pair <= 0)
    first_stop = np.where(stop.any(-1), stop.argmax(-1), k_max)
    k_last = np.where((pair[:, 0] > 0) & (k_max >= 1), first_stop, 0)
    monotone = np.minimum.accumulate(pair, axis=-1)
    body = np.where(k[None, :] < k_last[:, None], monotone, 0.0).sum(-1)
    last_even = np.take_along_axis(even, k_last[:, None], axis=-1)[:, 0]
    last_pair = np.take_along_axis(pair, k_last[:, None], axis=-1)[:, 0]
    last = np.where((last_pair >= 0) | (last_even > 0), last_even, 0.0)
    size = n_chain * n_draw
    tau = np.maximum(-1.0 + 2.0 * body + last, 1.0 / math.log10(size))
    out[todo] = size / tau
    return out


def _chunked(fn, x: np.ndarray) -> np.ndarray:
    """``fn`` over chunks of the series ``(M, C, S)``, joined along the last axis; NaN for series holding a NaN."""
    if not len(x):
        return np.empty(0)
    with np.errstate(divide="ignore", invalid="ignore"):  # constant series: 0/0 → NaN, as in ArviZ
        out = np.concatenate([fn(x[i : i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)], axis=-1)
    out[..., np.isnan(x).any(axis=(1, 2))] = np.nan
    return out


def _rhat_rank(x: np.ndarray) -> np.ndarray:
    split = _split_chains(x)
    bulk = _rhat_core(_z_scale(split))
    folded = np.abs(split - np.median(split.reshape(split.shape[0], -1), axis=-1)[:, None, None])
    tail = _rhat_core(_z_scale(folded))
    return np.maximum(bulk, tail)


def rhat(samples) -> np.ndarray:
    """Rank-normalised split R-hat of every entry: ``(C, S, *shape)`` → ``shape`` (NaN if C < 2 or S < 4)."""
    x, shape = _series(samples)
    if x.shape[1] < 2 or x.shape[2] < 4:
        return np.full(shape, np.nan)
    return _chunked(_rhat_rank, x).reshape(shape)


def _ess_bulk(x):
    return _ess_core(_z_scale(_split_chains(x)))


def _ess_mean(x):
    return _ess_core(_split_chains(x))


def _ess_sd(x):
    return _ess_core(_split_chains((x - x.mean(axis=(1, 2), keepdims=True)) ** 2))


def _ess_tail(x):
    m = x.shape[0]
    q = np.quantile(x.reshape(m, -1).astype(np.float64), [0.05, 0.95], axis=-1)  # type 7, as ArviZ
    low = _ess_core(_split_chains(x <= q[0][:, None, None]))
    high = _ess_core(_split_chains(x <= q[1][:, None, None]))
    return np.minimum(low, high)


_ESS = {"bulk": _ess_bulk, "tail": _ess_tail, "mean": _ess_mean, "sd": _ess_sd}


def ess(samples, method: str = "bulk") -> np.ndarray:
    """Effective sample size of every entry: ``(C, S, *shape)`` → ``shape`` (NaN if S < 4).

    ``method`` is ``"bulk"``, ``"tail"``, ``"mean"`` or ``"sd"`` (ArviZ's definitions).
    """
    if method not in _ESS:
        raise ValueError(f"unknown ESS method {method!r}; expected one of {sorted(_ESS)}")
    x, shape = _series(samples)
    if x.shape[2] < 4:
        return np.full(shape, np.nan)
    return _chunked(_ESS[method], x).reshape(shape)


# ---------------------------------------------------------------------- per-target summaries
def _diagnose(x: np.ndarray) -> np.ndarray:
    """R-hat, bulk ESS and tail ESS of each series ``(M, C, S)`` → ``(3, M)``, sharing the rank transform."""
    split = _split_chains(x)
    z = _z_scale(split)
    folded = np.abs(split - np.median(split.reshape(split.shape[0], -1), axis=-1)[:, None, None])
    r = np.maximum(_rhat_core(z), _rhat_core(_z_scale(folded)))
    if x.shape[1] < 2:
        r = np.full_like(r, np.nan)
    return np.stack([r, _ess_core(z), _ess_tail(x)])


def diagnose(samples) -> dict[str, np.ndarray]:
    """``rhat``, ``ess_bulk`` and ``ess_tail`` of every entry of ``(C, S, *shape)`` in one pass (each ``shape``)."""
    x, shape = _series(samples)
    if x.shape[2] < 4:
        nan = np.full(shape, np.nan)
        return {"rhat": nan, "ess_bulk": nan.copy(), "ess_tail": nan.copy()}
    out = _chunked(_diagnose, x)
    return {name: out[i].reshape(shape) for i, name in enumerate(("rhat", "ess_bulk", "ess_tail"))}


def summarize_targets(samples, sample_stats: Mapping | None = None) -> dict[str, np.ndarray]:
    """Per-target worst-case diagnostics of draws ``(C, S, N, D)``.

    Returns arrays ``(N,)``: ``max_rhat`` and ``min_ess_bulk``/``min_ess_tail`` over the D latent
    dimensions, and, from ``sample_stats`` (``(C, S, N)`` arrays ``diverging`` and ``accept_prob`` or
    ``acceptance_rate``), ``divergences`` (count over chains and draws) and ``mean_accept``.
    """
    x = _as_numpy(samples)
    if x.ndim != 4:
        raise ValueError(f"draws must have shape (C, S, N, D), got {x.shape}")
    diag = diagnose(x)
    out = {
        "max_rhat": diag["rhat"].max(-1),
        "min_ess_bulk": diag["ess_bulk"].min(-1),
        "min_ess_tail": diag["ess_tail"].min(-1),
    }
    sample_stats = dict(sample_stats or {})
    if sample_stats.get("diverging") is not None:
        out["divergences"] = _as_numpy(sample_stats["diverging"]).sum(axis=(0, 1)).astype(np.int64)
    acc = sample_stats.get("accept_prob", sample_stats.get("acceptance_rate"))
    if acc is not None:
        out["mean_accept"] = _as_numpy(acc).astype(np.float64).mean(axis=(0, 1))
    return out


def worst_targets(summary: Mapping[str, np.ndarray], k: int = 10, by: str = "min_ess_bulk", target_ids=None):
    """The ``k`` worst targets of :func:`summarize_targets` as a pandas ``DataFrame``.

    ``by``: ``"min_ess_bulk"``/``"min_ess_tail"`` (smallest first), ``"max_rhat"`` or ``"divergences"``
    (largest first). The index is the target id (``target_ids`` or 0..N-1).
    """
    import pandas as pd  # lazily: pandas is only needed for this table and slows down importing the library

    if by not in summary:
        raise KeyError(f"cannot rank by {by!r}; the summary has {sorted(summary)}")
    frame = pd.DataFrame({name: np.asarray(v) for name, v in summary.items()})
    if target_ids is not None:
        frame.index = list(target_ids)
    frame.index.name = "target"
    ascending = by.startswith("min_")
    return frame.sort_values(by, ascending=ascending, kind="stable").head(k)


# ---------------------------------------------------------------------- ArviZ adapter
def to_inference_data(
    samples, sample_stats: Mapping | None = None, target_ids: Sequence | None = None, var_name: str = LATENT_SITE
):
    """ArviZ ``InferenceData`` with ``posterior[var_name]`` dims ``(chain, draw, target, zdim)``.

    Args:
        samples: ``(C, S, N, D)``.
        sample_stats: optional per-target statistics ``(C, S, N)`` (e.g. ``acceptance_rate``,
            ``diverging``, ``n_steps``); ``None`` entries are skipped.
        target_ids: coordinate values of the target dimension (default 0..N-1).
    """
    az = import_arviz()
    x = _as_numpy(samples)
    if x.ndim != 4:
        raise ValueError(f"draws must have shape (C, S, N, D), got {x.shape}")
    c, s, n, d = x.shape
    coords = {"target": list(range(n)) if target_ids is None else list(target_ids), "zdim": list(range(d))}
    if len(coords["target"]) != n:
        raise ValueError(f"{len(coords['target'])} target ids for {n} targets")
    dims = {var_name: ["target", "zdim"]}
    stats_np = {}
    for name, v in (sample_stats or {}).items():
        if v is None:
            continue
        v = _as_numpy(v)
        if v.shape != (c, s, n):
            raise ValueError(f"sample stat {name!r} must have shape (C, S, N) = {(c, s, n)}, got {v.shape}")
        stats_np[name] = v
        dims[name] = ["target"]
    return az.from_dict(posterior={var_name: x}, sample_stats=stats_np or None, coords=coords, dims=dims)


_PLOTS = ("trace", "rank", "pair")


def plot_targets(
    idata,
    targets: Sequence,
    out_dir,
    kinds: Sequence[str] = _PLOTS,
    zdims: Sequence[int] | None = None,
    var_name: str = LATENT_SITE,
    prefix: str = "",
) -> list[Path]:
    """Trace, rank and pair plots of chosen targets, saved as PNG files; returns their paths.

    One file per (kind, target): ``{out_dir}/{prefix}{kind}_target{t}.png``. ``zdims`` restricts the
    latent dimensions shown (default: the first 4 for pair plots, all for the others).
    """
    az = import_arviz()
    # lazily, like ArviZ: matplotlib is an optional plotting dependency and slow to import
    import matplotlib.pyplot as plt
    from matplotlib import MatplotlibDeprecationWarning

    unknown = [k for k in kinds if k not in _PLOTS]
    if unknown:
        raise ValueError(f"unknown plot kind(s) {unknown}; expected some of {_PLOTS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_dims = idata.posterior[var_name].sizes["zdim"]
    paths = []
    for t in targets:
        for kind in kinds:
            dims = list(zdims) if zdims is not None else list(range(min(num_dims, 4) if kind == "pair" else num_dims))
            coords = {"target": [t], "zdim": dims}
            with warnings.catch_warnings():
                # arviz 0.23's matplotlib backend uses APIs deprecated in matplotlib 3.11
                warnings.filterwarnings("ignore", category=MatplotlibDeprecationWarning, module="arviz")
                if kind == "trace":
                    axes = az.plot_trace(idata, var_names=[var_name], coords=coords, compact=True)
                elif kind == "rank":
                    axes = az.plot_rank(idata, var_names=[var_name], coords=coords)
                else:
                    axes = az.plot_pair(idata, var_names=[var_name], coords=coords, kind="scatter")
            fig = np.ravel(axes)[0].figure
            path = out_dir / f"{prefix}{kind}_target{t}.png"
            fig.savefig(path, dpi=80)
            plt.close(fig)
            paths.append(path)
    return paths
