"""Dynamic sparse training (SET, RigL): the drop/grow decision, the schedule and ERK in literal numbers, and the
callback inside model.fit (exact density and zeros after every step, new connections at 0 with 0 moments, RigL
growing where the dense gradient is largest, SET reproducible from its seed, a restored state deciding the same)."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from lottery_tf.core import sparse_training as st
from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks, get_prunable_weights, masked_weights, set_masks, wrap_model

# -- the decision, in literal numbers --------------------------------------------------


def test_drop_takes_the_smallest_magnitudes_and_the_earlier_of_equal_ones():
    weight = np.array([0.5, -0.1, 0.1, 0.3, 0.0, 0.0, 0.0])
    mask = np.array([1, 1, 1, 1, 0, 0, 0])
    # |w| 0.1 at positions 1 and 2 tie: drop 1 of them -> the earlier (1). Grow scores favour position 5.
    update = st.drop_and_grow(weight, mask, 1, np.array([0, 0, 0, 0, 0.2, 0.9, 0.2]))
    np.testing.assert_array_equal(update.mask, [1, 0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(update.removed, [0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(update.new, [0, 0, 0, 0, 0, 1, 0])
    assert update.dropped == 1 and update.moved == 1


def test_grow_takes_the_later_of_equal_scores():
    weight = np.array([0.5, 0.4, 0.0, 0.0, 0.0])
    mask = np.array([1, 1, 0, 0, 0])
    # Scores tie at 0.7 on positions 2 and 4; one is grown: the later (4).
    update = st.drop_and_grow(weight, mask, 1, np.array([0, 0, 0.7, 0.1, 0.7]))
    np.testing.assert_array_equal(update.mask, [1, 0, 0, 0, 1])
    # All candidates tie: the last ones grow, two of them.
    update = st.drop_and_grow(weight, mask, 2, np.zeros(5))
    np.testing.assert_array_equal(update.mask, [0, 0, 0, 1, 1])


def test_a_dense_layer_is_left_as_it_is():
    weight = np.array([[0.3, -0.2], [0.1, 0.4]])
    update = st.drop_and_grow(weight, np.ones((2, 2)), 2, np.arange(4.0).reshape(2, 2))
    np.testing.assert_array_equal(update.mask, np.ones((2, 2)))
    assert update.dropped == 0 and update.moved == 0 and not update.removed.any()


def test_fewer_zeros_than_the_drop_count_regrow_among_the_just_dropped():
    # 5 active, 1 zero (position 5); k = 3 drops positions 4, 3, 2 (|w| .01 .02 .03); the candidates are the one
    # zero and the 3 just-dropped: 4 positions for 3 growths. Scores: 5 -> 9, 2 -> 8, 4 -> 7, 3 -> 1.
    weight = np.array([0.9, 0.8, 0.03, 0.02, 0.01, 0.0])
    mask = np.array([1, 1, 1, 1, 1, 0])
    update = st.drop_and_grow(weight, mask, 3, np.array([0, 0, 8.0, 1.0, 7.0, 9.0]))
    np.testing.assert_array_equal(update.mask, [1, 1, 1, 0, 1, 1])
    assert update.dropped == 3  # three dropped, two grown straight back: one connection moved (3 -> 5)
    np.testing.assert_array_equal(update.new, [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(update.removed, [0, 0, 0, 1, 0, 0])
    assert update.mask.sum() == mask.sum()


def test_counts_are_exact():
    assert st.drop_count(10, 0.3) == 3  # 0.3 * 10 is 2.9999999999999996 in doubles
    assert st.drop_count(7, 0.3) == 2  # floor(2.1)
    assert st.drop_count(3, 0.3) == 0
    assert st.active_count(4608, 0.1) == 461  # ceil(460.8)
    assert st.active_count(1000, 0.1) == 100
    assert st.active_count(10, 1.0) == 10


def test_cosine_drop_fraction():
    # f (1 + cos(pi t / T)) / 2 with f = 0.3, T = 1000.
    assert st.drop_fraction_at(0, 0.3, 1000) == pytest.approx(0.3)
    assert st.drop_fraction_at(250, 0.3, 1000) == pytest.approx(0.3 * (1 + math.sqrt(0.5)) / 2)
    assert st.drop_fraction_at(500, 0.3, 1000) == pytest.approx(0.15)
    assert st.drop_fraction_at(750, 0.3, 1000) == pytest.approx(0.3 * (1 - math.sqrt(0.5)) / 2)
    assert st.drop_fraction_at(1000, 0.3, 1000) == pytest.approx(0.0, abs=1e-15)
    assert st.drop_fraction_at(2000, 0.3, 1000) == pytest.approx(0.0, abs=1e-15)
    assert st.drop_fraction_at(750, 0.3, 1000, "constant") == 0.3
    with pytest.raises(ValueError, match="drop_schedule"):
        st.drop_fraction_at(1, 0.3, 10, "linear")


LENET_CONV = {
    "conv/kernel": (3, 3, 16, 32),
    "fc1/kernel": (784, 300),
    "fc2/kernel": (300, 100),
    "out/kernel": (100, 10),
}


def test_erk_by_hand_with_a_layer_made_dense():
    # Target ones at density 0.1: ceil(0.1 n) = 461 + 23520 + 3000 + 100 = 27081.
    # Raw ratios sum(d) / prod(d): 54/4608, 1084/235200, 400/30000, 110/1000; sum of raw * n = 1648.
    # eps = 27081 / 1648 = 16.43 -> out/kernel 0.11 * 16.43 > 1: made dense.
    # Again without it: rhs = 461 + 23520 + 3000 - 900 (the dense layer's zeros) = 26081; divisor 54+1084+400 = 1538.
    eps = Fraction(26081, 1538)
    densities = st.erk_densities(LENET_CONV, 0.1)
    assert list(densities) == list(LENET_CONV)
    assert densities["out/kernel"] == 1.0
    assert densities["conv/kernel"] == pytest.approx(float(eps * Fraction(54, 4608)), rel=1e-12)
    assert densities["fc1/kernel"] == pytest.approx(float(eps * Fraction(1084, 235200)), rel=1e-12)
    assert densities["fc2/kernel"] == pytest.approx(float(eps * Fraction(400, 30000)), rel=1e-12)
    assert densities["conv/kernel"] == pytest.approx(0.198723, abs=1e-6)
    assert densities["fc1/kernel"] == pytest.approx(0.078156, abs=1e-6)
    assert densities["fc2/kernel"] == pytest.approx(0.226103, abs=1e-6)
    # The kept counts add up to the target, up to each layer's ceil.
    kept = sum(st.active_count(int(np.prod(s)), densities[n]) for n, s in LENET_CONV.items())
    assert 27081 <= kept <= 27081 + len(LENET_CONV)


def test_erk_without_a_dense_layer_and_at_density_one():
    # (4, 8) raw 12/32, (8, 2) raw 10/16, at density 0.5: rhs 16 + 8 = 24, divisor 12 + 10 = 22.
    densities = st.erk_densities({"a": (4, 8), "b": (8, 2)}, 0.5)
    assert densities == pytest.approx({"a": 24 / 22 * 12 / 32, "b": 24 / 22 * 10 / 16})
    assert st.erk_densities({"a": (4, 8)}, 1.0) == {"a": 1.0}
    assert st.layer_densities_for({"a": (4, 8), "b": (8, 2)}, 0.3) == {"a": 0.3, "b": 0.3}
    with pytest.raises(ValueError, match="density"):
        st.erk_densities({"a": (4, 8)}, 0.0)
    with pytest.raises(ValueError, match="distribution"):
        st.layer_densities_for({"a": (4, 8)}, 0.3, "erdos")


def test_random_masks_have_exact_counts_and_follow_the_seed():
    shapes = {"a": (20, 30), "b": (3, 3, 4, 8)}
    densities = {"a": 0.1, "b": 0.25}
    first = st.random_masks(shapes, densities, np.random.default_rng(5))
    again = st.random_masks(shapes, densities, np.random.default_rng(5))
    other = st.random_masks(shapes, densities, np.random.default_rng(6))
    assert {n: int(m.sum()) for n, m in first.items()} == {"a": 60, "b": 72}
    assert all(np.array_equal(first[n], again[n]) for n in shapes)
    assert not np.array_equal(first["a"], other["a"])


def test_set_update_is_reproducible_and_rigl_follows_the_gradient():
    rng = np.random.default_rng(0)
    weights = {"a": rng.normal(size=(6, 5)), "b": rng.normal(size=(5, 4))}
    masks = st.random_masks({n: w.shape for n, w in weights.items()}, {"a": 0.5, "b": 0.5}, rng)
    one = st.update_masks(weights, masks, 0.3, "set", rng=np.random.default_rng(9))
    two = st.update_masks(weights, masks, 0.3, "set", rng=np.random.default_rng(9))
    assert all(np.array_equal(one[n].mask, two[n].mask) for n in masks)
    assert [one[n].dropped for n in masks] == [4, 3]  # floor(15 * 0.3), floor(10 * 0.3)
    gradients = {n: rng.normal(size=w.shape) for n, w in weights.items()}
    rigl = st.update_masks(weights, masks, 0.3, "rigl", gradients=gradients)
    for name, update in rigl.items():
        # Every position inactive after the update was a candidate (inactive before, or just dropped) and lost.
        grown = np.abs(gradients[name][update.new])
        inactive = np.abs(gradients[name][update.mask == 0])
        assert update.moved > 0 and grown.min() >= inactive.max()
        assert update.mask.sum() == masks[name].sum()
    with pytest.raises(ValueError, match="gradient"):
        st.update_masks(weights, masks, 0.3, "rigl")


# -- the callback ----------------------------------------------------------------------


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    y = (x[:, :4].argmax(axis=1)).astype("int32")
    return x, y


def _model(optimizer="adam", seed=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(24, activation="relu", name="fc1")(inputs)
    hidden = keras.layers.Dense(16, activation="relu", name="fc2")(hidden)
    model = wrap_model(keras.Model(inputs, keras.layers.Dense(4, name="out")(hidden)))
    opt = keras.optimizers.Adam(0.01) if optimizer == "adam" else keras.optimizers.SGD(0.05, momentum=0.9)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _slots(model, name):
    weight = {n: w for n, _, w in masked_weights(model)}[name]
    return st.optimizer_slots(model.optimizer, model)[id(weight)]


class _Watch(keras.callbacks.Callback):
    """After every step: counts, exact zeros, and, right after an update, the new connections' values and slots."""

    def __init__(self, dst):
        super().__init__()
        self.dst, self.counts, self.seen_updates, self.before = dst, None, 0, {}
        self.moments_were_nonzero = False

    def on_train_batch_end(self, batch, logs=None):
        masks, weights = get_masks(self.model), get_prunable_weights(self.model)
        counts = {n: int(m.sum()) for n, m in masks.items()}
        if self.counts is None:
            self.counts = counts
        assert counts == self.counts  # a layer's count of weights never changes
        for name in masks:
            assert np.all(weights[name][masks[name] == 0] == 0.0), name  # exactly 0.0, after every step
        if len(self.dst.updates) > self.seen_updates:
            self.seen_updates = len(self.dst.updates)
            for name, new in self.dst.last_new.items():
                assert np.all(weights[name].ravel()[new] == 0.0)
                for slot in _slots(self.model, name):
                    assert np.all(np.asarray(slot.numpy()).ravel()[new] == 0.0), slot.name
                if np.any(self.before[name].ravel()[new] != 0):
                    self.moments_were_nonzero = True


