#!/usr/bin/env bash
# What --deterministic costs: one 5,000-iteration LeNet-300-100 level on Fashion-MNIST,
# with and without TensorFlow op determinism (which also turns XLA off), as
# training steps per second (wall time of the level, evaluation every 100 steps included).
# Op determinism is process-wide, so each setting runs in its own process.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for mode in "" "--deterministic"; do
  python -m lottery_tf.main --flagfile=flags/lenet300_fashion_mnist.flags --iterations=5000 --levels=0 --branch_levels= \
    --branch= --replicates=1 --checkpoint_every=0 --tensorboard=false $mode --output_dir="$out/run${mode:+_det}" > /dev/null
done
python - "$out" <<'PY'
import glob, json, sys
rates = {}
for name, label in (("run", "default (XLA, 100 steps per call)"), ("run_det", "--deterministic (no XLA)")):
    (path,) = glob.glob(f"{sys.argv[1]}/{name}/lottery_*/replicate_0/level_00/main/metrics.json")
    metrics = json.load(open(path))
    rates[name] = metrics["steps"] / metrics["wall_seconds"]
    print(f"{label:<36} {rates[name]:8.0f} steps/s   final test accuracy {metrics['final_test_accuracy']:.4f}")
print(f"{'ratio deterministic / default':<36} {rates['run_det'] / rates['run']:8.2f}")
PY
