"""The model registry. Builders return plain (unmasked) Keras 3 models."""

from __future__ import annotations

from lottery_tf.config import ModelConfig
from lottery_tf.registry import Registry

MODELS = Registry("model")


def build_model(config: ModelConfig, input_shape: tuple, num_classes: int):
    """Builds the registered model ``config.name`` (outputs are logits).

    Raises:
        ValueError: Unknown name (lists the valid names).
    """
    return MODELS.get(config.name)(config, input_shape, num_classes)