class _Before(keras.callbacks.Callback):
    """Before the DST callback sees the step: each weight's first slot (momentum), to show the reset changes it."""

    def __init__(self, watch):
        super().__init__()
        self.watch = watch

    def on_train_batch_end(self, batch, logs=None):
        self.watch.before = {name: _slots(self.model, name)[0].numpy() for name in get_masks(self.model)}


@pytest.mark.parametrize("optimizer, method", [("adam", "set"), ("sgd", "rigl")])
def test_fit_keeps_density_and_zeros_and_resets_new_connections(optimizer, method):
    x, y = _data()
    model = _model(optimizer)
    # 4 steps an epoch, 8 epochs: 32 steps; updates every 4 up to floor(0.75 * 32) = 24.
    dst = st.DynamicSparseCallback(
        method, density=0.25, update_every=4, drop_fraction=0.5, seed=3, gradient_data=lambda step: (x[:32], y[:32])
    )
    watch = _Watch(dst)
    model.fit(x, y, batch_size=32, epochs=8, verbose=0, callbacks=[_Before(watch), dst, watch])
    masks = get_masks(model)
    # Started at the density: ceil(0.25 n) per layer.
    assert {n: int(m.sum()) for n, m in masks.items()} == {"fc1/kernel": 72, "fc2/kernel": 96, "out/kernel": 16}
    assert [u["step"] for u in dst.updates] == [4, 8, 12, 16, 20, 24]
    for entry in dst.updates:
        fraction = st.drop_fraction_at(entry["step"], 0.5, 24)
        assert entry["drop_fraction"] == fraction
        assert entry["dropped"] == {n: math.floor(int(m.sum()) * Fraction(repr(fraction))) for n, m in masks.items()}
        assert all(entry["moved"][n] <= entry["dropped"][n] for n in masks)
    assert sum(dst.moved().values()) > 0
    slots = {s.name.rsplit("_", 1)[-1] for name in masks for s in _slots(model, name)}
    assert slots == ({"momentum", "velocity"} if optimizer == "adam" else {"momentum"})
    assert watch.seen_updates == 6 and watch.moments_were_nonzero  # moments at new positions were reset from != 0
    # Nothing moves after the end step: the masks at the end are the last update's.
    assert dst._last_step == 24


