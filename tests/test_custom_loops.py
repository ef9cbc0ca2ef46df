"""IMP in a user's own training loop (attach / begin_level / end_step / end_level), and one callback per model."""

import numpy as np
import pytest
import tensorflow as tf

from lottery_tf.core import rewind
from lottery_tf.core.callbacks import PruneRewindCallback
from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks, get_prunable_weights, wrap_model
from lottery_tf.core.pruning import PruningSpec

RNG = np.random.default_rng(11)
X = RNG.normal(size=(8, 6)).astype("float32")
Y = RNG.normal(size=(8, 3)).astype("float32")
K = 3
SCHEDULE = dict(initial_learning_rate=0.1, decay_steps=1, decay_rate=0.7)  # lr(t) = 0.1 * 0.7**t


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="fc"), keras.layers.Dense(3, name="out")])
    wrap_model(model)
    model.optimizer = keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(**SCHEDULE))
    return model


def _loss(model, x, y):
    return keras.ops.mean((model(x, training=True) - y) ** 2)


def _step_function(model, mode):
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = _loss(model, x, y)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    if mode == "eager":
        return step
    return tf.function(step, jit_compile=(mode == "xla"))


@pytest.mark.parametrize("mode", ["eager", "tf.function", "xla"])
def test_custom_loop_rewinds_bit_exactly_and_uses_the_rewound_learning_rate(mode):
    model = _model()
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.5), rewind_step=K)  # rewind_optimizer="fresh"
    imp.attach(model)  # before the step is traced: the schedule becomes rewindable
    step = _step_function(model, mode)
    at_k = {}
    for level in range(2):
        imp.begin_level()
        if level == 1:
            # The rewound level starts at the weights of step k, under the new masks, bit for bit.
            masks = get_masks(model)
            for name, value in get_prunable_weights(model).items():
                np.testing.assert_array_equal(value, at_k[name] * masks[name])
            before = get_prunable_weights(model)
            with tf.GradientTape() as tape:
                loss = _loss(model, X, Y)
            grads = dict(
                zip(["fc/kernel", "fc/bias", "out/kernel", "out/bias"], tape.gradient(loss, model.trainable_variables))
            )
        for i in range(6 if level == 0 else 6 - K):
            step(X, Y)
            if level == 1 and i == 0:
                after = get_prunable_weights(model)
                kept = (masks["fc/kernel"] == 1) & (np.abs(grads["fc/kernel"].numpy()) > 1e-6)
                used = (before["fc/kernel"] - after["fc/kernel"])[kept] / grads["fc/kernel"].numpy()[kept]
                # The step after a rewind to k uses lr(k) = 0.1 * 0.7**3 = 0.0343, not lr(0) = 0.1.
                np.testing.assert_allclose(used, 0.1 * 0.7**K, rtol=1e-4)
                assert np.all(after["fc/kernel"][masks["fc/kernel"] == 0] == 0.0)
            imp.end_step()
            if level == 0 and rewind.global_step(model.optimizer) == K:
                at_k = get_prunable_weights(model)
        imp.end_level()
    assert imp.level == 1 and imp.level_trained
    assert rewind.global_step(model.optimizer) == 6  # k + (6 - k) steps: the level ended where level 0 did


def test_attach_after_the_optimizer_took_a_step_is_refused():
    model = _model()
    step = _step_function(model, "tf.function")
    step(X, Y)  # traced with the plain schedule: a rewind could not reach this trace
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.5), rewind_step=K)
    with pytest.raises(ValueError, match=r"already been built .* call attach\(model\) before the first step"):
        imp.attach(model)
    with pytest.raises(
        ValueError, match=r"^begin_level\(\) before attach\(model\): call callback.attach\(model\) first"
    ):
        PruneRewindCallback().begin_level()
    bare = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="has no optimizer"):
        PruneRewindCallback().attach(wrap_model(bare))


def test_one_callback_refuses_a_second_model_and_reset_starts_over():
    first, second = _model(seed=1), _model(seed=2)
    for model in (first, second):
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    init_second = rewind.capture(second)
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.5))
    first.fit(X, Y, epochs=1, verbose=0, callbacks=[imp])
    with pytest.raises(ValueError, match=r"drives model .* not to model .*one callback per model"):
        second.fit(X, Y, epochs=1, verbose=0, callbacks=[imp])
    assert int(second.optimizer.iterations.numpy()) == 0  # refused before any step
    imp.reset()
    for _ in range(2):
        second.fit(X, Y, epochs=1, verbose=0, callbacks=[imp])
    imp.prune_and_rewind()
    # The second model is rewound to its own initialization, never to the first model's.
    masks = get_masks(second)
    for name, value in get_prunable_weights(second).items():
        np.testing.assert_array_equal(value, init_second[name] * masks[name])
