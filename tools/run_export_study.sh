#!/usr/bin/env bash
# The evidence for deployable tickets, in results/deployment/ (see its README.md):
#   1. LeNet-300-100 / Fashion-MNIST, 10,000 iterations per level, 2 replicates: IMP unstructured, with
#      1x4 blocks and with 2:4 (flags/lenet300_fashion_mnist_deployment.flags);
#   2. every replicate's tickets at levels 0, 3, 7, 11, 15 exported (float, dynamic-range, int8 and full-integer
#      int8 LiteRT; every file's weights checked against the ticket, every file run under the default
#      delegates and the builtin kernels, on raw test pixels);
#   3. Conv-2 / Fashion-MNIST (flags/fashion_mnist_conv2_deployment.flags), levels 0 and 4 exported;
#   4. the report (deployment table) and tools/benchmark_export.py (LiteRT latency against dense).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
OUT=results/deployment
mkdir -p "$OUT"
for structure in "" "--pruning_block=1x4" "--pruning_n_m=2:4"; do
  python -m lottery_tf.main --flagfile=flags/lenet300_fashion_mnist_deployment.flags $structure | tail -3
done
for experiment in runs/deployment/lottery_*; do
  for replicate in 0 1; do
    for level in 0 3 7 11 15; do
      python -m lottery_tf.export "$experiment" --replicate=$replicate --level=$level --formats=keras,litert \
        --quantize=none,dynamic,int8,int8_io --overwrite
    done
  done
done
python -m lottery_tf.main --flagfile=flags/fashion_mnist_conv2_deployment.flags | tail -3
for level in 0 4; do
  python -m lottery_tf.export runs/deployment_conv/lottery_* --level=$level --formats=keras,litert \
    --quantize=none,dynamic,int8,int8_io --overwrite
done
python -m lottery_tf.report runs/deployment runs/deployment_conv --out="$OUT" --curve_levels=0,3,7,11,15
python tools/benchmark_export.py --out="$OUT/benchmark_export.txt"