def test_masks_stay_fixed_after_end_fraction():
    x, y = _data()
    model = _model("sgd")
    dst = st.DynamicSparseCallback("set", density=0.5, update_every=4, drop_schedule="constant", end_fraction=0.5)
    snapshots = {}

    class Snap(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            snapshots[int(model.optimizer.iterations.numpy())] = get_masks(model)

    model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[dst, Snap()])  # 16 steps, end step 8
    assert [u["step"] for u in dst.updates] == [4, 8]
    for step in range(9, 17):
        assert all(np.array_equal(snapshots[step][n], snapshots[8][n]) for n in snapshots[8])
    # Each update moved connections: the masks changed at 4 and 8 and only there.
    changed = [
        s for s in range(2, 17) if any(not np.array_equal(snapshots[s][n], snapshots[s - 1][n]) for n in snapshots[s])
    ]
    assert changed == [4, 8]


def test_set_is_reproducible_from_its_seed():
    x, y = _data()
    runs = []
    for _ in range(2):
        model = _model("sgd")
        dst = st.DynamicSparseCallback("set", density=0.3, update_every=2, drop_schedule="constant", seed=7)
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[dst])
        runs.append((get_masks(model), dst.updates))
    assert sum(sum(u["moved"].values()) for u in runs[0][1]) > 0
    assert runs[0][1] == runs[1][1]
    assert all(np.array_equal(runs[0][0][n], runs[1][0][n]) for n in runs[0][0])


