"""The metrics of one trained table configuration."""

from __future__ import annotations

import math

import torch

from ...metrics.likelihood import dataset_log_likelihood
from ...metrics.linear_gaussian import linear_decoder_model, ppca_mle, relative_llh_gap, stack_modalities
from ...metrics.mcc import encode_dataset_with_private, mcc
from ...metrics.probe import encode_dataset
from ...metrics.rates import dataset_rates_and_distortions
from ...utils import set_seed
from .settings import EVAL_SEED_OFFSET, LATENT_DIM, MCC_COMPONENTS, MCC_METHOD, TRUE_LLH_TABLES, Row, TableSettings
from .truth import true_log_likelihood

# Failures of a metric that are recorded (as NaN plus the message) instead of stopping the run.
METRIC_ERRORS = (ValueError, RuntimeError, FloatingPointError, torch.linalg.LinAlgError)


def learned_linear_llh(model, dataset) -> float:
    """The learned linear model's exact summed log-likelihood of ``dataset`` (from its affine decoders).

    For a private-latent model the latent is z′ followed by every modality's private block
    (``linear_decoder_model``).
    """
    x = stack_modalities(dataset.full, model.names)
    return linear_decoder_model(model).log_likelihood(x).sum().item()


def llh_gap(model, dataset, latent_dim: int, learned: float | None = None) -> float:
    """(ℓ_MLE − ℓ_model) / |ℓ_MLE| on the training data, with the PPCA MLE of ``latent_dim`` factors
    (``learned``: ℓ_model when already computed by :func:`learned_linear_llh`)."""
    x = stack_modalities(dataset.full, model.names)
    if learned is None:
        learned = learned_linear_llh(model, dataset)
    return relative_llh_gap(ppca_mle(x, latent_dim).log_likelihood(x).sum().item(), learned)


def data_metrics(table: int, data) -> dict[str, float]:
    """What a configuration's data alone determine: ``{"true_llh": ...}`` (summed, 10³ nats) for Tables 1-3."""
    if table not in TRUE_LLH_TABLES:
        return {}
    return {"true_llh": float(true_log_likelihood(table, data).sum()) / 1e3}


