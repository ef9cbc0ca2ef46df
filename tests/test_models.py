"""Every registered model: parameter counts, and it builds, wraps, trains, keeps zeros."""

import numpy as np
import pytest

from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks, get_prunable_weights, mask_names, set_masks, wrap_model
from lottery_tf.engine.config import ModelConfig
from lottery_tf.engine.models import MODELS, build_model

CIFAR = (32, 32, 3)

# Totals from count_params() (BatchNorm moving statistics included). Papers: Conv-2 4.3M,
# Conv-4 2.4M, Conv-6 1.7M (stated in LTH Fig. 2; the architecture it describes has
# 2.26M), VGG-16 14.7M, VGG-19 20.0M, ResNet-20 0.27M, ResNet-50 25.6M, LeNet 266K.
PARAMETERS = [
    ("lenet_300_100", (28, 28, 1), 10, 266610),
    ("conv2", CIFAR, 10, 4301642),
    ("conv4", CIFAR, 10, 2425930),
    ("conv6", CIFAR, 10, 2262602),
    ("vgg11", CIFAR, 10, 9233866),  # convs 9,217,728 + BN 4*2,752 + FC 5,130
    ("vgg13", CIFAR, 10, 9418954),  # vgg11 + convs 3*3*(64*64 + 128*128) + BN 4*(64 + 128)
    ("vgg16", CIFAR, 10, 14732490),
    ("vgg19", CIFAR, 10, 20046026),
    ("resnet20", CIFAR, 10, 274042),
    ("cifar_resnet_56", CIFAR, 10, 860026),
    ("cifar_resnet_20_64", CIFAR, 10, 4334026),
    ("resnet50", (224, 224, 3), 1000, 25636712),
]


@pytest.mark.parametrize("name, shape, classes, count", PARAMETERS, ids=[p[0] for p in PARAMETERS])
def test_parameter_counts(name, shape, classes, count):
    assert build_model(ModelConfig(name=name), shape, classes).count_params() == count


# One model per builder trains (the plans of a builder share its code; test_parameter_counts pins each
# plan's layers): the MLP, the conv-net, the VGG, the CIFAR ResNet, a keras.applications model.
TRAINABLE = [
    ("lenet_300_100", (28, 28, 1), 8),
    ("conv2", CIFAR, 4),
    ("vgg11", CIFAR, 4),
    ("resnet20", CIFAR, 4),
    ("keras.applications.MobileNetV2", CIFAR, 4),
    # resnet50: built, wrapped (53 convolutions + the classifier masked, nothing else), trained one step with
    # pruned weights kept at zero by test_distribute.py::test_resnet50_one_step_under_mirrored_imagenet_shapes.
]


@pytest.mark.slow
@pytest.mark.parametrize("name, shape, batch", TRAINABLE, ids=[t[0] for t in TRAINABLE])
def test_builds_wraps_trains_and_keeps_zeros(name, shape, batch):
    keras.utils.set_random_seed(0)
    model = wrap_model(build_model(ModelConfig(name=name, initializer="he_normal"), shape, 10))
    names = mask_names(model)
    assert names and names[-1].endswith("/kernel")
    assert not any("bn" in n.split("/")[0] or "bias" in n for n in names)
    masks = get_masks(model)
    rng = np.random.default_rng(0)
    for n in masks:
        masks[n] = (rng.random(masks[n].shape) > 0.5).astype("float32")
    set_masks(model, masks)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = rng.normal(size=(batch,) + shape).astype("float32")
    y = rng.integers(0, 10, batch)
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    for n, weights in get_prunable_weights(model).items():
        assert np.all(weights[masks[n] == 0] == 0.0), n


def test_unknown_and_malformed_names_list_the_families():
    assert "cifar_resnet_44_32" in MODELS and "cifar_resnet_21" not in MODELS
    assert "keras.applications.EfficientNetB0" in MODELS and "keras.applications.nope" not in MODELS
    with pytest.raises(
        ValueError, match=r"unknown model 'cifar_resnet_21'; expected one of: .*cifar_resnet_<depth 6n\+2>"
    ):
        MODELS.get("cifar_resnet_21")


@pytest.mark.parametrize("name", ["resnet50", "keras.applications.MobileNetV2"])
def test_initializer_is_applied_to_keras_applications(name):
    """--initializer is part of the run's identity, so it must change the weights of these models too."""
    stds = {}
    for initializer in ("zeros", "he_normal"):
        keras.utils.set_random_seed(0)
        model = build_model(ModelConfig(name=name, initializer=initializer), (32, 32, 3), 10)
        kernels = [v.numpy() for v in model.weights if v.path.endswith("kernel")]
        stds[initializer] = kernels
    assert all(not np.any(k) for k in stds["zeros"])  # every kernel from the configured initializer
    first = stds["he_normal"][0]  # the stem convolution: He normal, std sqrt(2 / fan_in)
    fan_in = int(np.prod(first.shape[:-1]))
    assert np.std(first) == pytest.approx(np.sqrt(2 / fan_in), rel=0.15)
