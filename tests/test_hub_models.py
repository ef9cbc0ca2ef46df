"""keras-hub backbones at toy sizes (no downloaded weights): transformer stacks reuse inner layer
names in every block; every kernel is masked under its unique name, two IMP levels keep exact
zeros, and the wrapped model round-trips through .keras in a fresh process."""

import os
import sys
import warnings

import launcher
import numpy as np
import pytest
from conftest import REPO

from lottery_tf.core import naming
from lottery_tf.core.callbacks import PruneRewindCallback
from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks, get_prunable_weights, mask_names, overall_density, wrap_model
from lottery_tf.core.pruning import PruningSpec

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

keras_hub = pytest.importorskip("keras_hub", reason="the hub extra: pip install 'lottery_tf[hub]'")

RNG = np.random.default_rng(3)


def _bert():
    return keras_hub.models.BertBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=8
    )


def _gpt2():
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=8
    )


def _vit():
    return keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )


def _resnet():
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(16, 16, 3),
    )


def _inputs(name, n):
    if name in ("bert", "gpt2"):
        data = {"token_ids": RNG.integers(0, 100, (n, 8)).astype("int32"), "padding_mask": np.ones((n, 8), "int32")}
        if name == "bert":
            data["segment_ids"] = np.zeros((n, 8), "int32")
        return data
    return RNG.normal(size=(n, 16, 16, 3)).astype("float32")


BUILDERS = {"bert": _bert, "gpt2": _gpt2, "vit": _vit, "resnet": _resnet}
KERAS_CANNOT_RELOAD = {"vit"}


def _first_output(outputs):
    return outputs[sorted(outputs)[-1]] if isinstance(outputs, dict) else outputs


def _classifier(backbone):
    features = _first_output(backbone.output)
    pool = keras.layers.GlobalAveragePooling1D if len(features.shape) == 3 else keras.layers.GlobalAveragePooling2D
    return keras.Model(backbone.input, keras.layers.Dense(2, name="head")(pool(name="pool")(features)))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_hub_backbone_every_kernel_masked_two_levels_and_fresh_process_round_trip(name, tmp_path):
    model = _classifier(BUILDERS[name]())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # named dense weights (checked below) and keras-hub's own config bug
        wrapped = wrap_model(model)
    # Count from the model's own variables: every kernel and embedding table, under its unique name.
    prunable = [n for n, v in naming.variable_names(model).items() if v.name in ("kernel", "embeddings")]
    expected = prunable  # position embeddings included: every table and kernel is a matrix
    assert mask_names(wrapped) == expected
    assert len(set(expected)) == len(expected) and len(expected) >= 6
    data = _inputs(name, 8)
    np.testing.assert_allclose(_first_output(wrapped(data)), _first_output(model(data)), rtol=1e-5, atol=1e-5)

    wrapped.compile(
        optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    labels = RNG.integers(0, 2, 8)
    imp = PruneRewindCallback(PruningSpec("global", 0.5))
    for _ in range(3):  # levels 0, 1 and 2: each fit begins by pruning the level before
        wrapped.fit(data, labels, batch_size=4, epochs=1, verbose=0, callbacks=[imp])
    assert overall_density(wrapped) == pytest.approx(0.25, abs=0.01)  # the level-2 ticket, trained
    masks, weights = get_masks(wrapped), get_prunable_weights(wrapped)
    for key in masks:
        assert np.all(weights[key][masks[key] == 0] == 0.0), key
    assert all(masks[key].mean() < 1 for key in masks if "transformer" in key or "encoder" in key)

    path = str(tmp_path / "ticket.keras")
    wrapped.save(path)
    if name in KERAS_CANNOT_RELOAD:
        # keras_hub 0.32's ViTPatchingAndEmbedding writes get_config keys its constructor refuses: Keras cannot
        # load the file of the plain model either (checked here), so there is nothing for lottery_tf to keep.
        plain = str(tmp_path / "plain.keras")
        _classifier(BUILDERS[name]()).save(plain)
        for file in (plain, path):
            with pytest.raises(Exception, match="Unrecognized keyword arguments passed to ViTPatchingAndEmbedding"):
                keras.models.load_model(file)
        return
    np.savez(tmp_path / "data.npz", **(data if isinstance(data, dict) else {"x": data}))
    expected_out = np.asarray(_first_output(wrapped(data)))
    np.save(tmp_path / "expected.npy", expected_out)
    code = f"""
import warnings; warnings.simplefilter("ignore")
import numpy as np, keras, keras_hub, lottery_tf
m = keras.models.load_model({path!r})
d = dict(np.load({str(tmp_path / "data.npz")!r}))
d = d["x"] if list(d) == ["x"] else d
out = m(d); out = out[sorted(out)[-1]] if isinstance(out, dict) else out
np.testing.assert_allclose(np.asarray(out), np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-5, atol=1e-6)
m = lottery_tf.wrap_model(m)  # the file is the plain model: wrapping it again finds the ticket's zeros
w = lottery_tf.get_prunable_weights(m)
print(len(w), round(sum(np.count_nonzero(v) for v in w.values()) / sum(v.size for v in w.values()), 4))
"""
    result = launcher.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(len(expected)), str(round(overall_density(wrapped), 4))]
