#!/usr/bin/env bash
# Reproduces results/baselines/: IMP beside pruning at initialization (SNIP, GraSP, SynFlow,
# magnitude, random; each with the ICLR 2021 paper's ablations: layer masks shuffled,
# reinitialized, scores inverted) and gradual magnitude pruning, on LeNet-300-100 /
# Fashion-MNIST at 20,000 iterations per level (flags/lenet300_fashion_mnist_baselines.flags):
# levels 0-15, 2 replicates, every baseline at levels 3, 7, 11 and 15; then the report.
# About 2 hours on 2 CPU cores (216 trainings). Re-running skips everything already done;
# `--replicate=r` in EXTRA runs one replicate (e.g. one per machine).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/baselines}
python -m lottery_tf.main --flagfile=flags/lenet300_fashion_mnist_baselines.flags --output_dir="$RUNS" ${EXTRA:-}
python -m lottery_tf.report "$RUNS" --out=results/baselines --curve_levels=0,3,7,11,15
