#!/usr/bin/env bash
# Sets up (tools/setup.sh), then checks everything CI checks: ruff (lint and format, ruff.toml) and the
# whole pytest suite, which builds the documentation site strictly and runs every code block in it
# (tests/test_docs.py).
#   bash tools/test.sh           everything (what .ci/run calls)
#   bash tools/test.sh --quick   the edit-test loop: ruff and the tests not marked slow (no site build)
# Other arguments go to pytest (bash tools/test.sh --quick tests/test_pruning.py).
# LOTTERY_TF_TEST_WORKERS=2 runs the test files in 2 pytest-xdist processes (29.5 -> 16.7 min on 2 cores,
# results/test_suite_time.txt); CI runs them in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi
bash tools/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2 NO_MKDOCS_2_WARNING=1
parallel=()
if [ -n "${LOTTERY_TF_TEST_WORKERS:-}" ]; then parallel=(-n "$LOTTERY_TF_TEST_WORKERS" --dist loadfile); fi
python3 -m ruff check .
python3 -m ruff format --check .
if [ "$quick" = 1 ]; then
  exec python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" -m "not slow" "${@:-tests}"
fi
exec python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" --durations=25 "${@:-tests}"
