"""A `run_layer_test` equivalent for MaskedLayer (as keras.testing does for layers)."""

import os
import tempfile

import numpy as np

from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import MaskedLayer, prunable_variables


def run_masked_layer_test(inner, input_data, expected_trainable, expected_masks):
    """Builds, counts weights, round-trips config and .keras, trains one step.

    Checks: weight counts (the masks are extra non-trainable weights), the
    config round trip, a functional model around the layer saved and loaded,
    and that after pruning half of each mask and one optimizer step the pruned
    entries are exactly zero.
    """
    layer = MaskedLayer(inner)
    output = layer(input_data)
    assert len(layer.trainable_weights) == expected_trainable
    assert len(layer.non_trainable_weights) == expected_masks
    assert sorted(layer.masks) == sorted(prunable_variables(inner))

    clone = MaskedLayer.from_config(layer.get_config())
    assert type(clone.layer) is type(inner)
    assert clone.get_config() == layer.get_config()

    inputs = keras.Input(input_data.shape[1:], dtype=input_data.dtype)
    model = keras.Model(inputs, MaskedLayer(inner.__class__.from_config(inner.get_config()))(inputs))
    masked = model.layers[-1]
    for attribute, mask in masked.masks.items():
        value = np.ones(mask.shape, "float32")
        value.reshape(-1)[::2] = 0.0
        mask.assign(value)
        weight = masked.prunable_weights()[attribute]
        weight.assign(weight * value)
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    target = np.ones_like(np.asarray(model(input_data)))
    model.fit(input_data, target, epochs=2, batch_size=len(input_data), verbose=0)
    for attribute, mask in masked.masks.items():
        weight = masked.prunable_weights()[attribute].numpy()
        assert np.all(weight[mask.numpy() == 0] == 0.0), attribute
        assert np.any(weight[mask.numpy() == 1] != 0.0), attribute

    # The .keras round trip: same outputs, same masks, same zeros.
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(input_data)), np.asarray(model(input_data)), rtol=1e-6, atol=1e-6)
    loaded_masked = loaded.layers[-1]
    assert isinstance(loaded_masked, MaskedLayer)
    for attribute, mask in masked.masks.items():
        np.testing.assert_array_equal(loaded_masked.masks[attribute].numpy(), mask.numpy())
        np.testing.assert_array_equal(
            loaded_masked.prunable_weights()[attribute].numpy(), masked.prunable_weights()[attribute].numpy()
        )
    return output, model
