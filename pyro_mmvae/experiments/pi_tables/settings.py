"""What the tables of "Learning multi-modal generative models with permutation-invariant encoders and
tighter variational objectives" contain: training constants, rows, sections, metrics and titles.

Everything here is plain data (no torch): the builders, the runner and the report read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

OBJECTIVES = ("masked", "mixture")
OBJECTIVE_TITLES = {"masked": "ours (masked)", "mixture": "mixture bound"}
EVAL_SEED_OFFSET = 100_000  # evaluation randomness is seeded apart from training randomness
FIXED_AGGREGATORS = ("PoE", "MoE")
LEARNED_AGGREGATORS = ("SumPooling", "SelfAttention")
MIXTURE_AGGREGATORS = ("SumPoolingMixture", "SelfAttentionMixture")

# Data generators: the library's (numpy default_rng, seeds from 0) or the published scripts' exact draws
# (legacy RandomState, float32, seeds from 1; Tables 3-4 only: Table 1 has no published code and Table 2's
# draws JAX's PRNG).
GENERATORS = ("library", "authors")
FIRST_SEED = {"library": 0, "authors": 1}
AUTHORS_TABLES = (3, 4)
# Table 4: probability of keeping each view beyond the one every row keeps. The published code's CPM-Nets
# procedure truncates it to whole percent, 0.33 for M = 4 and η = 0.5; the library's
# partial_view_mask uses the exact 1/3 (pass view_keep_prob=None).
VIEW_KEEP_PROB = 0.33
# MCC: canonical pairs of the CCA behind the published numbers (the published scripts call
# compute_mcc(..., cca_dim=1)); the score of all min(D, D̂) pairs is reported as "mcc_all_pairs".
MCC_COMPONENTS = 1
# How `mcc` scores the dependence of a canonical pair. The published Table 3-4 scripts score it with the
# randomized dependence coefficient (their mcc.py's default), which exceeds Pearson's |ρ| where the
# learned latent is a non-linear function of the true one; Pearson's one-pair score is kept as
# "mcc_pearson". Table 2 (linear Gaussian, no published MCC code) uses Pearson.
MCC_METHOD = {2: "pearson", 3: "rdc", 4: "rdc"}


@dataclass(frozen=True)
class TableSettings:
    """Training and evaluation constants of one table."""

    epochs: int
    seeds: tuple[int, ...]
    batch_size: int
    lr: float
    clip: float  # element-wise gradient clipping ±clip (NaN gradients are zeroed first)
    num_train: int
    num_test: int | None = None
    particles: int | None = None  # importance-sampling particles of the LLH (Tables 3-4)
    eval_batch: int = 500


FULL = {
    1: TableSettings(4000, (0, 1, 2, 3, 4), 500, 1e-3, 100.0, 5000),
    2: TableSettings(4000, (0, 1, 2, 3, 4), 500, 1e-3, 100.0, 5000),
    3: TableSettings(4000, (0, 1, 2, 3), 250, 5e-4, 1000.0, 4000, particles=64),
    4: TableSettings(4000, (0, 1, 2, 3, 4), 250, 5e-4, 1000.0, 5000, num_test=5000, particles=512, eval_batch=250),
}
# Quick settings: same data sizes, models and optimiser constants; only epochs, seeds and particles
# shrink (and the Table 4 mixing-matrix conditioning reference uses 500 instead of 10^4 draws).
QUICK = {
    1: replace(FULL[1], epochs=30, seeds=(0,)),
    2: replace(FULL[2], epochs=15, seeds=(0,)),
    3: replace(FULL[3], epochs=25, seeds=(0,), particles=16),
    4: replace(FULL[4], epochs=6, seeds=(0,), particles=16),
}
QUICK_COND_DRAWS, FULL_COND_DRAWS = 500, 10_000

TABLE_TITLES = {
    1: "Table 1 — bimodal linear Gaussian model (a less and a more noisy modality)",
    2: "Table 2 — Gaussian model with five modalities",
    3: "Table 3 — non-linear identifiable model, auxiliary label as second modality",
    4: "Table 4 — non-linear identifiable model with M = 4 modalities, partially (η = 0.5) and fully (η = 0) observed",
}


@dataclass(frozen=True)
class Row:
    """One row of a table: an aggregation scheme with a prior (and private latents for Table 2 sparse).

    ``poe_mean`` (PoE rows): ``"correct"`` Σ(μ_s/v_s)/P or ``"paper"`` Σ μ_s v_s / P, the paper's §3
    formula and the published code's. ``published_as``: the label of the paper's row whose numbers this
    row is compared with (``""``: its own label; None: no comparable published row). ``in_claims``:
    whether the paper's claims read this row (a variant of another row, e.g. the PoE with the paper's
    mean, is reported but left out).
    """

    label: str  # unique within its section
    aggregator: str
    prior: str = "normal"
    private: bool = False
    poe_mean: str = "correct"
    published_as: str | None = ""
    in_claims: bool = True

    @property
    def published_label(self) -> str | None:
        """The label of the published row compared with this one (None: none)."""
        return self.label if self.published_as == "" else self.published_as


@dataclass(frozen=True)
class Section:
    """A block of rows of one table sharing a data set (e.g. Table 4's η = 0.5 part)."""

    name: str
    title: str
    rows: tuple[Row, ...]
    eta: float | None = None


PAPER_MEAN_POE = "PoE (paper mean)"


def _poe_rows(private: bool = False) -> tuple[Row, ...]:
    """Both PoE means: the published PoE numbers come from Σ μ_s v_s / P, so only that row is compared with them."""
    return (
        Row("PoE", "PoE", private=private, published_as=None),
        Row(PAPER_MEAN_POE, "PoE", private=private, poe_mean="paper", published_as="PoE", in_claims=False),
    )


def _shared_rows() -> tuple[Row, ...]:
    return _poe_rows() + tuple(Row(a, a) for a in ("MoE", *LEARNED_AGGREGATORS))


def _gmm_rows() -> tuple[Row, ...]:
    return tuple(Row(f"{a} (GMM prior)", a, prior="gmm") for a in (*LEARNED_AGGREGATORS, *MIXTURE_AGGREGATORS))


LAYOUT: dict[int, tuple[Section, ...]] = {
    1: (Section("main", "shared latent, N(0, I) prior", _shared_rows()),),
    2: (
        Section("dense", "invariant aggregation, dense decoders", _shared_rows()),
        Section(
            "sparse",
            "equivariant aggregation, sparse decoders (private latents)",
            _poe_rows(private=True) + tuple(Row(a, a, private=True) for a in LEARNED_AGGREGATORS),
        ),
    ),
    3: (Section("main", "K = 1 (N(0, I)) and K = 5 (GMM) priors", _shared_rows() + _gmm_rows()),),
    4: (
        Section("eta=0.5", "partially observed (η = 0.5)", _shared_rows() + _gmm_rows(), eta=0.5),
        Section("eta=0", "fully observed (η = 0)", _shared_rows() + _gmm_rows(), eta=0.0),
    ),
}

# metric name -> (title, higher is better)
METRICS: dict[int, dict[str, tuple[str, bool]]] = {
    1: {
        "llh_gap": ("relative LLH gap", False),
        "full_reconstruction": ("full reconstruction −D_M", True),
        "full_rate": ("full rate R_M", False),
        "cross_prediction": ("cross prediction −D^c", True),
        "cross_rate": ("cross rate R_\\S", False),
    },
    2: {"llh_gap": ("LLH gap", False), "mcc": ("MCC", True)},
    3: {"llh": ("LLH (×10³)", True), "mcc": ("MCC", True)},
    4: {"llh": ("test LLH (×10³)", True), "mcc": ("MCC", True)},
}
LLH_METRIC = {1: "llh_gap", 2: "llh_gap", 3: "llh", 4: "llh"}
# Reported beside METRICS but not compared with published numbers: other MCC variants (Pearson on the
# first pair, all pairs, the strong one) and the gap to the true model (its log-likelihood itself,
# "true_llh", is a property of a seed's data).
_TRUE_GAP_RELATIVE = ("relative LLH gap to the true model", False)
_TRUE_GAP_ABSOLUTE = ("absolute relative LLH gap to the true model", False)
SECONDARY_METRICS: dict[int, dict[str, tuple[str, bool]]] = {
    1: {"true_gap": _TRUE_GAP_RELATIVE, "abs_true_gap": _TRUE_GAP_ABSOLUTE},
    2: {
        "true_gap": _TRUE_GAP_RELATIVE,
        "abs_true_gap": _TRUE_GAP_ABSOLUTE,
        "mcc_all_pairs": ("MCC, all canonical pairs", True),
        "mcc_strong": ("MCC without CCA (strong)", True),
    },
    3: {
        "true_gap": ("true-model LLH − LLH (×10³)", False),
        "mcc_pearson": ("MCC, first pair, Pearson", True),
        "mcc_all_pairs": ("MCC, all canonical pairs", True),
        "mcc_strong": ("MCC without CCA (strong)", True),
        "mcc_from_x": ("MCC from x alone", True),
        "mcc_from_u": ("MCC from the label alone", True),
    },
    4: {
        "mcc_pearson": ("MCC, first pair, Pearson", True),
        "mcc_all_pairs": ("MCC, all canonical pairs", True),
        "mcc_strong": ("MCC without CCA (strong)", True),
    },
}
# Metrics a report derives from stored ones (so stored results need no re-evaluation): name -> the
# stored metric whose absolute value it is. The relative gap to the true model changes sign across
# seeds (a sample's MLE beats the true parameters), so its mean hides its size; the mean of |gap| does not.
ABSOLUTE_OF = {"abs_true_gap": "true_gap"}


def metric_value(metrics: dict, name: str) -> float | None:
    """Metric ``name`` of a stored result's ``metrics``, derived where :data:`ABSOLUTE_OF` says so."""
    if name in ABSOLUTE_OF:
        v = metrics.get(ABSOLUTE_OF[name])
        return None if v is None else abs(v)
    return metrics.get(name)


TRUE_LLH_TABLES = (1, 2, 3)  # the tables whose data have an exact true-model log-likelihood

# Model and encoder sizes.
LATENT_DIM = {1: 3, 2: 30, 3: 2, 4: 10}
PRIVATE_DIMS = (5, 5)  # Table 2 sparse: shared z′ and private z̃_s, 5 dimensions each (D = 30 with M = 5)
NUM_COMPONENTS = 5  # GMM prior and mixture encoders
# Encoder sizes per table: unimodal hidden layers, feature size E, set-network width, σ floor.
SIZES = {
    1: dict(hidden=(256, 256), feature=60, width=256, min_scale=1e-3),  # Table 1 reuses the Table 2 setting
    2: dict(hidden=(256, 256), feature=60, width=256, min_scale=1e-3),
    3: dict(hidden=(128, 128), feature=128, width=128, min_scale=1e-3),
    4: dict(hidden=(256, 256), feature=256, width=256, min_scale=5e-4),
}


def table_settings(
    table: int,
    quick: bool = False,
    *,
    epochs: int | None = None,
    seeds: tuple[int, ...] | None = None,
    particles: int | None = None,
    num_train: int | None = None,
    num_test: int | None = None,
    generator: str = "library",
) -> TableSettings:
    """The quick or full settings of ``table`` with the given overrides.

    ``particles`` and ``num_test`` only apply to tables that have them (Tables 3-4 and Table 4).
    Without ``seeds``, the default number of seeds starts at ``FIRST_SEED[generator]`` (0, or 1 for the
    published scripts' seeds).
    """
    s = (QUICK if quick else FULL)[table]
    changes = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if seeds is not None:
        changes["seeds"] = tuple(seeds)
    else:
        changes["seeds"] = seed_range(len(s.seeds), generator)
    if particles is not None and s.particles is not None:
        changes["particles"] = particles
    if num_train is not None:
        changes["num_train"] = num_train
    if num_test is not None and s.num_test is not None:
        changes["num_test"] = num_test
    return replace(s, **changes)


def seed_range(n: int, generator: str = "library") -> tuple[int, ...]:
    """``n`` consecutive seeds from the generator's first seed: (0, …, n−1), or (1, …, n) for ``"authors"``."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; expected one of {GENERATORS}")
    return tuple(range(FIRST_SEED[generator], FIRST_SEED[generator] + int(n)))


def find_section(table: int, name: str | Section) -> Section:
    """The section called ``name`` of ``table`` (a :class:`Section` is returned as is)."""
    if isinstance(name, Section):
        return name
    for sec in LAYOUT[table]:
        if sec.name == name:
            return sec
    raise ValueError(f"table {table} has no section {name!r}; expected one of {[s.name for s in LAYOUT[table]]}")


def find_row(section: Section, label: str | Row) -> Row:
    """The row labelled ``label`` of ``section`` (a :class:`Row` is returned as is)."""
    if isinstance(label, Row):
        return label
    for row in section.rows:
        if row.label == label:
            return row
    raise ValueError(
        f"section {section.name!r} has no row {label!r}; expected one of {[r.label for r in section.rows]}"
    )


def is_quick(name: str) -> bool:
    """Whether a run name is the quick mode's (``"quick"``, or ``"quick_<generator>"``)."""
    return name == "quick" or name.startswith("quick_")


def settings_note(name: str, cond_draws: int = QUICK_COND_DRAWS) -> str:
    """The report's sentence on how the run's settings relate to the full ones (``cond_draws``: the run's)."""
    if is_quick(name):
        epochs = ", ".join(f"Table {t}: {QUICK[t].epochs}" for t in QUICK)
        cond = (
            f", and the Table 4 mixing-matrix conditioning reference ({cond_draws} instead of {FULL_COND_DRAWS} draws)"
            if cond_draws < FULL_COND_DRAWS
            else ""
        )
        return (
            f"Quick mode changes ONLY: epochs ({epochs} instead of 4000), one seed instead of 4-5, "
            f"{QUICK[3].particles} instead of 64/512 LLH particles (Tables 3-4){cond}. Data sizes, "
            "architectures, batch sizes, optimiser constants and evaluation sets are the full ones. The numbers "
            "are a smoke-level reproduction, NOT converged results."
        )
    return (
        "Settings that differ from the paper's full settings are shown as `value (full: value)` above. Everything "
        "else (data sizes, architectures, batch sizes, optimiser constants, particles) is as in the full settings."
    )
