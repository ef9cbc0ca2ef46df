"""The one place lottery_tf imports Keras.

Every other module takes Keras from here, so the supported version is checked
once and a legacy Keras 2 (``tf_keras``) environment fails with a clear message
instead of obscure errors later.
"""

import contextlib
import os
import sys

if os.environ.get("TF_USE_LEGACY_KERAS", "0").lower() in ("1", "true"):
    raise ImportError(
        "lottery_tf needs Keras 3, but TF_USE_LEGACY_KERAS is set, which makes tf.keras the legacy Keras 2; unset it."
    )


@contextlib.contextmanager
def quiet_native_output():
    """Sends file descriptor 2 to /dev/null inside the block (C++ start-up lines;
    Python exceptions are raised after it is restored, so they still show)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if "tensorflow" not in sys.modules:
    # TensorFlow's native start-up lines (oneDNN and CUDA notices, cuInit on a machine
    # without a GPU) are not the user's concern. TF 2.21 prints the import-time ones
    # whatever TF_CPP_MIN_LOG_LEVEL says; TF_CPP_MIN_LOG_LEVEL=0 shows them all.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0":
        with quiet_native_output():
            import tensorflow  # noqa: F401

import keras  # noqa: E402

if int(keras.__version__.split(".")[0]) < 3:
    raise ImportError(f"lottery_tf needs Keras 3; found keras {keras.__version__}.")

BACKENDS = ("tensorflow", "jax")  # the Keras backends lottery_tf's library is tested on
BACKEND = keras.backend.backend()

if BACKEND == "torch":
    raise ImportError(
        "lottery_tf's Keras library is tested on the TensorFlow and JAX backends, not on PyTorch (no CPU build of "
        "torch is reachable where it is tested); set KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax."
    )
if BACKEND not in BACKENDS:
    raise ImportError(
        f"lottery_tf runs on the TensorFlow or JAX backend of Keras 3; KERAS_BACKEND is {BACKEND!r}. "
        "Set KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax."
    )

from keras.src.models.functional import Functional  # noqa: E402  (no public alias)

ops = keras.ops

__all__ = ["BACKEND", "BACKENDS", "Functional", "keras", "ops", "quiet_native_output"]
