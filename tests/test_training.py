"""Pruned weights stay exactly 0.0 under every optimizer and under MirroredStrategy."""

import numpy as np
import pytest
import tensorflow as tf

from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks, get_prunable_weights, mask_of, set_masks, wrap_model

RNG = np.random.default_rng(1)
X = RNG.normal(size=(96, 10)).astype("float32")
Y = RNG.integers(0, 3, size=96)


def _masked_model():
    keras.utils.set_random_seed(0)
    model = wrap_model(
        keras.Sequential(
            [
                keras.Input((10,)),
                keras.layers.Dense(16, activation="relu", name="fc1"),
                keras.layers.Dense(3, name="out"),
            ]
        )
    )
    masks = get_masks(model)
    for name in masks:
        masks[name] = (RNG.random(masks[name].shape) > 0.5).astype("float32")
    set_masks(model, masks)
    return model, masks


def _check(model, masks, before):
    after = get_prunable_weights(model)
    for name, mask in masks.items():
        assert np.all(after[name][mask == 0] == 0.0), name
        # Survivors did train.
        assert not np.allclose(after[name][mask == 1], before[name][mask == 1]), name


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        lambda: keras.optimizers.Adam(0.01),
        lambda: keras.optimizers.AdamW(0.01, weight_decay=0.5),
        lambda: keras.optimizers.RMSprop(0.01),
    ],
    ids=["sgd_momentum", "adam", "adamw", "rmsprop"],
)
def test_pruned_weights_exactly_zero_after_every_step(optimizer):
    model, masks = _masked_model()
    before = get_prunable_weights(model)
    model.compile(optimizer=optimizer(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class CheckEveryStep(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            weights = get_prunable_weights(self.model)
            for name, mask in masks.items():
                assert np.all(weights[name][mask == 0] == 0.0)
            CheckEveryStep.steps += 1

    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[CheckEveryStep()])
    assert CheckEveryStep.steps == 12
    _check(model, masks, before)


def test_mirrored_strategy_two_cpus_keeps_zeros_on_every_replica():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model, masks = _masked_model()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    before = get_prunable_weights(model)
    model.fit(X, Y, batch_size=32, epochs=3, verbose=0)
    _check(model, masks, before)
    for layer in model.layers:
        kernel = layer._kernel
        replicas = kernel.value.values  # one component per device
        assert len(replicas) == 2
        assert len(mask_of(kernel).value.values) == 2  # the mask attached in place is mirrored like its weight
        mask = masks[f"{layer.name}/kernel"]
        for component in replicas:
            assert np.all(component.numpy()[mask == 0] == 0.0)
        np.testing.assert_array_equal(replicas[0].numpy(), replicas[1].numpy())


def _imp_masks(strategy):
    from lottery_tf.core.callbacks import PruneRewindCallback
    from lottery_tf.core.pruning import PruningSpec

    with strategy.scope():
        keras.utils.set_random_seed(3)
        model = wrap_model(
            keras.Sequential(
                [
                    keras.Input((10,)),
                    keras.layers.Dense(16, activation="relu", name="fc1"),
                    keras.layers.Dense(3, name="out"),
                ]
            )
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
    imp = PruneRewindCallback(PruningSpec("global", 0.3))
    for _ in range(2):
        model.fit(X, Y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[imp])
    imp.prune_and_rewind()  # level 2 begins: its masks and rewound weights
    return get_masks(model), get_prunable_weights(model)


def test_imp_under_mirrored_matches_default_strategy():
    masks_default, weights_default = _imp_masks(tf.distribute.get_strategy())
    masks_mirrored, weights_mirrored = _imp_masks(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    for name in masks_default:
        np.testing.assert_array_equal(masks_mirrored[name], masks_default[name])
        np.testing.assert_allclose(weights_mirrored[name], weights_default[name], atol=1e-6)
    assert sum(m.sum() for m in masks_default.values()) == 101  # 208 -> 145 -> 101
