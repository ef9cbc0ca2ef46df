"""MaskedLayer, wrap_model / strip_masks, masks and densities."""

import os

import numpy as np
import pytest
from layer_testing import run_masked_layer_test

from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import (
    MaskedLayer,
    get_masks,
    get_prunable_weights,
    layer_densities,
    mask_names,
    masked_layers,
    overall_density,
    set_masks,
    strip_masks,
    wrap_model,
)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "inner, shape, trainable, masks",
    [
        (lambda: keras.layers.Dense(4), (3, 5), 2, 1),
        (lambda: keras.layers.Dense(4, use_bias=False), (3, 5), 1, 1),
        (lambda: keras.layers.Conv1D(4, 3), (2, 8, 3), 2, 1),
        (lambda: keras.layers.Conv2D(4, 3), (2, 6, 6, 3), 2, 1),
        (lambda: keras.layers.Conv3D(2, 2), (2, 4, 4, 4, 1), 2, 1),
        (lambda: keras.layers.DepthwiseConv2D(3), (2, 6, 6, 3), 2, 1),
        (lambda: keras.layers.SeparableConv2D(4, 3), (2, 6, 6, 3), 3, 2),
        (lambda: keras.layers.SeparableConv1D(4, 3), (2, 8, 3), 3, 2),
        (lambda: keras.layers.Conv2DTranspose(2, 3), (2, 4, 4, 3), 2, 1),
    ],
)
def test_masked_layer_contract(inner, shape, trainable, masks):
    data = RNG.normal(size=shape).astype("float32")
    run_masked_layer_test(inner(), data, trainable, masks)


def test_masked_embedding_keeps_zero_masking():
    data = np.array([[1, 2, 0], [3, 0, 0]], "int32")
    output, _ = run_masked_layer_test(keras.layers.Embedding(5, 4, mask_zero=True), data, 1, 1)
    layer = MaskedLayer(keras.layers.Embedding(5, 4, mask_zero=True))
    np.testing.assert_array_equal(np.asarray(layer.compute_mask(data)), data != 0)


def test_rejects_non_layers_and_unprunable_layers():
    with pytest.raises(ValueError, match="wraps a keras.layers.Layer; got str"):
        MaskedLayer("dense")
    with pytest.raises(ValueError, match="'bn' of type BatchNormalization has no prunable"):
        MaskedLayer(keras.layers.BatchNormalization(name="bn"))


def _functional_with_nested():
    inner = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, name="inner_fc"), keras.layers.BatchNormalization(name="inner_bn")],
        name="inner",
    )
    inputs = keras.Input((8,))
    x = keras.layers.Dense(6, activation="relu", name="fc1")(inputs)
    x = inner(x)
    outputs = keras.layers.Dense(3, name="out")(x)
    return keras.Model(inputs, outputs)


def test_wrap_model_wraps_nested_models_keeps_weights_and_function():
    model = _functional_with_nested()
    wrapped = wrap_model(model)
    # A nested model's layers are named through it (unique even if another nested model has an "inner_fc").
    assert mask_names(wrapped) == ["fc1/kernel", "inner/inner_fc/kernel", "out/kernel"]
    x = RNG.normal(size=(4, 8)).astype("float32")
    np.testing.assert_allclose(wrapped(x), model(x), rtol=1e-6)
    # Masks written before names were unique (<masked layer>/<attribute>) are still read.
    old = {"fc1/kernel": np.ones((8, 6)), "inner_fc/kernel": np.zeros((6, 5)), "out/kernel": np.ones((5, 3))}
    set_masks(wrapped, old)
    assert get_masks(wrapped)["inner/inner_fc/kernel"].sum() == 0
    # Biases and BatchNorm are never masked.
    assert all("bias" not in n and "bn" not in n for n in mask_names(wrapped))


def test_wrap_model_sequential_and_exclude():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")])
    assert mask_names(wrap_model(model, exclude=["b"])) == ["a/kernel"]
    with pytest.raises(ValueError, match=r"exclude names layers that are not in the model: \['nope'\]"):
        wrap_model(model, exclude=["nope"])


def test_an_unknown_exclude_lists_the_layers_with_weights_to_prune_not_every_layer():
    """A ResNet-50 listed 175 layers (ReLU, Add, padding): only the ones a user would exclude are named."""
    block = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, name="inner_fc"), keras.layers.ReLU()], name="blk"
    )
    tokens = keras.Input((3,), dtype="int32")
    x = keras.layers.Flatten()(keras.layers.Embedding(10, 2, name="emb")(tokens))
    x = keras.layers.ReLU(name="act")(keras.layers.BatchNormalization(name="bn")(x))
    model = keras.Model(tokens, keras.layers.Dense(2, name="head")(block(x)))
    with pytest.raises(ValueError) as raised:
        wrap_model(model, exclude=["bn2", "emb"])
    assert str(raised.value) == (
        "exclude names layers that are not in the model: ['bn2']; the layers with weights to prune are "
        "['blk/inner_fc', 'emb', 'head'] (as mask names spell them; a weight's name, e.g. blk/inner_fc/kernel, "
        "works too)."
    )
    with pytest.raises(ValueError, match="has no masks"):  # refused before a mask was attached
        mask_names(model)


