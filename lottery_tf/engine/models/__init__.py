"""Model registry: ``build_model(config, input_shape, num_classes)``."""

from lottery_tf.engine.models import conv as _conv  # noqa: F401  (registers models)
from lottery_tf.engine.models import lenet as _lenet  # noqa: F401
from lottery_tf.engine.models import resnet as _resnet  # noqa: F401
from lottery_tf.engine.models import vgg as _vgg  # noqa: F401
from lottery_tf.engine.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
