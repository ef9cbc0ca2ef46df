"""wrap_model / PruneRewindCallback on users' own models: graphs with keras.ops,
composite layers (attention, RNNs), every keras.applications model, saved tickets."""

import os
import sys
import warnings

import launcher
import numpy as np
import pytest
from conftest import REPO

from lottery_tf.core.callbacks import PruneRewindCallback
from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import (
    MaskedLayer,
    get_masks,
    get_prunable_weights,
    mask_names,
    overall_density,
    set_masks,
    strip_masks,
    wrap_model,
)
from lottery_tf.core.pruning import PruningSpec

RNG = np.random.default_rng(5)


def test_functional_graph_with_operators_and_ops_wraps_and_strips():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="d")(inputs) + inputs
    outputs = keras.layers.Dense(2, name="out")(keras.ops.relu(hidden) * 2.0)
    model = keras.Model(inputs, outputs)
    data = RNG.normal(size=(3, 4)).astype("float32")
    wrapped = wrap_model(model)
    assert mask_names(wrapped) == ["d/kernel", "out/kernel"]
    np.testing.assert_allclose(wrapped(data), model(data), rtol=1e-6)
    np.testing.assert_allclose(strip_masks(wrapped)(data), model(data), rtol=1e-6)


def _sequence_model():
    inputs = keras.Input((5, 8))
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    x = keras.layers.LSTM(6, return_sequences=True, name="lstm")(x)
    x = keras.layers.Bidirectional(keras.layers.GRU(3, return_sequences=True), name="bi")(x)
    x = keras.layers.TimeDistributed(keras.layers.Dense(3, name="d"), name="td")(x)
    x = keras.layers.SimpleRNN(2, name="rnn")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def test_composite_layers_have_every_kernel_masked():
    model = _sequence_model()
    wrapped = wrap_model(model)
    assert mask_names(wrapped) == [
        "mha/query/kernel",
        "mha/key/kernel",
        "mha/value/kernel",
        "mha/attention_output/kernel",
        "lstm/lstm_cell/kernel",
        "lstm/lstm_cell/recurrent_kernel",
        "bi/forward_gru/gru_cell/kernel",
        "bi/forward_gru/gru_cell/recurrent_kernel",
        "bi/backward_gru/gru_cell/kernel",
        "bi/backward_gru/gru_cell/recurrent_kernel",
        "td/d/kernel",
        "rnn/simple_rnn_cell/kernel",
        "rnn/simple_rnn_cell/recurrent_kernel",
        "out/kernel",
    ]
    # Densities count every weight a user would call prunable.
    kernels = sum(int(np.prod(v.shape)) for v in model.weights if v.path.endswith("kernel"))
    assert sum(m.size for m in get_masks(wrapped).values()) == kernels
    data = RNG.normal(size=(4, 5, 8)).astype("float32")
    np.testing.assert_allclose(wrapped(data), model(data), rtol=1e-5, atol=1e-6)


def test_composite_layers_prune_and_keep_zeros_through_training():
    wrapped = wrap_model(_sequence_model())
    wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    x = RNG.normal(size=(16, 5, 8)).astype("float32")
    y = RNG.normal(size=(16, 3)).astype("float32")
    imp = PruneRewindCallback(PruningSpec("global", 0.5))
    wrapped.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[imp])
    assert overall_density(wrapped) == 1.0  # fit returns the trained level 0
    wrapped.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[imp])  # prunes, rewinds, trains level 1
    assert overall_density(wrapped) == pytest.approx(0.5, abs=0.001)
    masks = get_masks(wrapped)
    for name, weight in get_prunable_weights(wrapped).items():
        assert np.all(weight[masks[name] == 0] == 0.0), name
        assert np.any(weight[masks[name] == 1] != 0.0), name
    assert masks["mha/query/kernel"].mean() < 1 and masks["lstm/lstm_cell/recurrent_kernel"].mean() < 1


