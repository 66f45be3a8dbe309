"""The papers' experiment set-ups as library code.

- :mod:`.toy`: the circles/squares data, networks, evaluation and figures;
- :mod:`.jnf_pipeline`: the staged JNF / JNF-Shared pipeline on it (``pyro-mmvae train`` / ``sample``);
- :mod:`.pi_tables`: Tables 1-4 of the permutation-invariant encoders paper
  (``benchmarks/reproduce_pi_tables.py``);
- :mod:`.subset_posterior_benchmark`: BatchedHMC against stock Pyro NUTS on flow-expert subset posteriors
  (``benchmarks/subset_posterior.py``).
"""
