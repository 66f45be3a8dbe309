"""The metrics of one trained table configuration."""

from __future__ import annotations

import math

import torch

from ...metrics.likelihood import dataset_log_likelihood
from ...metrics.linear_gaussian import linear_decoder_model, ppca_mle, relative_llh_gap, stack_modalities
from ...metrics.mcc import latent_mcc
from ...metrics.rates import dataset_rates_and_distortions
from ...utils import set_seed
from .settings import EVAL_SEED_OFFSET, LATENT_DIM, Row, TableSettings

# Failures of a metric that are recorded (as NaN plus the message) instead of stopping the run.
METRIC_ERRORS = (ValueError, RuntimeError, FloatingPointError, torch.linalg.LinAlgError)


def llh_gap(model, dataset, latent_dim: int) -> float:
    """(ℓ_MLE − ℓ_model) / |ℓ_MLE| on the training data, with the PPCA MLE of ``latent_dim`` factors.

    The learned model's exact likelihood comes from its affine decoders (``linear_decoder_model``; for a
    private-latent model its latent is z′ followed by every modality's private block).
    """
    x = stack_modalities(dataset.full, model.names)
    learned = linear_decoder_model(model)
    return relative_llh_gap(
        ppca_mle(x, latent_dim).log_likelihood(x).sum().item(), learned.log_likelihood(x).sum().item()
    )


def evaluate(table: int, row: Row, model, guide, data, settings: TableSettings, mask_sampler: str, seed: int) -> dict:
    """The table's metrics of one trained configuration: ``{"metrics": {name: float}, "errors": {name: str}}``.

    A metric that fails is NaN and its error message is kept. Tables 1-2: the relative LLH gap;
    Table 1 adds rates and distortions (one sample, S from the training mask law); Table 2 the MCC;
    Tables 3-4: the importance-sampled LLH (sum, 10³ nats; training set for Table 3, test set for 4)
    and the MCC on the same set.
    """
    set_seed(seed + EVAL_SEED_OFFSET)
    model.eval()
    guide.eval()
    out: dict[str, float] = {}
    errors: dict[str, str] = {}

    def attempt(name, fn):
        try:
            return fn()
        except METRIC_ERRORS as err:
            errors[name] = f"{type(err).__name__}: {err}"[:300]
            return None

    train = data.train
    if table in (1, 2):
        # PPCA MLE with the true number of factors (30 for both parts of Table 2: 5 shared + 5 × 5 private)
        out["llh_gap"] = _num(attempt("llh_gap", lambda: llh_gap(model, train, LATENT_DIM[table])))
    if table == 1:
        rates = attempt(
            "rates",
            lambda: dataset_rates_and_distortions(model, guide, train, mask_sampler, batch_size=settings.eval_batch),
        )
        for k in ("full_reconstruction", "full_rate", "cross_prediction", "cross_rate"):
            out[k] = _num(None if rates is None else rates[k])
    if table == 2:
        # with private latents: one sample of (z′, z̃_1, …, z̃_M) ~ q(· | x_M) against the true 30-d latent
        res = attempt(
            "mcc", lambda: latent_mcc(guide, train, "z", batch_size=settings.eval_batch, private=row.private).as_dict()
        )
        out["mcc"] = _num(None if res is None else res["weak_out"])
        out["mcc_strong"] = _num(None if res is None else res["strong_out"])
    if table in (3, 4):
        ds = train if table == 3 else data.test
        ll = attempt(
            "llh",
            lambda: dataset_log_likelihood(
                model, guide, ds, batch_size=settings.eval_batch, num_particles=settings.particles
            ),
        )
        out["llh"] = _num(None if ll is None else float(ll.double().sum()) / 1e3)
        res = attempt("mcc", lambda: latent_mcc(guide, ds, "z", batch_size=settings.eval_batch).as_dict())
        out["mcc"] = _num(None if res is None else res["weak_out"])
        out["mcc_strong"] = _num(None if res is None else res["strong_out"])
    return {"metrics": out, "errors": errors}


def _num(x) -> float:
    """``x`` as a float, NaN for a missing or non-finite value."""
    if x is None:
        return math.nan
    x = float(x)
    return x if math.isfinite(x) else math.nan
