#!/usr/bin/env bash
# Installs everything lottery_tf needs on a fresh Debian machine with Python 3.10+:
# Debian's Fashion-MNIST IDX files (found automatically; no network at run time)
# and the Python package with its test extras (the tfmot extra, used in subprocesses only, and the hub, litert, docs and ray extras).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e ".[test,report,tfmot,hub,litert,docs,ray]"
