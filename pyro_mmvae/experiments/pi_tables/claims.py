"""Summaries over seeds, the paper's qualitative claims, and the comparison with the published numbers.

The claims of "Learning multi-modal generative models with permutation-invariant encoders and tighter
variational objectives" checked here: the masked bound's model has at least the mixture bound's
log-likelihood per aggregator; SumPooling/SelfAttention are at least as good as PoE/MoE; a GMM prior
with a mixture encoder has the best log-likelihood (Tables 3-4); and, for Table 1, the masked bound
has the better full reconstruction and the mixture bound the better cross prediction.
"""

from __future__ import annotations

import math

import numpy as np

from .published import PUBLISHED
from .settings import (
    FIXED_AGGREGATORS,
    LAYOUT,
    LEARNED_AGGREGATORS,
    LLH_METRIC,
    METRICS,
    MIXTURE_AGGREGATORS,
    OBJECTIVES,
    PAPER_MEAN_POE,
)


def summarise(values: list[float | None]) -> dict:
    """mean / std (ddof = 1 over seeds, 0 for a single seed) of the finite values; ``failed`` counts the rest."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else (0.0 if finite else None)
    return {"mean": mean, "std": std, "n": len(finite), "failed": len(values) - len(finite), "values": values}


class _Pending:
    """A value that does not exist yet (configuration not run): claims depending on it are undecided (None)."""

    def __repr__(self) -> str:
        return "PENDING"


PENDING = _Pending()


def _better(a, b, higher: bool) -> bool | None:
    """a at least as good as b; a diverged value (None) loses against a finite one; None if undecidable."""
    if a is PENDING or b is PENDING or (a is None and b is None):
        return None
    if a is None:
        return False
    if b is None:
        return True
    return a >= b if higher else a <= b


def _mean(cell: dict | None, metric: str):
    """The mean of a cell: a number, None (every seed diverged/failed) or PENDING (not run)."""
    if not cell or metric not in cell:
        return PENDING
    v = cell[metric]
    if isinstance(v, dict):
        return v.get("mean")
    if isinstance(v, list | tuple):
        return v[0]
    return v


def _all(values) -> bool | None:
    """False if any claim fails, None if any is undecided, else True."""
    values = list(values)
    if any(v is False for v in values):
        return False
    if not values or any(v is None for v in values):
        return None
    return True


def _worst(values, higher: bool):
    if any(v is PENDING for v in values):
        return PENDING
    if any(v is None for v in values):
        return None
    return min(values) if higher else max(values)


def _best(values, higher: bool):
    if any(v is PENDING for v in values):
        return PENDING
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return max(vals) if higher else min(vals)


def check_claims(table: int, sections: dict) -> dict:
    """The paper's qualitative claims as booleans, computed from ``{section: {row: {objective: {metric: ...}}}}``.

    Each cell may be our summary (``{"mean": ...}``) or a published ``[mean, std]``. A claim is None
    (undecided) while a configuration it depends on has not run.
    """
    claims: dict = {}
    for sec_name, present in sections.items():
        # every row of the layout takes part (but variants of a row, such as the PoE with the paper's mean);
        # rows without results are pending
        layout = next((sec for sec in LAYOUT[table] if sec.name == sec_name), None)
        labels = [r.label for r in layout.rows if r.in_claims] if layout is not None else list(present)
        rows = {label: present.get(label) or {} for label in labels}
        c: dict = {}
        c["masked_ge_mixture_llh"] = _masked_ge_mixture(table, rows)
        c.update(_learned_ge_fixed(table, rows))
        paper_row = PAPER_MEAN_POE in present or (
            layout is not None and any(r.label == PAPER_MEAN_POE for r in layout.rows)
        )
        if paper_row and "PoE" in rows:  # undecided (None) while the paper-mean row has not run
            # the same claim against the PoE of the published code (Σ μ_s v_s / P), whose numbers the paper shows
            paper = _learned_ge_fixed(table, {**rows, "PoE": present.get(PAPER_MEAN_POE) or {}})
            c.update({f"{k}_paper_poe": v for k, v in paper.items()})
        gmm = _gmm_mixture_best(table, rows)
        if gmm is not None:
            c["gmm_mixture_best_llh"] = gmm
        if table == 1:
            c.update(_table1_claims(rows))
        claims[sec_name] = c
    return claims


def _masked_ge_mixture(table: int, rows: dict) -> dict:
    """Claim 1: masked >= mixture on log-likelihood, per row (and ``all``)."""
    llh = LLH_METRIC[table]
    higher = METRICS[table][llh][1]
    per_row = {
        label: _better(_mean(cells.get("masked"), llh), _mean(cells.get("mixture"), llh), higher)
        for label, cells in rows.items()
    }
    return {**per_row, "all": _all(per_row.values())}


def _learned_ge_fixed(table: int, rows: dict) -> dict:
    """Claim 2: the worse learnable aggregator beats the better fixed rule (N(0, I) prior rows), per objective."""
    out: dict = {}
    for metric, tag in ((LLH_METRIC[table], "llh"), ("mcc", "mcc")):
        if metric not in METRICS[table]:
            continue
        m_higher = METRICS[table][metric][1]
        out[f"learned_ge_fixed_{tag}"] = {}
        for obj in OBJECTIVES:
            learned = [_mean(rows[r].get(obj), metric) for r in LEARNED_AGGREGATORS if r in rows]
            fixed = [_mean(rows[r].get(obj), metric) for r in FIXED_AGGREGATORS if r in rows]
            if not learned or not fixed:
                continue
            out[f"learned_ge_fixed_{tag}"][obj] = _better(_worst(learned, m_higher), _best(fixed, m_higher), m_higher)
    return out


def _gmm_mixture_best(table: int, rows: dict) -> dict | None:
    """Claim 3: a GMM-prior row with a mixture encoder has the best log-likelihood, per objective (Tables 3-4)."""
    llh = LLH_METRIC[table]
    higher = METRICS[table][llh][1]
    gmm_mix = [label for label in rows if any(label.startswith(a) for a in MIXTURE_AGGREGATORS)]
    if not gmm_mix:
        return None
    out: dict = {}
    for obj in OBJECTIVES:
        vals = {label: _mean(cells.get(obj), llh) for label, cells in rows.items()}
        top = _best(list(vals.values()), higher)
        if top is PENDING or top is None:
            out[obj] = None
            continue
        best = next(k for k, v in vals.items() if v == top)  # the first row attaining it
        out[obj] = best in gmm_mix
        out[f"{obj}_best_row"] = best
    return out


def _table1_claims(rows: dict) -> dict:
    """Claim 4 (Table 1): masked has the better full reconstruction, mixture the better cross prediction."""

    def compare(first: str, second: str, metric: str) -> dict:
        per_row = {
            label: _better(_mean(cells.get(first), metric), _mean(cells.get(second), metric), True)
            for label, cells in rows.items()
        }
        return {**per_row, "all": _all(per_row.values())}

    return {
        "masked_better_full_reconstruction": compare("masked", "mixture", "full_reconstruction"),
        "mixture_better_cross_prediction": compare("mixture", "masked", "cross_prediction"),
    }


def published_row(table: int, section: str, label: str) -> dict | None:
    """The published ``{objective: {metric: [mean, std]}}`` that row ``label`` is compared with (its
    ``published_label``; None when it has no comparable published row)."""
    layout = next((sec for sec in LAYOUT[table] if sec.name == section), None)
    row = next((r for r in layout.rows if r.label == label), None) if layout is not None else None
    pub_label = label if row is None else row.published_label
    return None if pub_label is None else PUBLISHED.get(table, {}).get(section, {}).get(pub_label)


def compare_to_published(table: int, sections: dict) -> list[dict]:
    """Cells where |ours − published| exceeds std_ours + std_published (10 % of |published| when no std is given)."""
    out = []
    for sec_name, rows in sections.items():
        for label, cells in rows.items():
            pub_row = published_row(table, sec_name, label)
            if pub_row is None:
                continue
            for obj in OBJECTIVES:
                for metric in METRICS[table]:
                    ours = cells.get(obj, {}).get(metric)
                    pub = pub_row.get(obj, {}).get(metric)
                    if ours is None or pub is None or pub[0] is None:
                        continue
                    where = {"section": sec_name, "row": label, "objective": obj, "metric": metric}
                    mean, std = ours["mean"], ours["std"] or 0.0
                    if mean is None:
                        out.append(
                            {**where, "ours": None, "published": pub[0], "note": "no finite value (diverged or failed)"}
                        )
                        continue
                    tol = std + (pub[1] if pub[1] is not None else 0.1 * abs(pub[0]))
                    if abs(mean - pub[0]) > tol:
                        out.append(
                            {
                                **where,
                                "ours": mean,
                                "ours_std": std,
                                "published": pub[0],
                                "published_std": pub[1],
                                "tolerance": tol,
                            }
                        )
    return out
