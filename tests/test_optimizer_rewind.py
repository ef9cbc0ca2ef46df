"""rewind.reset_optimizer: one reset that understands Keras's optimizer wrappers.

Each test names the bug it guards against: the old reset zeroed the loss
scale and the inner learning rate under mixed_float16, kept Adam's counter at
k with zero moments, and zeroed EMA averages while the counter said k.
"""

import numpy as np
import pytest

from lottery_tf.core import rewind
from lottery_tf.core.callbacks import PruneRewindCallback
from lottery_tf.core.keras_compat import BACKEND, keras
from lottery_tf.core.masking import get_masks, get_prunable_weights, wrap_model
from lottery_tf.core.optimizers import StepCountingLossScaleOptimizer
from lottery_tf.core.pruning import PruningSpec
from lottery_tf.core.schedules import LotterySchedule

RNG = np.random.default_rng(3)
X = RNG.normal(size=(64, 6)).astype("float32")
Y = RNG.integers(0, 3, size=64)


def _model(optimizer):
    keras.utils.set_random_seed(1)
    model = wrap_model(
        keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="fc"), keras.layers.Dense(3, name="out")])
    )
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    return model


def _train(model, steps=5):
    model.fit(X[: 8 * steps], Y[: 8 * steps], batch_size=8, epochs=1, verbose=0, shuffle=False)


@pytest.mark.parametrize("mode", ["fresh", "reset"])
def test_loss_scaler_keeps_its_scale_and_inner_learning_rate(mode):
    model = _model(StepCountingLossScaleOptimizer(keras.optimizers.Adam(0.01), initial_scale=128.0))
    _train(model)
    optimizer = model.optimizer
    optimizer.dynamic_scale.assign(16.0)  # as after overflows
    rewind.reset_optimizer(optimizer, 3, mode)
    assert float(optimizer.dynamic_scale.numpy()) == 128.0  # its initial value, not 0
    assert int(optimizer.step_counter.numpy()) == 0
    assert float(optimizer.inner_optimizer.learning_rate.numpy()) == pytest.approx(0.01)  # not 0
    for slot in optimizer.inner_optimizer._momentums + optimizer.inner_optimizer._velocities:
        assert not np.any(slot.numpy())
    assert int(optimizer.iterations.numpy()) == (0 if mode == "fresh" else 3)
    assert rewind.global_step(optimizer) == 3


def _apply(optimizer, grads, variables):
    """One update: ``apply`` on TensorFlow; on JAX ``stateless_apply``, the path JAX's ``fit`` takes (Keras's
    stateful ``LossScaleOptimizer.apply`` fails on JAX: it assigns variables inside ``ops.cond``)."""
    if BACKEND != "jax":
        optimizer.apply(grads, variables)
        return
    new_variables, new_state = optimizer.stateless_apply(
        [v.value for v in optimizer.variables], grads, [v.value for v in variables]
    )
    for variable, value in zip([*variables, *optimizer.variables], [*new_variables, *new_state]):
        variable.assign(value)


def test_skipped_loss_scaled_steps_still_count():
    inner = keras.optimizers.SGD(0.1)
    optimizer = StepCountingLossScaleOptimizer(inner, initial_scale=8.0)
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer.build([variable])
    _apply(optimizer, [np.array([np.inf, 1.0], "float32")], [variable])
    assert int(optimizer.iterations.numpy()) == 1  # a skipped update is still a step (batch i = step i)
    assert float(optimizer.dynamic_scale.numpy()) == 4.0
    np.testing.assert_array_equal(variable.numpy(), [1.0, 1.0])  # and the update was skipped
    # Keras's own scaler leaves the counter behind: the reason for the subclass.
    plain = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=8.0)
    other = keras.Variable(np.ones(2, "float32"))
    plain.build([other])
    _apply(plain, [np.array([np.inf, 1.0], "float32")], [other])
    assert int(plain.iterations.numpy()) == 0


