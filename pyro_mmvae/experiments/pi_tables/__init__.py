"""Tables 1-4 of "Learning multi-modal generative models with permutation-invariant encoders and tighter
variational objectives" (masked bound vs mixture bound) as library code.

Every table is a grid of configurations (aggregator row × objective column × seed). Each
configuration generates its dataset (data seed = run seed; ``generator="library"`` draws from
``numpy.random.default_rng``, ``"authors"`` redoes the published scripts' draws for Tables 3-4, seeds
from 1, :mod:`.authors_data`), builds the paper's model and encoder,
trains it through ``fit`` (run folder per configuration, so an interrupted run resumes where it
stopped) and evaluates the table's metrics:

=======  ================================================  =================================================
table    data / model                                      metrics
=======  ================================================  =================================================
1        bimodal linear Gaussian, D = 3, linear decoders   relative LLH gap to the Gaussian MLE (analytic),
                                                           full reconstruction, full rate, cross prediction,
                                                           cross rate (one sample, S ~ the training mask law)
2        5 linear-Gaussian modalities, D = 30; dense       relative LLH gap to the PPCA MLE (analytic), MCC
         (shared latents) and sparse (private latents,
         equivariant encoders, D′ = D̃ = 5)
3        bimodal iVAE data (x ∈ R², one-hot label)         LLH on the 4000 training points (sum, ×10³ nats,
                                                           64 particles), MCC (training set)
4        4 non-linear 25-d views, D = 10, η ∈ {0.5, 0}     test LLH (sum, ×10³ nats, 512 particles), MCC (test)
=======  ================================================  =================================================

Beside these (``SECONDARY_METRICS``, not compared with published numbers): Tables 1-3 the seed's
true-model log-likelihood (``true_llh``, exact, :mod:`.truth`) and the gap to it (``true_gap``; Tables 1-2
also its absolute value ``abs_true_gap``, whose mean over seeds is not cancelled by the sign changes); the MCC
compared with the paper (``mcc``) is scored as the published scripts: the first canonical pair, and for
Tables 3-4 its randomized dependence coefficient (``MCC_METHOD``; Pearson's score of that pair is
``mcc_pearson``); the Pearson score of all pairs is ``mcc_all_pairs`` and the one without CCA
``mcc_strong``. PoE rows come twice: ``PoE`` with the correct Gaussian-product mean and
``PoE (paper mean)`` with Σ μ_s v_s / P, the published code's and the one compared with the published
PoE numbers. Table 4 keeps each view beyond the one every row keeps with probability 0.33, as the
published code (``VIEW_KEEP_PROB``).

Rows: PoE, MoE, SumPooling, SelfAttention (standard Normal prior); Tables 3-4 add SumPooling,
SelfAttention, SumPoolingMixture, SelfAttentionMixture with a learned K = 5 Gaussian-mixture prior;
Table 2's sparse part has PoE, SumPooling, SelfAttention with private latents. Columns: the masked
bound ("masked", MaskedELBO) and the mixture bound ("mixture", MixtureELBO). Training: Adam,
element-wise gradient clipping with NaN-zeroing, β = 1, STL, L = 1, masks S ~ "uniform" (each
observed modality kept with probability ½, as the paper's published code). The clip applies by
default to the gradient of the batch-mean loss, where it seldom binds; the published code clips the
gradient of the batch-SUMMED loss, where it binds on almost every step: ``RunOptions(clip_on="sum")``
(``--clip-on sum``) trains so (the mean loss's gradient clipped at ±clip / B, :func:`gradient_clip_value`).

Modules: :mod:`.settings` (sizes, rows, sections, metrics), :mod:`.published` (the paper's numbers,
from ``published.json``), :mod:`.authors_data` (the published scripts' datasets and view masks),
:mod:`.truth` (true-model log-likelihoods), :mod:`.builders` (data, models, guides, objectives),
:mod:`.evaluation` (metrics of a trained configuration), :mod:`.runner` (one configuration, plans, worker processes),
:mod:`.claims` (summaries, the paper's claims, differences from the published numbers) and
:mod:`.report` (JSON and markdown). From Python::

    from pyro_mmvae.experiments.pi_tables import run_configuration, table_settings, train_configuration

    result = run_configuration(3, "main", "SumPooling", "masked", seed=0, settings=table_settings(3, quick=True))
    result["metrics"]  # {"true_llh": ..., "llh": ..., "true_gap": ..., "mcc": ..., "mcc_all_pairs": ..., ...}
    # the same configuration's trained networks, reloaded from its run folder (not retrained)
    model, guide, data, training = train_configuration(
        3, "main", "SumPooling", "masked", seed=0, settings=table_settings(3, quick=True)
    )

The command ``python benchmarks/reproduce_pi_tables.py`` runs whole tables and writes the report.
"""

