#!/usr/bin/env bash
# Runs the same four command-line studies with two revisions of lottery_tf and compares every result file
# (tools/compare_runs.py): a change to the library must leave the command line's results bit-identical.
#   bash tools/bit_identity.sh BEFORE_REV AFTER_REV     (e.g. 75db641 HEAD; about 20 minutes on 2 cores)
# Evidence written with it: results/bit_identity_issue26.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
runs() {  # $1: checkout, $2: root
  cd "$1"
  python -m lottery_tf.main --flagfile=flags/smoke.flags --output_dir="$2/smoke" > /dev/null
  python -m lottery_tf.main --flagfile=flags/smoke.flags --rewind_step=50 --branch=lr_rewind,random_prune \
    --optimizer=sgd --momentum=0.9 --learning_rate=0.05 --output_dir="$2/smoke_k50" > /dev/null
  python -m lottery_tf.main --dataset=fashion_mnist --validation_examples=5000 --model=cifar_resnet_8 \
    --initializer=he_normal --optimizer=sgd --learning_rate=0.1 --momentum=0.9 --weight_decay=1e-4 \
    --weight_decay_mode=l2 --batch_size=64 --iterations=120 --lr_schedule=step --lr_milestones=80,100 \
    --lr_gamma=0.1 --eval_every=60 --checkpoint_every=40 --pruning_method=global --pruning_fraction=0.36 \
    --output_pruning_fraction=0 --levels=2 --rewind_step=20 --replicates=1 --seed=0 \
    --output_dir="$2/resnet8" > /dev/null
  python -m lottery_tf.main --flagfile=flags/quickstart.flags --output_dir="$2/quickstart" > /dev/null
}
for side in before after; do
  rev=$([ "$side" = before ] && echo "$1" || echo "$2")
  git -C "$repo" worktree add --detach "$work/$side-code" "$rev" > /dev/null 2>&1
  runs "$work/$side-code" "$work/$side"
  git -C "$repo" worktree remove --force "$work/$side-code"
done
status=0
for run in smoke smoke_k50 resnet8 quickstart; do
  result=$(python "$repo/tools/compare_runs.py" "$work/before/$run" "$work/after/$run") || status=1
  echo "$run: $(echo "$result" | tr '\n' ' ')"
done
exit $status
