"""Model registry: ``build_model(config, input_shape, num_classes)``."""

from lottery_tf.models.registry import MODELS, build_model
from lottery_tf.models import lenet as _lenet  # noqa: F401  (registers models)

__all__ = ["MODELS", "build_model"]