def test_a_custom_layers_own_matrices_are_masked_and_can_be_excluded_by_weight_name():
    class Custom(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 2), name="kernel")
            self.w = self.add_weight(shape=(2, 2), name="w")
            self.scale = self.add_weight(shape=(2,), name="scale")  # a vector: never pruned

        def call(self, x):
            return (x @ self.kernel) @ self.w * self.scale

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Custom(name="custom")(keras.layers.Dense(3, name="d")(inputs)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mask_names(wrap_model(model)) == ["d/kernel", "custom/kernel", "custom/w"]
    inputs = keras.Input((3,))
    model = keras.Model(inputs, Custom(name="custom")(keras.layers.Dense(3, name="d")(inputs)))
    assert mask_names(wrap_model(model, exclude=["custom/w"])) == ["d/kernel", "custom/kernel"]


# One model of every keras.applications family (the families share their layer types);
# tools/check_applications.py checks every model and its output is committed in results/.
FAMILIES = [
    "ConvNeXtTiny",
    "DenseNet121",
    "EfficientNetB0",
    "EfficientNetV2B0",
    "InceptionV3",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Small",
    "NASNetMobile",
    "ResNet50",
    "ResNet50V2",
    "VGG16",
    "Xception",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_keras_application_families_wrap_with_every_kernel_masked(name):
    from tools.check_applications import check

    problem = check(name)
    assert problem is None, problem


@pytest.mark.slow
def test_saved_ticket_loads_after_plain_import(tmp_path):
    model = wrap_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")]))
    masks = {"fc/kernel": np.tile([1.0, 0.0, 1.0], (4, 1)).astype("float32")}
    set_masks(model, masks)
    path = str(tmp_path / "ticket.keras")
    model.save(path)
    import zipfile

    with zipfile.ZipFile(path) as archive:  # the file is the user's own model: no lottery_tf class in it
        assert "lottery_tf" not in archive.read("config.json").decode()
    code = (  # its pruned weights are exact zeros
        "import numpy as np, keras; "
        f"m = keras.models.load_model({path!r}); "
        "print(type(m.layers[0]).__name__, int(np.count_nonzero(m.layers[0].kernel.numpy())))"
    )
    out = launcher.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == ["Dense", "8"]


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.fc = MaskedLayer(keras.layers.Dense(3, name="fc"))

    def call(self, x):
        return self.fc(x)


def test_unbuilt_subclassed_model_fails_before_any_step_and_can_retry():
    model = SubclassedNet()
    model.compile(optimizer="sgd", loss="mse")
    x, y = RNG.normal(size=(8, 4)).astype("float32"), RNG.normal(size=(8, 3)).astype("float32")
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.5))
    with pytest.raises(ValueError, match="is not built.*call it on a batch"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[imp])
    assert int(model.optimizer.iterations.numpy()) == 0  # no step was taken
    model(x[:1])
    before = model.fc.layer.kernel.numpy().copy()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[imp])  # the same callback works once the model is built
    imp.prune_and_rewind()
    assert imp.level == 1
    np.testing.assert_array_equal(model.fc.layer.kernel.numpy(), before * get_masks(model)["fc/kernel"])


def _mlp():
    model = wrap_model(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="fc"), keras.layers.Dense(3, name="out")])
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_layer_names_are_checked_at_the_start_and_resolved():
    x, y = RNG.normal(size=(8, 4)).astype("float32"), RNG.normal(size=(8, 3)).astype("float32")
    model = _mlp()
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.2, layer_fractions={"fc": 0.5}), output_layer="out")
    model.fit(x, y, epochs=1, verbose=0, callbacks=[imp])
    imp.prune_and_rewind()
    assert get_masks(model)["fc/kernel"].mean() == 0.5  # "fc" meant fc/kernel
    for spec, output, message in [
        (
            PruningSpec(layer_fractions={"fcx": 0.5}),
            None,
            r"layer_fractions: 'fcx' matches no masked weight; the model has fc/kernel, out/kernel",
        ),
        (PruningSpec(), "nope", r"output_layer: 'nope' matches no masked weight"),
    ]:
        model = _mlp()
        with pytest.raises(ValueError, match=message):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[PruneRewindCallback(spec, output_layer=output)])
        assert int(model.optimizer.iterations.numpy()) == 0


