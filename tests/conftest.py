"""Shared fixtures: deterministic seeds, few threads (CI has 2 cores), a clean Pyro param store."""

import os

import pyro
import pytest
import torch

torch.set_num_threads(int(os.environ.get("PYRO_MMVAE_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_and_clear():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
