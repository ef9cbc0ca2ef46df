#!/usr/bin/env bash
# Installs everything lottery_tf needs on a fresh Debian machine with Python 3.10+:
# Debian's Fashion-MNIST IDX files (found automatically; no network at run time)
# and the Python package with its test extras (the tfmot extra, used in subprocesses only, and the hub, litert, docs, ray and jax extras).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
extras="test,report,tfmot,hub,litert,docs,ray,jax"
# Every requirement of setup.py (and of these extras) already installed at a version it accepts, and pip
# check happy with what is installed: only this checkout is (re)installed, in seconds, instead of the
# ~80 s pip spends resolving everything against the package indexes again. Anything missing: the full install.
requirements_met() {
  python3 - "$extras" <<'PY'
import ast, sys
from importlib import metadata
from pip._vendor.packaging.requirements import Requirement

calls = [n for n in ast.walk(ast.parse(open("setup.py").read())) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
arguments = {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords if k.arg in ("install_requires", "extras_require")}
wanted = arguments["install_requires"] + [r for e in sys.argv[1].split(",") for r in arguments["extras_require"][e]]
for text in wanted:
    requirement = Requirement(text)
    if metadata.version(requirement.name) not in requirement.specifier:  # raises if it is not installed
        sys.exit(f"{requirement.name} {metadata.version(requirement.name)} does not satisfy {text}")
PY
}
if requirements_met >/dev/null 2>&1 && python3 -m pip check >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check -e ".[$extras]"
else
  python3 -m pip install -q --disable-pip-version-check -e ".[$extras]"
fi
