#!/usr/bin/env bash
# Reproduces results/lenet300_fashion_mnist/: the LTH paper's LeNet-300-100 recipe on
# Fashion-MNIST (flags/lenet300_fashion_mnist.flags): levels 0-15 (down to 3.5% of the
# hidden weights), 2 replicates, random-reinitialization and random-pruning branches at
# levels 3, 7, 11 and 15; then the report (tables and plots).
# About 35 minutes on 2 CPU cores. Re-running skips everything already done.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
python -m lottery_tf.main --flagfile=flags/lenet300_fashion_mnist.flags --output_dir="$RUNS"
python -m lottery_tf.report "$RUNS" --out=results/lenet300_fashion_mnist --curve_levels=0,3,7,11,15
