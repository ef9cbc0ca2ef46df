"""Conv-2, Conv-4, Conv-6: the LTH paper's CIFAR-10 networks (VGG-like, no BatchNorm).

Frankle & Carbin (2019), Figure 2: 3x3 convolutions (ReLU, 'same' padding) in
pairs, each pair followed by 2x2 max pooling, then fully connected 256, 256 and
the output layer.
"""

from __future__ import annotations

from lottery_tf.engine.config import ModelConfig
from lottery_tf.engine.models.registry import register_plans

PLANS = {"conv2": (64,), "conv4": (64, 128), "conv6": (64, 128, 256)}


def conv_net(config: ModelConfig, input_shape, num_classes, pairs, name):
    # Imported here so that the registry (used to validate flags) needs no TensorFlow.
    from lottery_tf.core.keras_compat import keras

    init = config.initializer
    layers = [keras.Input(input_shape)]
    for stage, filters in enumerate(pairs, start=1):
        for i in (1, 2):
            layers.append(
                keras.layers.Conv2D(
                    filters, 3, padding="same", activation="relu", kernel_initializer=init, name=f"conv{stage}_{i}"
                )
            )
        layers.append(keras.layers.MaxPooling2D(2, name=f"pool{stage}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    for i in (1, 2):
        layers.append(keras.layers.Dense(256, activation="relu", kernel_initializer=init, name=f"fc{i}"))
    layers.append(keras.layers.Dense(num_classes, kernel_initializer=init, name="output"))
    return keras.Sequential(layers, name=name)


register_plans(PLANS, conv_net, "conv pairs of")
