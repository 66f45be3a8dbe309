"""The published numbers (β = 1) of Tables 1-4 of "Learning multi-modal generative models with
permutation-invariant encoders and tighter variational objectives".

They live in ``published.json`` next to this module (shipped as package data) and are loaded once::

    PUBLISHED[table][section][row][objective][metric] == [mean, std]   # std None where the paper gives none

e.g. ``PUBLISHED[3]["main"]["SumPooling"]["masked"]["llh"] == [-17.9, 3.92]`` (LLH in 10³ nats).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

DATA_FILE = "published.json"


@lru_cache(maxsize=1)
def load_published() -> dict[int, dict]:
    """``{table: {section: {row: {objective: {metric: [mean, std]}}}}}`` read from the package's data file.

    Table keys are ints (JSON keys are strings); the file is read once and the same dict is returned
    afterwards, so callers must not modify it.
    """
    text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")
    return {int(table): sections for table, sections in json.loads(text).items()}


PUBLISHED = load_published()
