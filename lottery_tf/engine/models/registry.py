"""The model registry. Builders return plain (unmasked) Keras 3 models."""

from __future__ import annotations

from lottery_tf.engine.config import ModelConfig
from lottery_tf.engine.registry import Registry

MODELS = Registry("model")


def build_model(config: ModelConfig, input_shape: tuple, num_classes: int):
    """Builds the registered model ``config.name`` (outputs are logits).

    Raises:
        ValueError: Unknown name (lists the valid names).
    """
    return MODELS.get(config.name)(config, input_shape, num_classes)


def register_plans(plans: dict, builder, describe: str) -> None:
    """Registers ``builder(config, input_shape, num_classes, plan, name)`` once per plan."""
    for name, plan in plans.items():

        def build(config: ModelConfig, input_shape, num_classes, plan=plan, name=name):
            return builder(config, input_shape, num_classes, plan, name)

        build.__doc__ = f"{name}: {describe} {plan}."
        MODELS.register(name)(build)
