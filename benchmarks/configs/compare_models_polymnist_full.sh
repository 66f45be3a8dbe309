#!/usr/bin/env bash
# The model comparison at the JNF paper's published PolyMNIST settings (Appendix E.2), for a GPU machine:
# every training tuple (1,000 held out for early stopping), MMVAE+'s ResNets at full width, each model's
# preset latent size (190 for the one-latent models = MMVAE+'s total 32 + 5 x 32; MMVAE 64), beta and
# batch of the presets, up to 150 epochs per stage with patience 10, evaluation on the 10,000 test tuples
# with every conditioning subset and 512 importance samples. Options not given come from
# pyro_mmvae.experiments.presets.
#
#   DATA=/path/to/shared/data bash benchmarks/configs/compare_models_polymnist_full.sh [runs-folder]
#
# A killed comparison continues with the same command: finished models are reused, interrupted ones resumed.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${1:-runs/compare_polymnist_full}
ROOT=$RUNS/data/polymnist
DEVICE=${DEVICE:-cuda}

[ -f "$ROOT/test/manifest.json" ] || pyro-mmvae data build polymnist --root "$ROOT" \
    --mnist "$DATA/mnist" --backgrounds "$DATA/polymnist_backgrounds"
python benchmarks/compare_models.py --dataset polymnist --data-root "$ROOT" \
    --classifiers "$DATA/pretrained_classifiers/polymnist" --device "$DEVICE" --threads 4 \
    --num-points 10000 --num-prior 10000 --llh-particles 512 \
    ${INCEPTION:+--inception-weights "$INCEPTION"} \
    --runs "$RUNS/runs" --out benchmarks/results/compare_models_polymnist_full
