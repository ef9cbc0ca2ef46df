"""PruneRewindCallback: IMP inside model.fit, reset and rewinding semantics."""

import numpy as np
import pytest

from lottery_tf.core import rewind
from lottery_tf.core.callbacks import PruneRewindCallback
from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks, get_prunable_weights, layer_densities, wrap_model
from lottery_tf.core.pruning import PruningSpec
from lottery_tf.store import states

RNG = np.random.default_rng(2)
X = RNG.normal(size=(64, 12)).astype("float32")
Y = RNG.integers(0, 4, size=64)


def _model(optimizer=None, steps_per_execution=1):
    keras.utils.set_random_seed(0)
    model = wrap_model(
        keras.Sequential(
            [
                keras.Input((12,)),
                keras.layers.Dense(20, activation="relu", name="fc1"),
                keras.layers.BatchNormalization(name="bn"),
                keras.layers.Dense(4, name="out"),
            ]
        )
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    return model


def test_reset_to_init_survivors_equal_initial_values():
    model = _model()
    initial = get_prunable_weights(model)
    initial_state = {v.path: v.numpy() for v in model.variables if "mask" not in v.path}
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.2, output_fraction=0.1))
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[imp])
    assert imp.level == 0 and imp.level_trained  # fit returns the trained level 0
    imp.prune_and_rewind()  # what the next fit does first
    assert imp.level == 1 and not imp.level_trained
    # fc1: 240 - ceil(48) = 192; out: 80 - 8 = 72.
    assert layer_densities(model) == {"fc1/kernel": 192 / 240, "out/kernel": 72 / 80}
    weights, masks = get_prunable_weights(model), get_masks(model)
    for name in weights:
        np.testing.assert_array_equal(weights[name], initial[name] * masks[name])
    # Biases and BatchNorm statistics are rewound too.
    for v in model.variables:
        if "mask" not in v.path and "kernel" not in v.path:
            np.testing.assert_array_equal(v.numpy(), initial_state[v.path])
    # Optimizer slots zeroed, step counter back to 0.
    assert int(model.optimizer.iterations.numpy()) == 0
    for v in model.optimizer.variables:
        if v is not model.optimizer.iterations and "learning_rate" not in v.path:
            assert not np.any(v.numpy())


def test_masks_come_from_trained_weights_not_initial_ones():
    model = _model()
    imp = PruneRewindCallback(PruningSpec("layerwise", 0.5), levels=2)
    model.fit(X, Y, batch_size=16, epochs=3, verbose=0, callbacks=[imp])
    imp.prune_and_rewind()
    # What the callback decided equals pruning the trained weights by hand.
    trained = {}

    class Grab(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            trained.update(get_prunable_weights(self.model))

    model2 = _model()
    model2.fit(X, Y, batch_size=16, epochs=3, verbose=0, callbacks=[Grab()])
    expected = {n: np.abs(w) for n, w in trained.items()}
    masks = get_masks(model)
    for name, magnitude in expected.items():
        kept = magnitude[masks[name] == 1].min()
        dropped = magnitude[masks[name] == 0].max()
        assert kept >= dropped


def test_imp_loop_levels_and_final_level_keeps_trained_weights():
    model = _model()
    imp = PruneRewindCallback(PruningSpec("global", 0.5), levels=3)
    densities = []
    for _ in range(4):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[imp])
        densities.append(sum(m.sum() for m in get_masks(model).values()))
    # Each fit trains one level at the density it began with; the fourth goes on training the last.
    assert densities == [320, 160, 80, 80]
    assert imp.level == 2 and not imp.level_trained
    assert int(model.optimizer.iterations.numpy()) == 8  # level 2 trained twice, never rewound again


def test_rewind_to_step_k_restores_weights_at_k_and_schedule_position():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([3], [0.1, 0.01])
    model = _model(keras.optimizers.SGD(schedule, momentum=0.9))
    at_k = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 2:
                at_k.update(get_prunable_weights(self.model))

    imp = PruneRewindCallback(PruningSpec("layerwise", 0.2), rewind_step=2, rewind_optimizer="reset")
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[Record(), imp])
    imp.prune_and_rewind()
    weights, masks = get_prunable_weights(model), get_masks(model)
    for name in weights:
        np.testing.assert_array_equal(weights[name], at_k[name] * masks[name])
    assert int(model.optimizer.iterations.numpy()) == 2
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)  # step 2 < boundary 3
    # The next level continues the schedule from step 2.
    model.fit(X, Y, batch_size=16, epochs=1, steps_per_epoch=2, verbose=0)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)


