#!/usr/bin/env bash
# The training time per step of SET and RigL (uniform and ERK) against IMP's, measured in one run on a machine
# with nothing else running: the DST study's recipe (flags/lenet300_fashion_mnist_dst.flags, evaluation every 500,
# RigL's and SET's updates every 100 steps) at 5,000 iterations per level (GMP's schedule scaled by 1/4) for
# levels 0-3 and two replicates, every baseline branch at level 3 (51% of weights): 8 main-line trainings and 16
# branch trainings, one after another in one process (about 7 minutes on the project's 2-core machine). Writes
# results/dst/time_per_step.md (the report's baselines_time_per_step.md, with the command and the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
load=$(cut -d' ' -f1 /proc/loadavg)
command=(python -m lottery_tf.main --flagfile=flags/lenet300_fashion_mnist_dst.flags --levels=3 --branch_levels=3
  --replicates=2 --iterations=5000 --gmp_begin_step=251 --gmp_end_step=2501 --gmp_frequency=250
  --output_dir="$out/runs")
"${command[@]}" > "$out/study.log"
python -m lottery_tf.report "$out/runs" --out="$out/report" --no_plots > /dev/null
{
  echo "# command: bash tools/benchmark_dst.sh"
  echo "# which runs: ${command[*]/$out/<tmp>}"
  echo "# machine: $(nproc) CPU cores ($(uname -m)), no GPU; $(date +%F); load average at the start $load"
  echo "# each training's wall seconds / steps, from its metrics.json (evaluation every 500 steps and the first"
  echo "# step's tracing included, as every method pays them); IMP = the main line at level 3"
  echo
  cat "$out/report/baselines_time_per_step.md"
} > results/dst/time_per_step.md
cat results/dst/time_per_step.md
