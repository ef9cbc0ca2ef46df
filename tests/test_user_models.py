"""wrap_model / PruneRewindCallback on users' own models: graphs with keras.ops,
composite layers (attention, RNNs), every keras.applications model, saved tickets."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import REPO
from lottery_tf.callbacks import PruneRewindCallback
from lottery_tf.keras_compat import keras
from lottery_tf.masking import (MaskedLayer, get_masks, get_prunable_weights, mask_names, overall_density,
                                set_masks, strip_masks, wrap_model)
from lottery_tf.pruning import PruningSpec

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
        "mha/query/kernel", "mha/key/kernel", "mha/value/kernel", "mha/attention_output/kernel",
        "lstm/lstm_cell/kernel", "lstm/lstm_cell/recurrent_kernel",
        "bi/forward_gru/gru_cell/kernel", "bi/forward_gru/gru_cell/recurrent_kernel",
        "bi/backward_gru/gru_cell/kernel", "bi/backward_gru/gru_cell/recurrent_kernel",
        "td/d/kernel", "rnn/simple_rnn_cell/kernel", "rnn/simple_rnn_cell/recurrent_kernel", "out/kernel",
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
    assert overall_density(wrapped) == pytest.approx(0.5, abs=0.001)
    wrapped.fit(x, y, batch_size=8, epochs=2, verbose=0)
    masks = get_masks(wrapped)
    for name, weight in get_prunable_weights(wrapped).items():
        assert np.all(weight[masks[name] == 0] == 0.0), name
        assert np.any(weight[masks[name] == 1] != 0.0), name
    assert masks["mha/query/kernel"].mean() < 1 and masks["lstm/lstm_cell/recurrent_kernel"].mean() < 1


def test_unmaskable_kernels_are_named_when_wrapping():
    class Custom(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 2), name="kernel")

        def call(self, x):
            return x @ self.kernel

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Custom(name="custom")(keras.layers.Dense(3, name="d")(inputs)))
    with pytest.warns(UserWarning, match=r"1 weight\(s\) stay dense .*custom/kernel"):
        wrap_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrap_model(model, exclude=["custom"])  # excluded on purpose: no warning


# One model of every keras.applications family (the families share their layer types);
# tools/check_applications.py checks every model and its output is committed in results/.
FAMILIES = ["ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0", "InceptionV3", "MobileNet",
            "MobileNetV2", "MobileNetV3Small", "NASNetMobile", "ResNet50", "ResNet50V2", "VGG16", "Xception"]


@pytest.mark.parametrize("name", FAMILIES)
def test_keras_application_families_wrap_with_every_kernel_masked(name):
    from tools.check_applications import check

    problem = check(name)
    assert problem is None, problem


def test_saved_ticket_loads_after_plain_import(tmp_path):
    model = wrap_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")]))
    masks = {"fc/kernel": np.tile([1.0, 0.0, 1.0], (4, 1)).astype("float32")}
    set_masks(model, masks)
    path = str(tmp_path / "ticket.keras")
    model.save(path)
    code = (
        "import numpy as np, keras, lottery_tf; "
        f"m = keras.models.load_model({path!r}); "
        "print(type(m.layers[0]).__name__, int(lottery_tf.get_masks(m)['fc/kernel'].sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == ["MaskedLayer", "8"]


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
    assert imp.level == 1
    np.testing.assert_array_equal(model.fc.layer.kernel.numpy(), before * get_masks(model)["fc/kernel"])


def _mlp():
    model = wrap_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="fc"),
                                         keras.layers.Dense(3, name="out")]))
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_layer_names_are_checked_at_the_start_and_resolved():
    x, y = RNG.normal(size=(8, 4)).astype("float32"), RNG.normal(size=(8, 3)).astype("float32")
    model = _mlp()
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.2, layer_fractions={"fc": 0.5}), output_layer="out")
    model.fit(x, y, epochs=1, verbose=0, callbacks=[imp])
    assert get_masks(model)["fc/kernel"].mean() == 0.5  # "fc" meant fc/kernel
    for spec, output, message in [
        (PruningSpec(layer_fractions={"fcx": 0.5}), None, r"layer_fractions: 'fcx' matches no masked weight; the model has fc/kernel, out/kernel"),
        (PruningSpec(), "nope", r"output_layer: 'nope' matches no masked weight"),
    ]:
        model = _mlp()
        with pytest.raises(ValueError, match=message):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[PruneRewindCallback(spec, output_layer=output)])
        assert int(model.optimizer.iterations.numpy()) == 0


def test_model_with_nothing_to_mask_fails_at_the_start():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="has no MaskedLayer"):
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
