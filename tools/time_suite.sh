#!/usr/bin/env bash
# Times the test suite as CI runs it, from a clean clone of a commit (default HEAD), for
# results/test_suite_time.txt:
#   bash tools/time_suite.sh [commit] > /tmp/suite_time.txt 2>&1
# Prints `pyloop` (the seconds a 20-million-step Python loop takes) before and after: this machine's speed
# drifts between sittings, and the loop says how fast it was while the suite ran. The clone's set-up points
# the editable install at the clone; run `bash tools/setup.sh` in your checkout afterwards.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
commit="${1:-HEAD}"
clone="$(mktemp -d /tmp/lottery_tf_suite.XXXXXX)"
trap 'rm -rf "$clone"' EXIT
git clone -q "$repo" "$clone"
cd "$clone"
git checkout -q "$(git -C "$repo" rev-parse "$commit")"
pyloop() {
  python3 -c "
import time
start, total = time.time(), 0
for i in range(20_000_000):
    total += i
print('pyloop', round(time.time() - start, 2))"
}
echo "commit $(git rev-parse --short HEAD), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs"
pyloop
time bash .ci/run
pyloop