def test_model_with_nothing_to_mask_fails_at_the_start():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="has no masks"):
        model.fit(np.ones((4, 4)), np.ones((4, 3)), epochs=1, verbose=0, callbacks=[PruneRewindCallback()])
    assert int(model.optimizer.iterations.numpy()) == 0


def test_failed_pruning_leaves_the_model_unchanged():
    x, y = RNG.normal(size=(8, 4)).astype("float32"), RNG.normal(size=(8, 3)).astype("float32")
    model = _mlp()
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.5), levels=None)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[imp])
    masks, weights = get_masks(model), get_prunable_weights(model)
    imp.agree_on_masks = lambda new: (_ for _ in ()).throw(RuntimeError("worker lost"))
    with pytest.raises(RuntimeError, match="worker lost"):
        imp.prune_and_rewind()
    imp.agree_on_masks = None
    bad = dict(imp.rewind_point)
    bad.pop(next(iter(bad)))
    imp.rewind_point = bad
    with pytest.raises(ValueError, match="does not match the model"):
        imp.prune_and_rewind()
    for name in masks:
        np.testing.assert_array_equal(get_masks(model)[name], masks[name])
        np.testing.assert_array_equal(get_prunable_weights(model)[name], weights[name])


# -- repeated inner names: masks named by the weights' unique paths ------------------------------------


def _block(name):
    inputs = keras.Input((6,))
    return keras.Model(inputs, keras.layers.Dense(6, activation="relu", name="fc")(inputs), name=name)


def _nested_copies():
    inputs = keras.Input((6,))
    x = _block("block_b")(_block("block_a")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


class ResidualBlock(keras.layers.Layer):
    """A user's own block: Dense and Conv1D sub-layers with the same names in every copy."""

    def __init__(self, units=6, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.fc = keras.layers.Dense(units, name="fc")
        self.conv = keras.layers.Conv1D(units, 1, name="conv")

    def build(self, input_shape):
        self.fc.build(input_shape)
        self.conv.build((*input_shape[:-1], self.units))

    def call(self, x):
        return x + self.conv(keras.ops.relu(self.fc(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


keras.saving.register_keras_serializable(package="lottery_tf_tests")(ResidualBlock)


def _residual_model():
    inputs = keras.Input((4, 6))
    x = ResidualBlock(name="res_b")(ResidualBlock(name="res_a")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.Flatten()(x)))


def _two_levels(model, x, y):
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.5))
    for _ in range(3):  # levels 0, 1 and 2: the third fit trains the 25% ticket
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[imp])
    masks, weights = get_masks(model), get_prunable_weights(model)
    for name in masks:
        assert masks[name].mean() == pytest.approx(0.25, abs=0.05), name
        assert np.all(weights[name][masks[name] == 0] == 0.0), name
    return imp


def test_two_nested_copies_of_one_block_are_masked_by_unique_path():
    model = _nested_copies()
    wrapped = wrap_model(model)
    assert mask_names(wrapped) == ["block_a/fc/kernel", "block_b/fc/kernel", "out/kernel"]
    x, y = RNG.normal(size=(8, 6)).astype("float32"), RNG.normal(size=(8, 3)).astype("float32")
    np.testing.assert_allclose(wrapped(x), model(x), rtol=1e-6)
    imp = _two_levels(wrapped, x, y)
    assert overall_density(wrapped) == pytest.approx(0.25, abs=0.02)
    assert {"block_a/fc/kernel", "block_b/fc/kernel", "block_a/fc/bias"} <= set(imp.rewind_point)


def test_a_users_residual_block_is_masked_inside_and_round_trips(tmp_path):
    model = _residual_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays dense: no warning
        wrapped = wrap_model(model)
    assert mask_names(wrapped) == [
        "res_a/fc/kernel",
        "res_a/conv/kernel",
        "res_b/fc/kernel",
        "res_b/conv/kernel",
        "out/kernel",
    ]
    assert wrapped is model and type(wrapped.get_layer("res_a")) is ResidualBlock  # masked in place
    x, y = RNG.normal(size=(8, 4, 6)).astype("float32"), RNG.normal(size=(8, 3)).astype("float32")
    np.testing.assert_allclose(wrapped(x), model(x), rtol=1e-5, atol=1e-6)
    _two_levels(wrapped, x, y)
    # A block's own sub-layer left out by its unique path; the other copy is still masked.
    partly = wrap_model(_residual_model(), exclude=["res_b/conv"])
    assert mask_names(partly) == ["res_a/fc/kernel", "res_a/conv/kernel", "res_b/fc/kernel", "out/kernel"]
    path = str(tmp_path / "res.keras")
    wrapped.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(wrapped(x)))
    code = (  # loads as the user's own model; wrapping it again finds the same names and its zeros
        "import numpy as np, keras, lottery_tf, sys; sys.path.insert(0, 'tests'); import test_user_models; "
        f"m = keras.models.load_model({path!r}); "
        f"np.testing.assert_allclose(m(np.load({str(tmp_path / 'x.npy')!r})), np.load({str(tmp_path / 'y.npy')!r}), rtol=1e-6); "
        "w = lottery_tf.get_prunable_weights(lottery_tf.wrap_model(m)); "
        "print(','.join(w), round(sum(np.count_nonzero(v) for v in w.values()) / sum(v.size for v in w.values()), 3))"
    )
    out = launcher.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == [",".join(mask_names(wrapped)), str(round(overall_density(wrapped), 3))]


class Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc = MaskedLayer(keras.layers.Dense(5, name="fc"))

    def call(self, x):
        return keras.ops.relu(self.fc(x))


class ReusingNet(keras.Model):
    """A subclassed model reusing one block class: both blocks hold a layer named "fc"."""

    def __init__(self):
        super().__init__()
        self.first = Block(name="first")
        self.second = Block(name="second")
        self.out = MaskedLayer(ResidualBlock(units=5, name="tail"))  # a whole block wrapped at once

    def call(self, x):
        return self.out(self.second(self.first(x)))


def test_subclassed_model_reusing_a_block_class():
    model = ReusingNet()
    x, y = RNG.normal(size=(8, 4, 5)).astype("float32"), RNG.normal(size=(8, 4, 5)).astype("float32")
    model(x[:1])
    assert mask_names(model) == ["first/fc/kernel", "second/fc/kernel", "tail/fc/kernel", "tail/conv/kernel"]
    _two_levels(model, x, y)


def test_files_written_before_names_were_unique_are_read(tmp_path):
    """Masks keyed <masked layer>/<attribute> and states keyed by Keras variable paths (runs made before)."""
    from lottery_tf.core import rewind

    wrapped = wrap_model(_nested_copies())
    # Old mask names used the masked layer's own name; for a model that could be pruned then, they were unique.
    flat = wrap_model(
        keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(3, name="fc1"), keras.layers.Dense(2, name="out")], name="lenet"
        )
    )
    old_masks = {"fc1/kernel": np.tile([1.0, 0.0, 1.0], (4, 1)), "out/kernel": np.ones((3, 2))}
    set_masks(flat, old_masks)
    assert get_masks(flat)["fc1/kernel"].sum() == 8
    state = rewind.capture(flat)
    # The Keras paths of the wrapper that earlier versions put around each layer (literal, as their files hold them).
    old_paths = {"fc1/kernel": "lenet/fc1/fc1/kernel", "fc1/bias": "lenet/fc1/fc1/bias"}
    old_paths.update({"out/kernel": "lenet/out/out/kernel", "out/bias": "lenet/out/out/bias"})
    by_keras_path = {old_paths[name]: value for name, value in state.items()}
    flat.layers[0].kernel.assign(np.ones((4, 3)))
    rewind.restore(flat, by_keras_path)
    np.testing.assert_array_equal(rewind.capture(flat)["fc1/kernel"], state["fc1/kernel"])
    # With repeated Keras paths there is no old file to read: the old code refused such models.
    with pytest.raises(ValueError, match="Rewind point does not match the model"):
        rewind.restore(wrapped, {"fc/kernel": np.zeros((6, 6))})
