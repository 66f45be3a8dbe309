"""Seeded random missingness: :func:`random_missing` draws presence masks ``name -> bool (N,)`` (True = present).

Each modality ``m`` is missing in a fraction ``rate[m]`` of the rows, and no row has every modality
missing. Dropping modalities independently and then redrawing the all-missing rows would lower every
rate (for five modalities at rate 0.5 the realised rate is 0.484). So the masks are drawn from the
independent model with adjusted drop probabilities ``q_m``, conditioned on "not all missing", where
the ``q_m`` are chosen so that the CONDITIONAL missing probability of every modality is exactly
``rate[m]``:

    P(m missing | not all missing) = (q_m - P) / (1 - P) = rate[m],   P = prod_j q_j,

so ``q_m = rate[m] + (1 - rate[m]) P`` with ``P`` the root in ``[0, 1)`` of
``prod_j (rate[j] + (1 - rate[j]) P) = P`` (found by bisection). Such a root exists exactly when some
modality is never dropped (``P = 0``) or the expected number of present modalities,
``sum_m (1 - rate[m])``, exceeds one. When that number is exactly one (five modalities at rate 0.8)
the only solution keeps exactly one modality per row, modality ``m`` with probability ``1 - rate[m]``;
higher rates are impossible and raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from ..errors import InputError, check_float, check_int


def _rates(names: list[str], rate) -> np.ndarray:
    if isinstance(rate, Mapping):
        unknown = sorted(set(rate) - set(names))
        if unknown:
            raise InputError(f"missing rate given for unknown modalities {unknown}; expected some of {names}")
        values = [check_float(rate.get(n, 0.0), f"rate[{n!r}]", nonnegative=True) for n in names]
    else:
        values = [check_float(rate, "rate", nonnegative=True)] * len(names)
    for n, r in zip(names, values):
        if r > 1:
            raise InputError(f"missing rate of {n!r} must be in [0, 1], got {r}")
    return np.asarray(values, dtype=np.float64)


_TOL = 1e-9  # how close sum(1 - rate) may come to 1 and count as exactly one present modality per row


def all_missing_probability(rates: np.ndarray) -> float:
    """``P`` of the module docstring: the all-missing probability of the adjusted independent model."""
    if np.any(rates == 0):
        return 0.0
    if np.sum(1 - rates) < 1 - _TOL:
        raise InputError(
            f"missing rates {rates.tolist()} are impossible when every row keeps at least one modality: the "
            "expected number of present modalities, sum(1 - rate), must exceed 1 (or some rate must be 0)"
        )

    def excess(p):  # prod(rate + (1 - rate) p) - p: positive at 0, negative just below the trivial root 1
        return np.prod(rates + (1 - rates) * p) - p

    lo, hi = 0.0, 1.0 - 1e-15
    if excess(hi) >= 0:  # the root is numerically at 1: nearly infeasible rates
        hi = 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return lo


def random_missing(num_rows: int, names: Iterable[str], rate, seed: int = 0) -> dict[str, torch.Tensor]:
    """Presence masks ``name -> BoolTensor (num_rows,)`` (True = present), seeded.

    Args:
        num_rows: number of rows ``N``.
        names: the modality names.
        rate: the missing rate, a float in ``[0, 1]`` for every modality or a dict ``name -> rate``
            (unlisted modalities: 0).
        seed: the masks depend only on ``(num_rows, names, rate, seed)``.

    Every modality is missing in each row with probability exactly ``rate[name]`` and at least one
    modality is present in every row (see the module docstring for how both hold at once).
    """
    num_rows = check_int(num_rows, "num_rows", minimum=0)
    names = list(names)
    if not names:
        raise InputError("random_missing needs at least one modality name")
    rates = _rates(names, rate)
    rng = np.random.default_rng(check_int(seed, "seed", minimum=0))
    if not np.any(rates == 0) and abs(np.sum(1 - rates) - 1) <= _TOL:
        keep = rng.choice(len(names), size=num_rows, p=(1 - rates) / np.sum(1 - rates))
        return {n: torch.from_numpy(keep == j) for j, n in enumerate(names)}
    p_all = all_missing_probability(rates)
    drop = rates + (1 - rates) * p_all
    missing = rng.random((num_rows, len(names))) < drop
    todo = np.flatnonzero(missing.all(axis=1))
    while todo.size:  # redraw the all-missing rows: conditions the independent model on "not all missing"
        missing[todo] = rng.random((todo.size, len(names))) < drop
        todo = todo[missing[todo].all(axis=1)]
    return {n: torch.from_numpy(~missing[:, j].copy()) for j, n in enumerate(names)}