def test_rigl_grows_where_the_dense_gradient_is_largest():
    # One linear layer, no bias, mean squared error. With x the first three unit vectors (batch of 3) the loss is
    # mean((W[:3] - y)^2) over 3 x 4 entries, so dL/dW[i, j] = 2 (W[i, j] - y[i, j]) / 12 for i < 3, 0 in row 3.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = wrap_model(keras.Model(inputs, keras.layers.Dense(4, use_bias=False, name="w")(inputs)))
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.optimizer.build(model.trainable_variables)
    kernel = np.array(
        [[0.9, 0.0, 0.0, 0.0], [0.0, 0.8, 0.0, 0.0], [0.0, 0.0, 0.05, 0.0], [0.0, 0.0, 0.0, 0.7]], np.float32
    )
    mask = (kernel != 0).astype(np.float32)
    set_masks(model, {"w/kernel": mask})
    model.get_layer("w").kernel.assign(kernel)
    x = np.eye(4, dtype=np.float32)[:3]
    target = np.zeros((3, 4), np.float32)
    target[1, 3], target[2, 0], target[0, 2] = 5.0, -3.0, 0.5  # |gradient| largest at (1, 3), then (2, 0)
    target[2, 2] = 0.05  # no gradient at the weight that will be dropped
    # Momentum at the positions about to grow, to see it reset.
    for slot in _slots(model, "w/kernel"):
        slot.assign(np.full((4, 4), 0.25, np.float32))
    dst = st.DynamicSparseCallback(
        "rigl", density=0.25, update_every=1, drop_fraction=0.5, drop_schedule="constant", gradient_data=(x, target)
    )
    dst.set_model(model)
    dst.started, dst.end_step = True, 10  # masks set by hand above
    update = dst.update(1)["w/kernel"]
    # 4 active, k = 2: the smallest |w| are 0.05 (2, 2) and 0.7 (3, 3); the largest |g| among the inactive-after-drop
    # are at (1, 3) and (2, 0).
    expected = mask.copy()
    expected[2, 2] = expected[3, 3] = 0
    expected[1, 3] = expected[2, 0] = 1
    np.testing.assert_array_equal(get_masks(model)["w/kernel"], expected)
    assert update.moved == 2 and dst.updates[0]["moved"] == {"w/kernel": 2}
    weight = model.get_layer("w").kernel.numpy()
    assert weight[1, 3] == 0.0 and weight[2, 0] == 0.0 and weight[2, 2] == 0.0 and weight[0, 0] == np.float32(0.9)
    slot = _slots(model, "w/kernel")[0].numpy()
    assert slot[1, 3] == 0.0 and slot[2, 0] == 0.0 and slot[0, 0] == 0.25


