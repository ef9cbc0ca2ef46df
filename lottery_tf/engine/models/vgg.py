"""VGG-11/13/16/19 for CIFAR-10, as in open_lth and the LMC paper.

3x3 convolutions with BatchNorm and ReLU, max pooling between stages, then
global average pooling and one fully connected output layer (no hidden FC
layers: the CIFAR variant).
"""

from __future__ import annotations

from lottery_tf.engine.config import ModelConfig
from lottery_tf.engine.models.registry import register_plans

PLANS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}


def vgg(config: ModelConfig, input_shape, num_classes, plan, name):
    from lottery_tf.core.keras_compat import keras

    inputs = keras.Input(input_shape)
    x, conv = inputs, 0
    for item in plan:
        if item == "M":
            x = keras.layers.MaxPooling2D(2)(x)
            continue
        conv += 1
        x = keras.layers.Conv2D(
            item, 3, padding="same", use_bias=False, kernel_initializer=config.initializer, name=f"conv{conv}"
        )(x)
        x = keras.layers.BatchNormalization(name=f"bn{conv}")(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=config.initializer, name="output")(x)
    return keras.Model(inputs, outputs, name=name)


register_plans(PLANS, vgg, "CIFAR VGG with plan")
