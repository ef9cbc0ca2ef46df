"""Every Keras internal lottery_tf reads, checked against the installed Keras (both backends' passes run it).

lottery_tf.core.keras_compat is the one module that touches Keras's private names; if an upgrade removes
or changes one, the test of that name fails here, saying which.
"""

import numpy as np
import pytest

from lottery_tf.core import keras_compat
from lottery_tf.core.keras_compat import BACKEND, Functional, keras


class _Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(3, name="first")
        self.second = keras.layers.Dense(2, name="second")

    def call(self, x):
        return self.second(self.first(x))


def _model():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="fc")], name="inner")
    inputs = keras.Input((4,))
    return keras.Model(inputs, _Block(name="block")(inner(inputs)))


def test_functional_is_the_class_of_functional_models_and_not_of_sequential_ones():
    model = _model()
    assert isinstance(model, Functional) and issubclass(Functional, keras.Model)
    assert not isinstance(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), Functional)


def test_sublayers_are_the_layers_held_directly_and_all_sublayers_every_depth():
    model = _model()
    assert [layer.name for layer in keras_compat.sublayers(model)] == [layer.name for layer in model.layers]
    block = model.get_layer("block")
    assert [layer.name for layer in keras_compat.sublayers(block)] == ["first", "second"]
    assert {layer.name for layer in keras_compat.all_sublayers(model)} >= {"inner", "fc", "block", "first", "second"}


def test_batch_counter_counts_batches_where_iterations_counts_updates():
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    optimizer.build([variable])
    counter = keras_compat.batch_counter(optimizer)
    assert isinstance(counter, keras.Variable) and counter in optimizer.variables
    for _ in range(3):
        optimizer.apply([np.ones(2, "float32")], [variable])
    assert int(counter.numpy()) == 3 and int(np.asarray(optimizer.iterations)) == 1


def test_learning_rate_object_is_the_schedule_or_the_variable_the_optimizer_holds():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
    assert keras_compat.learning_rate_object(keras.optimizers.SGD(schedule)) is schedule
    rate = keras_compat.learning_rate_object(keras.optimizers.SGD(0.25))
    assert isinstance(rate, keras.Variable) and float(rate.numpy()) == 0.25


def test_moving_averages_pair_each_weight_with_its_average():
    weights = [keras.Variable(np.full(3, 2.0, "float32")), keras.Variable(np.ones((2, 2), "float32"))]
    optimizer = keras.optimizers.Adam(0.1, use_ema=True)
    assert keras_compat.moving_averages(optimizer) == []  # not built
    optimizer.build(weights)
    pairs = keras_compat.moving_averages(optimizer)
    assert [w is v for (w, _), v in zip(pairs, weights)] == [True, True]
    assert [tuple(a.shape) for _, a in pairs] == [(3,), (2, 2)]
    assert keras_compat.moving_averages(keras.optimizers.Adam(0.1)) == []


def test_keep_through_fit_keeps_a_value_jax_would_take_out():
    variable = keras.Variable(np.arange(3, dtype="float32"))
    kind = type(variable)
    keras_compat.keep_through_fit(variable)
    if BACKEND != "jax":
        assert type(variable) is kind  # nothing changes on TensorFlow
        return
    assert isinstance(variable, kind) and type(variable).__name__ == kind.__name__
    variable._value = None  # what JAX's trainer does to model variables for an epoch
    np.testing.assert_array_equal(variable.numpy(), [0, 1, 2])
    variable.assign(np.ones(3, "float32"))
    np.testing.assert_array_equal(variable.numpy(), [1, 1, 1])


def test_variable_strategy_names_the_distribution_strategy():
    assert keras_compat.variable_strategy(keras.Variable(np.ones(2, "float32"))) is None
    if BACKEND != "tensorflow":
        return  # tf.distribute is TensorFlow's
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    with strategy.scope():
        variable = keras.Variable(np.ones(2, "float32"))
    assert keras_compat.variable_strategy(variable) is strategy


def test_the_loss_scaler_hooks_lottery_tf_overrides_exist():
    for name in ("_stateful_handle_non_finite_grads", "_stateless_handle_non_finite_grads"):
        assert callable(getattr(keras.optimizers.LossScaleOptimizer, name, None)), name


def test_pytorch_is_refused_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "torch"}
    result = subprocess.run(
        [sys.executable, "-c", "import lottery_tf.core.keras_compat"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"ImportError: {keras_compat._TORCH_REFUSED}"
    assert "set KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax" in keras_compat._TORCH_REFUSED


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_both_backends_are_admitted(backend):
    assert backend in keras_compat.BACKENDS
