#!/usr/bin/env bash
# Reproduces results/instability/: instability (linear mode connectivity) and stability to
# pruning / data order on real Fashion-MNIST (Debian's dataset-fashion-mnist), on a 2-core CPU:
#   lenet/   flags/lenet300_fashion_mnist_instability.flags   (about 45 minutes)
#   resnet8/ flags/fashion_mnist_resnet8_instability.flags    (BatchNorm, SGD; about 35 minutes)
#   sweep/   flags/lenet300_fashion_mnist_rewind_sweep.flags  (IMP at k = 0, 100, 500, 2000; about 25 minutes
#            more, the k = 0 run being the lenet/ one)
# Pass the parts to run (default: all three). Re-running skips everything already done.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/instability}
parts=("${@:-lenet resnet8 sweep}")
for part in ${parts[@]}; do
  case "$part" in
    lenet)
      python -m lottery_tf.main --flagfile=flags/lenet300_fashion_mnist_instability.flags --output_dir="$RUNS"
      python -m lottery_tf.report "$RUNS/lottery_a71fc729df" --out=results/instability/lenet --curve_levels=0,7,15 ;;
    resnet8)
      python -m lottery_tf.main --flagfile=flags/fashion_mnist_resnet8_instability.flags --output_dir="$RUNS"
      python -m lottery_tf.report "$RUNS/lottery_f3e046d843" --out=results/instability/resnet8 --curve_levels=0,4 ;;
    sweep)
      python -m lottery_tf.main --flagfile=flags/lenet300_fashion_mnist_rewind_sweep.flags --output_dir="$RUNS"
      python -m lottery_tf.report "$RUNS/lottery_a71fc729df" "$RUNS/lottery_7730fb6aa2" "$RUNS/lottery_2e10f35a2f" \
        "$RUNS/lottery_ed33f20c1d" --out=results/instability/sweep --curve_levels=0,7,15 ;;
    *) echo "unknown part $part (expected lenet, resnet8, sweep)" >&2; exit 2 ;;
  esac
done
