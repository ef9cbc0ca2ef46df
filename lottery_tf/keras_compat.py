"""The one place lottery_tf imports Keras.

Every other module takes Keras from here, so the supported version is checked
once and a legacy Keras 2 (``tf_keras``) environment fails with a clear message
instead of obscure errors later.
"""

import os

if os.environ.get("TF_USE_LEGACY_KERAS", "0").lower() in ("1", "true"):
    raise ImportError(
        "lottery_tf needs Keras 3, but TF_USE_LEGACY_KERAS is set, which makes "
        "tf.keras the legacy Keras 2; unset it."
    )

import keras  # noqa: E402

if int(keras.__version__.split(".")[0]) < 3:
    raise ImportError(f"lottery_tf needs Keras 3; found keras {keras.__version__}.")

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "lottery_tf runs on the TensorFlow backend of Keras 3; "
        f"KERAS_BACKEND is {keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow."
    )

from keras.src.models.functional import Functional  # noqa: E402  (no public alias)

ops = keras.ops

__all__ = ["Functional", "keras", "ops"]
