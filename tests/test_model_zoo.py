"""The model zoo (tools/model_zoo.py): 31 kinds of model a user brings, each masked in place and taken
through wrap -> masks counted by identity -> two levels of fit with k = 2 -> exact zeros -> .keras in a
fresh process -> strip -> bit-exact rewind. The same run writes results/model_zoo.md."""

import numpy as np
import pytest

pytest.importorskip("keras_hub", reason="the hub extra: pip install 'lottery_tf[hub]' (tools/setup.sh installs it)")

from lottery_tf.core.keras_compat import keras  # noqa: E402
from lottery_tf.core.masking import get_masks, set_masks, wrap_model  # noqa: E402
from tools import model_zoo  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick


def test_every_kind_passes_every_step():
    rows = model_zoo.run(list(model_zoo.KINDS))
    failed = {row["kind"]: row for row in rows if not model_zoo.passed(row)}
    assert not failed, model_zoo.table(failed.values())
    by_kind = {row["kind"]: row for row in rows}
    # The rows that pass only because Keras itself cannot save them still refuse loudly, never silently.
    assert by_kind["broken_get_config"]["strip"].startswith("n/a: Keras cannot copy")
    assert sum(row[".keras"] == "ok" for row in rows) >= 29


def test_masks_move_between_two_builds_of_one_builder_in_one_process():
    """Unnamed sub-layers made in build() are numbered by process-wide counters; mask names are not."""
    first, x, _ = model_zoo.unnamed_in_build()
    second, _, _ = model_zoo.unnamed_in_build()
    assert [layer.name for layer in first.layers] != [layer.name for layer in second.layers]
    masks = get_masks(wrap_model(first))
    assert list(masks) == ["lazy/dense/kernel", "lazy/dense_1/kernel", "dense/kernel"]
    masks["lazy/dense/kernel"][:4] = 0
    set_masks(wrap_model(second), masks)
    np.testing.assert_array_equal(get_masks(second)["lazy/dense/kernel"], masks["lazy/dense/kernel"])
    assert np.all(second.layers[1].proj.kernel.numpy()[:4] == 0.0)


def test_a_weight_reached_by_two_paths_has_one_mask_counted_once():
    model, _, _ = model_zoo.shared_layer_twice()
    wrap_model(model)
    masks = get_masks(model)
    assert list(masks) == ["inner/shared/kernel", "head/kernel"]
    assert sum(m.size for m in masks.values()) == 8 * 8 + 8 * 3


def test_a_layer_never_called_cannot_be_masked_and_the_message_says_why():
    class Lazy(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.used = keras.layers.Dense(4, name="used")
            self.spare = keras.layers.Dense(4, name="spare")  # never called: no weights yet

        def call(self, x):
            return self.used(x)

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Lazy(name="lazy")(inputs))
    with pytest.raises(ValueError, match=r"Layer 'lazy/spare' \(Dense\) has not been built \(it was never called\)"):
        wrap_model(model)
    assert [n for n in get_masks(wrap_model(model, exclude=["lazy/spare"]))] == ["lazy/used/kernel"]
