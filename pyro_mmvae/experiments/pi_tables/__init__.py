"""Tables 1-4 of "Learning multi-modal generative models with permutation-invariant encoders and tighter
variational objectives" (masked bound vs mixture bound) as library code.

Every table is a grid of configurations (aggregator row × objective column × seed). Each
configuration generates its dataset (data seed = run seed), builds the paper's model and encoder,
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

Rows: PoE, MoE, SumPooling, SelfAttention (standard Normal prior); Tables 3-4 add SumPooling,
SelfAttention, SumPoolingMixture, SelfAttentionMixture with a learned K = 5 Gaussian-mixture prior;
Table 2's sparse part has PoE, SumPooling, SelfAttention with private latents. Columns: the masked
bound ("masked", MaskedELBO) and the mixture bound ("mixture", MixtureELBO). Training: Adam,
element-wise gradient clipping with NaN-zeroing, β = 1, STL, L = 1, masks S ~ "uniform" (each
observed modality kept with probability ½, as the paper's published code).

Modules: :mod:`.settings` (sizes, rows, sections, metrics), :mod:`.published` (the paper's numbers,
from ``published.json``), :mod:`.builders` (data, models, guides, objectives), :mod:`.evaluation`
(metrics of a trained configuration), :mod:`.runner` (one configuration, plans, worker processes),
:mod:`.claims` (summaries, the paper's claims, differences from the published numbers) and
:mod:`.report` (JSON and markdown). From Python::

    from pyro_mmvae.experiments.pi_tables import run_configuration, table_settings

    result = run_configuration(3, "main", "SumPooling", "masked", seed=0, settings=table_settings(3, quick=True))
    result["metrics"]  # {"llh": ..., "mcc": ..., "mcc_strong": ...}

The command ``python benchmarks/reproduce_pi_tables.py`` runs whole tables and writes the report.
"""

from .builders import build_elbo, build_guide, build_model, make_data
from .claims import PENDING, check_claims, compare_to_published, summarise
from .evaluation import evaluate, llh_gap
from .published import PUBLISHED, load_published
from .report import build_report, markdown, print_claims, reasons, write_outputs
from .runner import Job, RunOptions, make_plan, run_configuration, run_folder, run_jobs, run_tables
from .settings import (
    FULL,
    FULL_COND_DRAWS,
    LATENT_DIM,
    LAYOUT,
    LLH_METRIC,
    METRICS,
    OBJECTIVE_TITLES,
    OBJECTIVES,
    QUICK,
    QUICK_COND_DRAWS,
    TABLE_TITLES,
    Row,
    Section,
    TableSettings,
    find_row,
    find_section,
    settings_note,
    table_settings,
)

__all__ = [
    "FULL",
    "FULL_COND_DRAWS",
    "LATENT_DIM",
    "LAYOUT",
    "LLH_METRIC",
    "METRICS",
    "OBJECTIVES",
    "OBJECTIVE_TITLES",
    "PENDING",
    "PUBLISHED",
    "QUICK",
    "QUICK_COND_DRAWS",
    "TABLE_TITLES",
    "Job",
    "Row",
    "RunOptions",
    "Section",
    "TableSettings",
    "build_elbo",
    "build_guide",
    "build_model",
    "build_report",
    "check_claims",
    "compare_to_published",
    "evaluate",
    "find_row",
    "find_section",
    "llh_gap",
    "load_published",
    "make_data",
    "make_plan",
    "markdown",
    "print_claims",
    "reasons",
    "run_configuration",
    "run_folder",
    "run_jobs",
    "run_tables",
    "settings_note",
    "summarise",
    "table_settings",
    "write_outputs",
]