def test_the_dense_gradient_leaves_the_model_state_as_it_was():
    x, y = _data(32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    hidden = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(8, name="fc")(inputs))
    model = wrap_model(keras.Model(inputs, keras.layers.Dense(4, name="out")(keras.layers.Dropout(0.5)(hidden))))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    set_masks(model, {"fc/kernel": np.eye(12, 8, dtype=np.float32), "out/kernel": np.ones((8, 4), np.float32)})
    before = [np.array(v.numpy()) for v in model.non_trainable_variables + model.metrics_variables]
    dst = st.DynamicSparseCallback("rigl", density=0.5, gradient_data=(x, y))
    dst.set_model(model)
    gradients = dst.dense_gradients(1)
    after = [np.array(v.numpy()) for v in model.non_trainable_variables + model.metrics_variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    # The pruned entries (off the diagonal) have their gradient: the mask counts as all ones.
    assert np.count_nonzero(gradients["fc/kernel"][np.eye(12, 8) == 0]) > 80


def test_a_restored_state_makes_the_same_decisions():
    x, y = _data()
    model = _model("adam")
    dst = st.DynamicSparseCallback("set", density=0.3, update_every=4, drop_schedule="constant", seed=11)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[dst])  # 8 steps, updates at 4 (end step 6)
    state = dst.get_state()
    state = json.loads(json.dumps(state))  # survives a JSON file
    masks, weights = get_masks(model), {n: w.numpy().copy() for n, _, w in masked_weights(model)}
    first = dst.update(12)
    set_masks(model, masks)
    for name, _, weight in masked_weights(model):
        weight.assign(weights[name])
    again = st.DynamicSparseCallback("set", density=0.3, update_every=4, drop_schedule="constant", seed=11)
    again.set_state(state)
    again.set_model(model)
    again.end_step = dst.end_step
    second = again.update(12)
    assert all(np.array_equal(first[n].mask, second[n].mask) for n in first)
    assert again.updates[-1] == dst.updates[-1]
    fresh = st.DynamicSparseCallback(
        "set", density=0.3, update_every=4, drop_schedule="constant", seed=11
    )  # not restored: another draw
    set_masks(model, masks)
    fresh.set_model(model)
    fresh.end_step = dst.end_step
    assert not all(np.array_equal(first[n].mask, fresh.update(12)[n].mask) for n in first)
    with pytest.raises(ValueError, match="density"):
        st.DynamicSparseCallback("set", density=0.5, update_every=4, drop_schedule="constant", seed=11).set_state(state)


