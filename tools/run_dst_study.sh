#!/usr/bin/env bash
# Reproduces results/dst/: dynamic sparse training (SET and RigL, each with uniform and ERK per-layer
# densities) beside the IMP ticket, random reinitialization, random pruning, SNIP at initialization and
# gradual magnitude pruning, on LeNet-300-100 / Fashion-MNIST at 20,000 iterations per level
# (flags/lenet300_fashion_mnist_dst.flags): levels 0-15, 2 replicates, the branches at levels 3, 7, 11
# and 15; then the report (baselines_table.md, baselines_connections_moved.md, baselines_vs_weights.png).
# `python tools/estimate_cost.py --flagfile=flags/lenet300_fashion_mnist_dst.flags` says how long it takes
# here. RUNS=runs/baselines reuses that study's main line and baselines (the same experiment). Re-running
# skips everything already done; `--replicate=r` in EXTRA runs one replicate (e.g. one per machine).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/dst}
python -m lottery_tf.main --flagfile=flags/lenet300_fashion_mnist_dst.flags --output_dir="$RUNS" ${EXTRA:-}
python -m lottery_tf.report "$RUNS" --out=results/dst --curve_levels=0,3,7,11,15
