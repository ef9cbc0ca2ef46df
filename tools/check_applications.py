"""Checks that every keras.applications model wraps with every kernel masked.

Usage: python tools/check_applications.py [--out=results/keras_applications_wrap.txt]

For each model: built with random weights at the smallest input size it
accepts (32, 75 or 96 px), wrapped with lottery_tf.wrap_model; the masked
entries must equal the entries of every kernel, depthwise and pointwise
kernel, and wrap_model must warn about none.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from lottery_tf.core.keras_compat import keras  # noqa: E402
from lottery_tf.core.masking import get_masks, wrap_model  # noqa: E402

KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel", "embeddings")


def applications() -> list[str]:
    return sorted(n for n in dir(keras.applications) if n[0].isupper() and callable(getattr(keras.applications, n)))


def check(name: str) -> str | None:
    """None if ``name`` wraps with every kernel masked, else what is wrong."""
    constructor = getattr(keras.applications, name)
    model = None
    for size in (32, 75, 96):
        try:
            model = constructor(weights=None, input_shape=(size, size, 3), classes=4)
            break
        except ValueError:
            continue
    if model is None:
        return f"{name}: could not be built at 32, 75 or 96 px"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            wrapped = wrap_model(model)
        dense = [str(w.message) for w in caught if "stay dense" in str(w.message)]
        kernels = sum(int(np.prod(v.shape)) for v in model.weights if v.path.rsplit("/", 1)[-1] in KERNELS)
        masked = sum(m.size for m in get_masks(wrapped).values())
        if dense or masked != kernels:
            return f"{name}: masked {masked} of {kernels} kernel entries {dense}"
        return None
    finally:
        keras.backend.clear_session()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    lines = [f"keras {keras.__version__}: every keras.applications model through lottery_tf.wrap_model", ""]
    failed = 0
    for name in applications():
        start = time.time()
        problem = check(name)
        failed += problem is not None
        lines.append(f"{name:24s} {'ok' if problem is None else 'FAIL ' + problem}  ({time.time() - start:.1f}s)")
        print(lines[-1], flush=True)
    lines += ["", f"{len(applications()) - failed} ok, {failed} failed"]
    print(lines[-1])
    if args.out:
        from lottery_tf.store import atomic

        atomic.write_text(args.out, "\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
