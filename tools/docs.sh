#!/usr/bin/env bash
# The documentation site (mkdocs.yml, docs/): `bash tools/docs.sh` serves it on http://127.0.0.1:8000 and
# rebuilds on every edit; `bash tools/docs.sh build` writes it to site/ (strict: a broken link or a missing
# API reference fails). The docs extra (tools/setup.sh installs it) provides mkdocs.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_MKDOCS_2_WARNING=1 TF_CPP_MIN_LOG_LEVEL=3
case "${1:-serve}" in
  serve) exec python3 -m mkdocs serve -a 127.0.0.1:8000 ;;
  build) exec python3 -m mkdocs build --strict -d site ;;
  *) echo "usage: bash tools/docs.sh [serve|build]" >&2; exit 2 ;;
esac
