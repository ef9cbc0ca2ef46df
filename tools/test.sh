#!/usr/bin/env bash
# Sets up (tools/setup.sh), then checks everything CI checks: ruff (lint and format, ruff.toml), the
# whole pytest suite, which builds the documentation site strictly and runs every code block in it
# (tests/test_docs.py), and the Keras library's tests a second time on Keras's JAX backend.
#   bash tools/test.sh           everything (what .ci/run calls)
#   bash tools/test.sh --quick   the edit-test loop: ruff and the tests not marked slow (no site build)
# Other arguments go to pytest (bash tools/test.sh --quick tests/test_pruning.py).
# The test files run in LOTTERY_TF_TEST_WORKERS pytest-xdist processes (default 3 on the project's 2-core
# machines: a worker waits on its CLI subprocesses much of the time; 1 runs them in this process), each file
# whole in one of them (--dist loadfile: a file's shared runs are made once). The tests' Python subprocesses
# are forked from a process that has imported lottery_tf (tests/launcher.py), and XLA's compilations are
# cached for the run (tests/conftest.py). Measured times: results/test_suite_time.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi
bash tools/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2 NO_MKDOCS_2_WARNING=1
workers=${LOTTERY_TF_TEST_WORKERS:-3}
parallel=()
if [ "$workers" != 1 ]; then parallel=(-n "$workers" --dist loadfile); fi
# The Keras library's tests again on Keras's JAX backend (a second pytest process: the backend is chosen once
# per process), with tests/test_jax_backend.py, which the TensorFlow pass leaves out. Only for the whole suite.
jax_tests=(tests/test_keras_compat.py tests/test_masking.py tests/test_callbacks.py tests/test_gradual.py
  tests/test_optimizer_rewind.py tests/test_custom_loops.py tests/test_sparse_training.py tests/test_jax_backend.py)
python3 -m ruff check .
python3 -m ruff format --check .
selection=(--durations=25)
if [ "$quick" = 1 ]; then selection=(-m "not slow"); fi
status=0
python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" "${selection[@]}" "${@:-tests}" || status=$?
if [ $# = 0 ]; then
  echo "-- the Keras library on the JAX backend (KERAS_BACKEND=jax)"
  KERAS_BACKEND=jax python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" "${selection[@]}" "${jax_tests[@]}" \
    || status=$?
fi
exit "$status"
