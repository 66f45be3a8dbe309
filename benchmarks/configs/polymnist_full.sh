#!/usr/bin/env bash
# The published PolyMNIST settings of the JNF paper (Appendix E.2), unchanged, for a GPU machine:
# all 60,000 training tuples (1,000 held out for early stopping), MMVAE+'s ResNets at full width (64 base
# channels), latent size 190, beta 2.5, batch 128, Adam 1e-3, up to 150 epochs with patience 10 (the paper
# trains "until convergence"). Every option not given comes from pyro_mmvae.experiments.presets.
#
#   DATA=/path/to/shared/data bash benchmarks/configs/polymnist_full.sh [runs-folder]
#
# Killed runs continue with the same command plus --resume (each stage is checkpointed).
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${1:-runs/polymnist-full}
ROOT=$RUNS/data/polymnist
DEVICE=${DEVICE:-cuda}

[ -f "$ROOT/test/manifest.json" ] || pyro-mmvae data build polymnist --root "$ROOT" \
    --mnist "$DATA/mnist" --backgrounds "$DATA/polymnist_backgrounds"
for MODEL in jnf jnf-shared sumpooling mopoe; do
    pyro-mmvae train --dataset polymnist --data-root "$ROOT" --model "$MODEL" --device "$DEVICE" \
        --out "$RUNS/$MODEL" ${RESUME:+--resume}
    pyro-mmvae evaluate --run "$RUNS/$MODEL" --classifiers "$DATA/pretrained_classifiers/polymnist" \
        --num-points 10000 --device "$DEVICE"
done