def test_rewind_step_with_steps_per_execution():
    model = _model(steps_per_execution=2)
    imp = PruneRewindCallback(PruningSpec(), rewind_step=3)
    with pytest.raises(ValueError, match=r"rewind_step=3 cannot be observed: .* only at steps 2, 4, .* not see step 3"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[imp])
    model = _model(steps_per_execution=2)
    imp = PruneRewindCallback(PruningSpec(), rewind_step=2, rewind_optimizer="reset")
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[imp])
    assert int(model.optimizer.iterations.numpy()) == 4  # the trained level, 2 executions of 2 steps
    imp.prune_and_rewind()
    assert int(model.optimizer.iterations.numpy()) == 2


def _acting_callbacks():
    from lottery_tf.core.gradual import GradualPruningCallback
    from lottery_tf.core.sparse_training import DynamicSparseCallback

    return {
        "rewind": lambda: PruneRewindCallback(PruningSpec(), rewind_step=8),
        "gmp": lambda: GradualPruningCallback(0.5, begin_step=5, end_step=13, frequency=4),
        "dst": lambda: DynamicSparseCallback("set", density=0.5, update_every=4, end_fraction=1.0),
    }


@pytest.mark.parametrize("kind", ["rewind", "gmp", "dst"])
def test_a_callback_acting_at_steps_refuses_epochs_that_shift_the_executions(kind):
    """steps_per_execution=4 with 6-step epochs: fit calls callbacks after steps 4, 6, 10, 12, 16, ...

    Step 8 (the rewind point, a GMP pruning step, a DST update) would never be seen: each callback refuses
    before training. The same callbacks with 8-step epochs act at every one of their steps.
    """
    callback = _acting_callbacks()[kind]()
    model = _model(steps_per_execution=4)
    x, y = np.concatenate([X, X[:32]]), np.concatenate([Y, Y[:32]])  # 96 examples
    seen = r"only at steps (0, )?4, 6, 10, 12, (16, )?\.\.\. \(executions of 4 steps, the last of each 6-step epoch shorter\)"
    with pytest.raises(ValueError, match=seen + ", so it would not see step 8"):
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback])
    assert int(model.optimizer.iterations.numpy()) == 0  # refused before the first step
    callback = _acting_callbacks()[kind]()
    model = _model(steps_per_execution=4)
    model.fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=[callback])  # 8-step epochs: 24 steps
    if kind == "rewind":
        assert callback.rewind_point is not None
    elif kind == "gmp":
        assert [step for step, _ in callback.updates] == [5, 9, 13]
    else:
        assert [update["step"] for update in callback.updates] == [4, 8, 12, 16, 20, 24]


def test_rewind_step_never_reached_is_an_error():
    model = _model()
    imp = PruneRewindCallback(PruningSpec(), rewind_step=100)
    with pytest.raises(ValueError, match="before rewind_step=100 was reached"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[imp])


@pytest.mark.parametrize("kwargs", [{"rewind_step": -1}, {"rewind_step": 1.5}, {"levels": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        PruneRewindCallback(PruningSpec(), **kwargs)


def test_rewind_point_save_load(tmp_path):
    model = _model()
    state = rewind.capture(model)
    path = tmp_path / "point.npz"
    states.save(state, path)
    loaded = states.load(path)
    assert list(loaded) == list(state)
    for key in state:
        np.testing.assert_array_equal(loaded[key], state[key])
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    rewind.restore(model, loaded)
    for v in model.variables:
        if v.path in state:
            np.testing.assert_array_equal(v.numpy(), state[v.path])
    with pytest.raises(ValueError, match="does not match the model"):
        rewind.restore(model, {"x": np.zeros(1)})


def test_rewind_optimizer_restore_restores_adam_slots_at_k():
    model = _model(keras.optimizers.Adam(0.01))
    at_k = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 2:
                at_k["slots"] = [v.numpy().copy() for v in self.model.optimizer.variables]

    imp = PruneRewindCallback(PruningSpec("layerwise", 0.2), rewind_step=2, rewind_optimizer="restore")
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[Record(), imp])
    imp.prune_and_rewind()
    assert int(model.optimizer.iterations.numpy()) == 2
    slots = [v.numpy() for v in model.optimizer.variables]
    assert any(np.any(s) for s in at_k["slots"][2:])  # moments at step 2 are not zero
    for now, then in zip(slots, at_k["slots"]):
        np.testing.assert_array_equal(now, then)
    with pytest.raises(ValueError, match="rewind_optimizer must be one of fresh, reset, restore; got 'keep'"):
        PruneRewindCallback(rewind_optimizer="keep")
    # Learning-rate rewinding saves no optimizer state at k: refused before the first step, not after a level.
    model = _model()
    imp = PruneRewindCallback(rewind_step=3, rewind_weights=False, rewind_optimizer="restore")
    with pytest.raises(ValueError, match="'restore' needs the optimizer state of step 3, .* rewind_weights=False"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[imp])
    assert int(model.optimizer.iterations.numpy()) == 0