def test_adam_fresh_restarts_bias_correction_reset_does_not():
    """After a rewind to k = 2000, Adam's first update: fresh is lr * sign(g); reset is ~2.9x that."""
    k, lr = 2000, 1e-3
    updates = {}
    for mode in ("fresh", "reset"):
        model = _model(keras.optimizers.Adam(lr))
        model.optimizer.iterations.assign(k)
        rewind.reset_optimizer(model.optimizer, k, mode)
        kernel = model.trainable_variables[0]
        before = kernel.numpy().copy()
        model.train_on_batch(X[:8], Y[:8])
        updates[mode] = np.abs(kernel.numpy() - before).max()
    assert updates["fresh"] == pytest.approx(lr, rel=0.01)  # m_hat / sqrt(v_hat) = sign(g) at step 1
    # reset: m = 0.1 g, v = 0.001 g^2, corrected as if k + 1 steps old.
    t = k + 1
    expected = lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * 0.1 / np.sqrt(0.001)
    assert updates["reset"] == pytest.approx(expected, rel=0.01)
    assert expected == pytest.approx(2.94 * lr, rel=0.01)


def test_fresh_offsets_the_schedule_not_the_counter():
    schedule = rewind.OffsetSchedule(LotterySchedule(0.1, "step", 100, milestones=(40,), gamma=0.1))
    model = _model(keras.optimizers.SGD(schedule))
    rewind.reset_optimizer(model.optimizer, 50, "fresh")
    assert int(model.optimizer.iterations.numpy()) == 0
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)  # lr(50), past the milestone
    rewind.reset_optimizer(model.optimizer, 0, "fresh")
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)


def test_restore_puts_back_the_saved_state():
    model = _model(keras.optimizers.Adam(1e-2))
    _train(model, 3)
    saved = rewind.optimizer_values(model.optimizer)
    _train(model, 3)
    rewind.reset_optimizer(model.optimizer, 3, "restore", saved)
    for variable, value in zip(model.optimizer.variables, saved):
        np.testing.assert_array_equal(variable.numpy(), value)
    with pytest.raises(ValueError, match="needs the optimizer state saved at step 3"):
        rewind.reset_optimizer(model.optimizer, 3, "restore", None)
    with pytest.raises(ValueError, match="must be one of fresh, reset, restore"):
        rewind.reset_optimizer(model.optimizer, 3, "bogus")


def test_gradient_accumulators_are_zeroed():
    model = _model(keras.optimizers.SGD(0.1, gradient_accumulation_steps=4))
    _train(model, 3)  # three steps accumulate, none applied yet
    assert any(np.any(a.numpy()) for a in model.optimizer._accumulated_gradients)
    rewind.reset_optimizer(model.optimizer, 0, "fresh")
    assert not any(np.any(a.numpy()) for a in model.optimizer._accumulated_gradients)


@pytest.mark.parametrize("mode", ["fresh", "reset"])
def test_ema_with_rewind_step_does_not_shrink_weights(mode):
    """use_ema + rewind_step > 0: the averages restart at the rewound weights (the old reset made them 0)."""
    model = _model(keras.optimizers.SGD(1e-7, use_ema=True, ema_momentum=0.99))
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.5), rewind_step=2, levels=2, rewind_optimizer=mode)
    model.fit(X[:48], Y[:48], batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[imp])  # 6 steps
    imp.prune_and_rewind()
    masks = get_masks(model)
    model.fit(X[:32], Y[:32], batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[imp])  # 4 steps
    weights = get_prunable_weights(model)
    for name, value in weights.items():
        # The learning rate is ~0, so the trained weights are the rewound ones, not 0.99**4-ish shrunk.
        np.testing.assert_allclose(value, imp.rewind_point[name] * masks[name], atol=1e-5)
        assert np.all(value[masks[name] == 0] == 0.0)  # and exactly zero where pruned, EMA or not


def test_ema_averages_are_masked_so_pruned_weights_stay_zero_after_fit():
    model = _model(keras.optimizers.Adam(0.05, use_ema=True))
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.5))
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[imp])
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[imp])
    masks = get_masks(model)
    # fit copied the averages into the weights at its end: the trained level-1 ticket keeps its zeros
    assert len(imp.history) == 1 and imp.level_trained
    for name, value in get_prunable_weights(model).items():
        assert np.all(value[masks[name] == 0] == 0.0), name