from .authors_data import authors_ivae_bimodal, authors_ivae_multimodal, authors_view_mask
from .builders import build_elbo, build_guide, build_model, make_data
from .claims import PENDING, check_claims, compare_to_published, published_row, summarise
from .evaluation import data_metrics, evaluate, llh_gap, mcc_metrics
from .published import PUBLISHED, load_published
from .report import build_report, markdown, print_claims, reasons, write_outputs
from .runner import (
    CLIP_ON,
    EVALUATION_VERSION,
    Job,
    RunOptions,
    data_tag,
    gradient_clip_value,
    make_plan,
    run_configuration,
    run_folder,
    run_jobs,
    run_tables,
    train_configuration,
)
from .settings import (
    AUTHORS_TABLES,
    FIRST_SEED,
    FULL,
    FULL_COND_DRAWS,
    GENERATORS,
    LATENT_DIM,
    LAYOUT,
    LLH_METRIC,
    MCC_COMPONENTS,
    MCC_METHOD,
    METRICS,
    OBJECTIVE_TITLES,
    OBJECTIVES,
    PAPER_MEAN_POE,
    QUICK,
    QUICK_COND_DRAWS,
    SECONDARY_METRICS,
    TABLE_TITLES,
    VIEW_KEEP_PROB,
    Row,
    Section,
    TableSettings,
    find_row,
    find_section,
    metric_value,
    seed_range,
    settings_note,
    table_settings,
)
from .truth import bivariate_normal_cdf, ivae_bimodal_log_likelihood, true_log_likelihood

__all__ = [
    "AUTHORS_TABLES",
    "CLIP_ON",
    "EVALUATION_VERSION",
    "FIRST_SEED",
    "FULL",
    "FULL_COND_DRAWS",
    "GENERATORS",
    "LATENT_DIM",
    "LAYOUT",
    "LLH_METRIC",
    "MCC_COMPONENTS",
    "MCC_METHOD",
    "METRICS",
    "OBJECTIVES",
    "OBJECTIVE_TITLES",
    "PAPER_MEAN_POE",
    "PENDING",
    "PUBLISHED",
    "QUICK",
    "QUICK_COND_DRAWS",
    "SECONDARY_METRICS",
    "TABLE_TITLES",
    "VIEW_KEEP_PROB",
    "Job",
    "Row",
    "RunOptions",
    "Section",
    "TableSettings",
    "authors_ivae_bimodal",
    "authors_ivae_multimodal",
    "authors_view_mask",
    "bivariate_normal_cdf",
    "build_elbo",
    "build_guide",
    "build_model",
    "build_report",
    "check_claims",
    "compare_to_published",
    "data_metrics",
    "data_tag",
    "gradient_clip_value",
    "evaluate",
    "find_row",
    "find_section",
    "ivae_bimodal_log_likelihood",
    "llh_gap",
    "load_published",
    "make_data",
    "make_plan",
    "markdown",
    "mcc_metrics",
    "metric_value",
    "print_claims",
    "published_row",
    "reasons",
    "run_configuration",
    "run_folder",
    "run_jobs",
    "run_tables",
    "seed_range",
    "settings_note",
    "summarise",
    "table_settings",
    "train_configuration",
    "true_log_likelihood",
    "write_outputs",
]
