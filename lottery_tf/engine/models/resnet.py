"""ResNets: CIFAR ResNet-(6n+2) of any width (He et al. 2016), ResNet-50 for ImageNet,
and any ``keras.applications`` model by name.

CIFAR ResNets follow open_lth: a 3x3 stem, three stages of ``n`` basic blocks
with ``width``, ``2*width``, ``4*width`` filters (strides 1, 2, 2), 1x1
convolution + BatchNorm shortcuts where the shape changes, global average
pooling and one fully connected layer. ``resnet20`` is depth 20, width 16;
``cifar_resnet_<depth>`` and ``cifar_resnet_<depth>_<width>`` name the others.
"""

from __future__ import annotations

import re

from lottery_tf.engine.config import ModelConfig
from lottery_tf.engine.models.registry import MODELS


def cifar_resnet(config: ModelConfig, input_shape, num_classes, depth: int, width: int, name: str):
    from lottery_tf.core.keras_compat import keras

    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...); got {depth}")
    blocks = (depth - 2) // 6
    init = config.initializer

    def conv(x, filters, kernel, stride, label):
        x = keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer=init,
            name=f"{label}_conv",
        )(x)
        return keras.layers.BatchNormalization(name=f"{label}_bn")(x)

    inputs = keras.Input(input_shape)
    x = keras.layers.ReLU()(conv(inputs, width, 3, 1, "stem"))
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            label = f"stage{stage + 1}_block{block + 1}"
            y = keras.layers.ReLU()(conv(x, filters, 3, stride, f"{label}_a"))
            y = conv(y, filters, 3, 1, f"{label}_b")
            shortcut = x if stride == 1 and x.shape[-1] == filters else conv(x, filters, 1, stride, f"{label}_shortcut")
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=init, name="output")(x)
    return keras.Model(inputs, outputs, name=name)


@MODELS.register("resnet20")
def resnet20(config: ModelConfig, input_shape, num_classes):
    """ResNet-20 for CIFAR-10 (width 16)."""
    return cifar_resnet(config, input_shape, num_classes, 20, 16, "resnet20")


@MODELS.register_prefix("cifar_resnet_", "cifar_resnet_<depth 6n+2>[_<width>]")
def _cifar_resnet_family(suffix: str):
    match = re.fullmatch(r"(\d+)(?:_(\d+))?", suffix)
    if not match or (int(match.group(1)) - 2) % 6 or int(match.group(1)) < 8:
        return None
    depth, width = int(match.group(1)), int(match.group(2) or 16)

    def build(config, input_shape, num_classes):
        return cifar_resnet(config, input_shape, num_classes, depth, width, f"cifar_resnet_{suffix}")

    return build


@MODELS.register("resnet50")
def resnet50(config: ModelConfig, input_shape, num_classes):
    """ResNet-50 (keras.applications, random initialization, logits output)."""
    return _application("ResNet50", config, input_shape, num_classes)


_INITIALIZER_KEYS = ("kernel_initializer", "depthwise_initializer", "pointwise_initializer", "embeddings_initializer")


def _application(class_name, config, input_shape, num_classes):
    """A ``keras.applications`` model with ``config.initializer`` on every prunable weight.

    The applications fix their own initializers, so the model is rebuilt
    (``clone_model``) with the configured initializer in every layer that has
    a kernel, depthwise, pointwise or embeddings initializer.
    """
    from lottery_tf.core.keras_compat import keras

    constructor = getattr(keras.applications, class_name)
    # classifier_activation=None: the experiment's loss expects logits.
    model = constructor(weights=None, input_shape=tuple(input_shape), classes=num_classes, classifier_activation=None)

    def with_initializer(layer):
        layer_config = layer.get_config()
        for key in _INITIALIZER_KEYS:
            if key in layer_config:
                layer_config[key] = config.initializer
        return layer.__class__.from_config(layer_config)

    return keras.models.clone_model(model, clone_function=with_initializer)


@MODELS.register_prefix("keras.applications.", "keras.applications.<Name> (e.g. keras.applications.MobileNetV2)")
def _keras_application(class_name: str):
    from lottery_tf.core.keras_compat import keras

    if not class_name or not hasattr(keras.applications, class_name) or not class_name[0].isupper():
        return None

    def build(config, input_shape, num_classes):
        return _application(class_name, config, input_shape, num_classes)

    return build