def test_subclassed_models_are_masked_in_place_once_built():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    net = Net()
    with pytest.raises(ValueError, match="is not built, so its weights do not exist yet; call it on a batch"):
        wrap_model(net)
    net(np.zeros((1, 3), "float32"))
    assert wrap_model(net) is net
    assert mask_names(net) == ["dense/kernel"]  # the unnamed Dense, named as a fresh process names it
    assert get_masks(net)["dense/kernel"].shape == (3, 2)


def test_subclassed_model_built_from_masked_layers():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc1 = MaskedLayer(keras.layers.Dense(8, activation="relu", name="fc1"))
            self.bn = keras.layers.BatchNormalization()
            self.out = MaskedLayer(keras.layers.Dense(2, name="out"))

        def call(self, x, training=False):
            return self.out(self.bn(self.fc1(x), training=training))

    net = Net()
    x = RNG.normal(size=(16, 4)).astype("float32")
    net(x)
    assert [l.name for l in masked_layers(net)] == ["fc1", "out"]
    masks = get_masks(net)
    masks["fc1/kernel"][:, :4] = 0
    set_masks(net, masks)
    net.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    net.fit(x, np.ones((16, 2)), epochs=3, verbose=0)
    assert np.all(get_prunable_weights(net)["fc1/kernel"][:, :4] == 0.0)
    assert layer_densities(net)["fc1/kernel"] == 0.5


def test_set_masks_zeroes_weights_and_densities():
    model = wrap_model(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="a"), keras.layers.Dense(2, name="b")])
    )
    masks = get_masks(model)
    assert overall_density(model) == 1.0
    masks["a" + "/kernel"][0] = 0  # 5 of 20
    masks["b/kernel"][:] = 0  # 10 of 10
    set_masks(model, masks)
    assert layer_densities(model) == {"a/kernel": 0.75, "b/kernel": 0.0}
    assert overall_density(model) == pytest.approx(15 / 30)
    assert np.all(get_prunable_weights(model)["a/kernel"][0] == 0)
    with pytest.raises(ValueError, match="exactly the model's masked weights"):
        set_masks(model, {"a/kernel": masks["a/kernel"]})
    with pytest.raises(ValueError, match="has shape"):
        set_masks(model, {"a/kernel": np.ones((3, 3)), "b/kernel": masks["b/kernel"]})


def test_model_without_masked_layers_is_a_clear_error():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="has no masks; mask it with lottery_tf.wrap_model"):
        get_masks(model)


def test_saved_model_masked_in_place_is_the_plain_model_with_its_zeros(tmp_path):
    model = wrap_model(_functional_with_nested())
    masks = get_masks(model)
    for name in masks:
        masks[name].reshape(-1)[::3] = 0
    set_masks(model, masks)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no lottery_tf class in the file
    x = RNG.normal(size=(8, 8)).astype("float32")
    np.testing.assert_array_equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="has no masks"):
        get_masks(loaded)
    # Masks kept beside it (get_masks) put the ticket back: enforcement included.
    set_masks(wrap_model(loaded), masks)
    loaded.compile(optimizer="adam", loss="mse")
    loaded.fit(x, np.ones((8, 3)), epochs=2, verbose=0)
    weights = get_prunable_weights(loaded)
    for name, mask in masks.items():
        assert np.all(weights[name][mask == 0] == 0.0)


def test_save_load_of_masked_layers_keeps_masks_and_enforcement(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((8,)),
            MaskedLayer(keras.layers.Dense(6, name="fc1")),
            MaskedLayer(keras.layers.Dense(3, name="out")),
        ]
    )
    masks = get_masks(model)
    for name in masks:
        masks[name].reshape(-1)[::3] = 0
    set_masks(model, masks)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = RNG.normal(size=(8, 8)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    for name, mask in get_masks(loaded).items():
        np.testing.assert_array_equal(mask, masks[name])
    # The constraint is re-attached on load: training keeps zeros.
    loaded.compile(optimizer="adam", loss="mse")
    loaded.fit(x, np.ones((8, 3)), epochs=2, verbose=0)
    weights = get_prunable_weights(loaded)
    for name, mask in masks.items():
        assert np.all(weights[name][mask == 0] == 0.0)


def test_strip_masks_gives_plain_model_with_zeros():
    model = wrap_model(_functional_with_nested())
    masks = get_masks(model)
    masks["fc1/kernel"][:4] = 0
    set_masks(model, masks)
    plain = strip_masks(model)
    assert not any(isinstance(l, MaskedLayer) for l in plain._flatten_layers())
    x = RNG.normal(size=(4, 8)).astype("float32")
    np.testing.assert_allclose(plain(x), model(x), rtol=1e-6)
    kernel = plain.get_layer("fc1").kernel.numpy()
    assert np.all(kernel[:4] == 0.0) and np.all(kernel[4:] != 0.0)
