"""IMP in a user's own training loop (attach / begin_level / end_step / end_level), and one callback per model.

The loop is written for the backend the tests run on: a ``tf.GradientTape`` step (eager, ``tf.function``,
XLA) on TensorFlow; on JAX, ``jax.grad`` of ``model.stateless_call`` with the optimizer's own update
(``jax``) or the whole step compiled with ``jax.jit`` and ``optimizer.stateless_apply`` (``jax.jit``).
"""

import numpy as np
import pytest

from lottery_tf.core import rewind
from lottery_tf.core.callbacks import PruneRewindCallback
from lottery_tf.core.keras_compat import BACKEND, keras
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


def _gradients(model, x, y):
    """The loss's gradients with respect to ``model.trainable_variables``, as numpy arrays."""
    if BACKEND == "jax":
        import jax

        def loss_of(trainable):
            out, _ = model.stateless_call(trainable, [v.value for v in model.non_trainable_variables], x, training=True)
            return keras.ops.mean((out - y) ** 2)

        return [np.asarray(g) for g in jax.grad(loss_of)([v.value for v in model.trainable_variables])]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = _loss(model, x, y)
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def _step_function(model, mode):
    """One training step as a user writes it on this backend."""
    if mode == "jax":  # gradients compiled, the optimizer's own (stateful) update: it reads the masks as they are
        import jax

        def loss_of(trainable, non_trainable, x, y):
            out, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            return keras.ops.mean((out - y) ** 2), non_trainable

        gradients = jax.jit(jax.value_and_grad(loss_of, has_aux=True))

        def step(x, y):
            (loss, non_trainable), grads = gradients(
                [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], x, y
            )
            for variable, value in zip(model.non_trainable_variables, non_trainable):
                variable.assign(value)
            model.optimizer.apply(grads, model.trainable_variables)
            return loss

        return step
    if mode == "jax.jit":  # the whole step compiled: it holds the masks and the schedule's offset it was traced with
        import jax

        def pure_step(trainable, non_trainable, optimizer_variables, x, y):
            def loss_of(trainable):
                out, updated = model.stateless_call(trainable, non_trainable, x, training=True)
                return keras.ops.mean((out - y) ** 2), updated

            (loss, non_trainable), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
            trainable, optimizer_variables = model.optimizer.stateless_apply(optimizer_variables, grads, trainable)
            return loss, trainable, non_trainable, optimizer_variables

        compiled = jax.jit(pure_step)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        groups = (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables)

        def step(x, y):
            loss, *values = compiled(*([v.value for v in group] for group in groups), x, y)
            for group, new in zip(groups, values):
                for variable, value in zip(group, new):
                    variable.assign(value)
            return loss

        return step
    import tensorflow as tf

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = _loss(model, x, y)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    if mode == "eager":
        return step
    return tf.function(step, jit_compile=(mode == "xla"))


MODES = ["jax", "jax.jit"] if BACKEND == "jax" else ["eager", "tf.function", "xla"]


@pytest.mark.parametrize("mode", MODES)
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
            grads = dict(zip(["fc/kernel", "fc/bias", "out/kernel", "out/bias"], _gradients(model, X, Y)))
            if mode == "jax.jit":
                step = _step_function(model, mode)  # traced again after begin_level: the new masks and offset
        for i in range(6 if level == 0 else 6 - K):
            step(X, Y)
            if level == 1 and i == 0:
                after = get_prunable_weights(model)
                kept = (masks["fc/kernel"] == 1) & (np.abs(grads["fc/kernel"]) > 1e-6)
                used = (before["fc/kernel"] - after["fc/kernel"])[kept] / grads["fc/kernel"][kept]
                # The step after a rewind to k uses lr(k) = 0.1 * 0.7**3 = 0.0343, not lr(0) = 0.1.
                np.testing.assert_allclose(used, 0.1 * 0.7**K, rtol=1e-4)
                assert np.all(after["fc/kernel"][masks["fc/kernel"] == 0] == 0.0)
            imp.end_step()
            if level == 0 and rewind.global_step(model.optimizer) == K:
                at_k = get_prunable_weights(model)
        imp.end_level()
    assert imp.level == 1 and imp.level_trained
    assert rewind.global_step(model.optimizer) == 6  # k + (6 - k) steps: the level ended where level 0 did


@pytest.mark.skipif(BACKEND != "jax", reason="TensorFlow's compiled steps read the mask variables when they run")
def test_a_jax_step_compiled_before_begin_level_is_refused_at_its_first_step():
    model = _model()
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.5), rewind_step=K)
    imp.attach(model)
    step = _step_function(model, "jax.jit")
    imp.begin_level()
    for _ in range(K + 1):
        step(X, Y)
        imp.end_step()
    imp.end_level()
    imp.begin_level()  # prunes: the step above still holds the dense masks
    step(X, Y)
    with pytest.raises(ValueError, match=r"compiled \(jax.jit\) before begin_level\(\) .* compile it again"):
        imp.end_step()


def test_attach_after_the_optimizer_took_a_step_is_refused():
    model = _model()
    step = _step_function(model, MODES[-1])
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
