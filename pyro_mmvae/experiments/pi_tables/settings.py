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
    """One row of a table: an aggregation scheme with a prior (and private latents for Table 2 sparse)."""

    label: str  # unique within its section
    aggregator: str
    prior: str = "normal"
    private: bool = False


@dataclass(frozen=True)
class Section:
    """A block of rows of one table sharing a data set (e.g. Table 4's η = 0.5 part)."""

    name: str
    title: str
    rows: tuple[Row, ...]
    eta: float | None = None


def _shared_rows() -> tuple[Row, ...]:
    return tuple(Row(a, a) for a in (*FIXED_AGGREGATORS, *LEARNED_AGGREGATORS))


def _gmm_rows() -> tuple[Row, ...]:
    return tuple(Row(f"{a} (GMM prior)", a, prior="gmm") for a in (*LEARNED_AGGREGATORS, *MIXTURE_AGGREGATORS))


LAYOUT: dict[int, tuple[Section, ...]] = {
    1: (Section("main", "shared latent, N(0, I) prior", _shared_rows()),),
    2: (
        Section("dense", "invariant aggregation, dense decoders", _shared_rows()),
        Section(
            "sparse",
            "equivariant aggregation, sparse decoders (private latents)",
            tuple(Row(a, a, private=True) for a in ("PoE", *LEARNED_AGGREGATORS)),
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
) -> TableSettings:
    """The quick or full settings of ``table`` with the given overrides.

    ``particles`` and ``num_test`` only apply to tables that have them (Tables 3-4 and Table 4).
    """
    s = (QUICK if quick else FULL)[table]
    changes = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if seeds is not None:
        changes["seeds"] = tuple(seeds)
    if particles is not None and s.particles is not None:
        changes["particles"] = particles
    if num_train is not None:
        changes["num_train"] = num_train
    if num_test is not None and s.num_test is not None:
        changes["num_test"] = num_test
    return replace(s, **changes)


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


def settings_note(name: str) -> str:
    """The report's sentence on how the run's settings relate to the full ones."""
    if name == "quick":
        epochs = ", ".join(f"Table {t}: {QUICK[t].epochs}" for t in QUICK)
        return (
            f"Quick mode changes ONLY: epochs ({epochs} instead of 4000), one seed instead of 4-5, "
            f"{QUICK[3].particles} instead of 64/512 LLH particles (Tables 3-4), and the Table 4 mixing-matrix "
            f"conditioning reference ({QUICK_COND_DRAWS} instead of {FULL_COND_DRAWS} draws). Data sizes, "
            "architectures, batch sizes, optimiser constants and evaluation sets are the full ones. The numbers "
            "are a smoke-level reproduction, NOT converged results."
        )
    return (
        "Settings that differ from the paper's full settings are shown as `value (full: value)` above. Everything "
        "else (data sizes, architectures, batch sizes, optimiser constants, particles) is as in the full settings."
    )
