#!/usr/bin/env bash
# Sets up (tools/setup.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
python3 -m pytest -q -p no:cacheprovider tests "$@"
