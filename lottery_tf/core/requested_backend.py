"""Which Keras backend a process will load, read without importing Keras.

:mod:`lottery_tf.core.keras_compat` refuses PyTorch with it before Keras imports torch, and the commands
refuse a backend other than TensorFlow with it before they import TensorFlow.
"""

import json
import os
import sys


def requested_backend() -> str:
    """The backend Keras loads (or has loaded): KERAS_BACKEND, else keras.json's, else TensorFlow (Keras's order).

    Returns:
        The backend's name in lower case (``tensorflow``, ``jax``, ``torch``, ...).
    """
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):  # imported: the one it chose
        return keras.backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"].strip().lower()
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as file:
            return str(json.load(file).get("backend", "tensorflow")).lower()
    except (OSError, ValueError, AttributeError):
        return "tensorflow"