def evaluate(table: int, row: Row, model, guide, data, settings: TableSettings, mask_sampler: str, seed: int) -> dict:
    """The table's metrics of one trained configuration: ``{"metrics": {name: float}, "errors": {name: str}}``.

    A metric that fails is NaN and its error message is kept. Tables 1-2: the relative LLH gap to the
    PPCA MLE (``llh_gap``) and to the true model (``true_gap``); Table 1 adds rates and distortions (one
    sample, S from the training mask law); Table 2 the MCC. Tables 3-4: the importance-sampled LLH (sum,
    10³ nats; training set for Table 3, test set for 4) and the MCC on the same set; Table 3 adds
    ``true_gap`` = true-model LLH − LLH (10³ nats). Tables 1-3 also hold the seed's ``true_llh``
    (:func:`data_metrics`). MCC (:func:`mcc_metrics`): ``mcc`` from the first canonical pair
    (``MCC_COMPONENTS``) scored as the published scripts (``MCC_METHOD``: the randomized dependence
    coefficient for Tables 3-4), and its variants, all from the same sample ẑ ~ q(z | x_M).
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

    out.update(data_metrics(table, data))
    true_llh = out.get("true_llh", math.nan) * 1e3
    train = data.train
    if table in (1, 2):
        # PPCA MLE with the true number of factors (30 for both parts of Table 2: 5 shared + 5 × 5 private)
        learned = attempt("true_gap", lambda: learned_linear_llh(model, train))
        out["llh_gap"] = _num(attempt("llh_gap", lambda: llh_gap(model, train, LATENT_DIM[table], learned)))
        out["true_gap"] = _num(None if learned is None else relative_llh_gap(true_llh, learned))
    if table == 1:
        rates = attempt(
            "rates",
            lambda: dataset_rates_and_distortions(model, guide, train, mask_sampler, batch_size=settings.eval_batch),
        )
        for k in ("full_reconstruction", "full_rate", "cross_prediction", "cross_rate"):
            out[k] = _num(None if rates is None else rates[k])
    if table == 2:
        # with private latents: one sample of (z′, z̃_1, …, z̃_M) ~ q(· | x_M) against the true 30-d latent
        out.update(mcc_metrics(guide, train, settings.eval_batch, row.private, attempt, MCC_METHOD[2], seed))
    if table in (3, 4):
        ds = train if table == 3 else data.test
        ll = attempt(
            "llh",
            lambda: dataset_log_likelihood(
                model, guide, ds, batch_size=settings.eval_batch, num_particles=settings.particles
            ),
        )
        out["llh"] = _num(None if ll is None else float(ll.double().sum()) / 1e3)
        if table == 3:
            out["true_gap"] = _num(out["true_llh"] - out["llh"])
        unimodal = tuple(ds.names) if table == 3 else ()
        out.update(mcc_metrics(guide, ds, settings.eval_batch, False, attempt, MCC_METHOD[table], seed, unimodal))
    return {"metrics": out, "errors": errors}


def mcc_metrics(
    guide,
    dataset,
    batch_size: int = 500,
    private: bool = False,
    attempt=None,
    method: str = "pearson",
    seed: int = 0,
    unimodal: tuple[str, ...] = (),
) -> dict[str, float]:
    """MCC scores of ONE sample ẑ ~ q(z | x_M) per row against ``dataset.full.labels["z"]``.

    From :func:`~pyro_mmvae.metrics.mcc.mcc`: ``mcc`` is the weak_out score of the first canonical pair
    (``MCC_COMPONENTS``) with the pair's dependence scored by ``method`` (the published Table 3-4
    scripts: ``"rdc"``, its random features seeded by ``seed``), ``mcc_in`` the same on the half that
    fitted the CCA (weak_in); with ``method="rdc"`` also ``mcc_pearson``, the first pair's Pearson score;
    ``mcc_all_pairs``: weak_out of every canonical pair and ``mcc_strong``: strong_out, both Pearson (the
    published strong_out is Pearson). For each modality name in ``unimodal``, ``mcc_from_<name>``: the
    ``mcc`` score of one ẑ ~ q(z | x_name) (how much each modality alone identifies z; a mixture-of-experts
    posterior's sample comes from one of these experts). ``attempt(name, fn)`` may catch a failure (NaN
    scores then).
    """
    attempt = attempt or (lambda name, fn: fn())

    def scores():
        encode = encode_dataset_with_private if private else encode_dataset
        z_hat = encode(guide, dataset, None, batch_size, True)
        z_true = dataset.full.labels["z"]
        one = mcc(z_true, z_hat, MCC_COMPONENTS)
        scored = one if method == "pearson" else mcc(z_true, z_hat, MCC_COMPONENTS, method, seed + EVAL_SEED_OFFSET)
        return scored, one, mcc(z_true, z_hat, None)

    res = attempt("mcc", scores)
    scored, one, every = (None, None, None) if res is None else res
    out = {
        "mcc": _num(None if scored is None else scored.weak_out),
        "mcc_in": _num(None if scored is None else scored.weak_in),
    }
    if method != "pearson":
        out["mcc_pearson"] = _num(None if one is None else one.weak_out)
    out["mcc_all_pairs"] = _num(None if every is None else every.weak_out)
    out["mcc_strong"] = _num(None if one is None else one.strong_out)
    for name in unimodal:

        def score(name=name):
            z_hat = encode_dataset(guide, dataset, [name], batch_size, True)
            return mcc(dataset.full.labels["z"], z_hat, MCC_COMPONENTS, method, seed + EVAL_SEED_OFFSET).weak_out

        out[f"mcc_from_{name}"] = _num(attempt(f"mcc_from_{name}", score))
    return out


def _num(x) -> float:
    """``x`` as a float, NaN for a missing or non-finite value."""
    if x is None:
        return math.nan
    x = float(x)
    return x if math.isfinite(x) else math.nan
