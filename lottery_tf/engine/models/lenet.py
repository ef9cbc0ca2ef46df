"""LeNet-300-100 (LeCun et al. 1998), the LTH paper's fully connected network."""

from __future__ import annotations

from lottery_tf.engine.config import ModelConfig
from lottery_tf.engine.models.registry import MODELS


def _mlp(config: ModelConfig, input_shape, num_classes, hidden, name):
    # Imported here so that the registry (used to validate flags) needs no TensorFlow.
    from lottery_tf.core.keras_compat import keras

    layers = [keras.Input(input_shape), keras.layers.Flatten(name="flatten")]
    for i, units in enumerate(hidden, start=1):
        layers.append(
            keras.layers.Dense(units, activation="relu", kernel_initializer=config.initializer, name=f"fc{i}")
        )
    layers.append(keras.layers.Dense(num_classes, kernel_initializer=config.initializer, name="output"))
    return keras.Sequential(layers, name=name)


@MODELS.register("lenet_300_100")
def lenet_300_100(config: ModelConfig, input_shape, num_classes):
    """784-300-100-10 with ReLU; 266,610 parameters on MNIST."""
    return _mlp(config, input_shape, num_classes, (300, 100), "lenet_300_100")