def test_erk_start_in_fit():
    x, y = _data()
    model = _model("sgd")
    dst = st.DynamicSparseCallback("set", density=0.2, distribution="erk", update_every=4, seed=0)
    model.fit(x, y, batch_size=64, epochs=4, verbose=0, callbacks=[dst])
    shapes = {"fc1/kernel": (12, 24), "fc2/kernel": (24, 16), "out/kernel": (16, 4)}
    expected = st.erk_densities(shapes, 0.2)
    assert dst.densities == expected
    counts = {n: int(m.sum()) for n, m in get_masks(model).items()}
    # Uniform target ceil(57.6) + ceil(76.8) + ceil(12.8) = 148; eps = 148 / (36 + 40 + 20) gives d_i * n_i =
    # 55.5, 61.67, 30.83 (sum 148): floors 55, 61, 30 and the 2 left to the largest remainders (out, fc2).
    # Rounding each layer up would keep 56 + 62 + 31 = 149, one over the target.
    assert counts == {"fc1/kernel": 55, "fc2/kernel": 62, "out/kernel": 31}


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"method": "snip", "density": 0.1}, "method"),
        ({"method": "set", "density": 0.0}, "density"),
        ({"method": "set", "density": 1.5}, "density"),
        ({"method": "set", "density": 0.1, "distribution": "er"}, "distribution"),
        ({"method": "set", "density": 0.1, "update_every": 0}, "update_every"),
        ({"method": "set", "density": 0.1, "drop_fraction": 1.0}, "drop_fraction"),
        ({"method": "set", "density": 0.1, "drop_fraction": 0.0}, "drop_fraction"),
        ({"method": "set", "density": 0.1, "end_fraction": 0.0}, "end_fraction"),
        ({"method": "set", "density": 0.1, "end_fraction": 1.2}, "end_fraction"),
        ({"method": "set", "density": 0.1, "drop_schedule": "linear"}, "drop_schedule"),
        ({"method": "set", "density": 0.1, "total_steps": 0}, "total_steps"),
        ({"method": "rigl", "density": 0.1}, "gradient_data"),
    ],
)
def test_bad_arguments_name_the_argument(arguments, named):
    with pytest.raises(ValueError, match=named) as error:
        st.DynamicSparseCallback(**arguments)
    assert "\n" not in str(error.value)


def test_update_every_longer_than_the_updating_steps_is_refused():
    x, y = _data()
    model = _model("sgd")
    dst = st.DynamicSparseCallback("set", density=0.5, update_every=10)
    with pytest.raises(ValueError, match="update_every"):
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[dst])  # 8 steps, end step 6
