#!/usr/bin/env bash
# Reproduces results/lenet300_fashion_mnist/: the paper's LeNet-300-100 recipe on
# Fashion-MNIST, levels 0-15 (density down to 3.6% of hidden weights), random
# reinitialization controls at levels 3, 7, 11, 15, for seeds 0 and 1.
# About 20 minutes per seed on 2 CPU cores. Re-running skips finished levels.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
for seed in 0 1; do
  python -m lottery_tf.main --flagfile=flags/lenet300_fashion_mnist.flags \
    --seed="$seed" --output_dir="$RUNS/lenet300_fashion_mnist_seed$seed"
done
python -m lottery_tf.report "$RUNS"/lenet300_fashion_mnist_seed0 "$RUNS"/lenet300_fashion_mnist_seed1 \
  --out=results/lenet300_fashion_mnist
