"""What a user's own code gets beside IMP: the controls, sparsity in TensorBoard, export from Python, and the
module paths of earlier releases (kept with a warning)."""

import json
import os
import sys

import launcher
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

import lottery_tf
from lottery_tf.core.keras_compat import keras
from lottery_tf.core.pruning import satisfies_n_m

RNG = np.random.default_rng(21)
X = RNG.normal(size=(64, 8)).astype("float32")  # 8 inputs: issue 27 (partial LiteRT blocks) aside
Y = RNG.integers(0, 3, 64)


def build():
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="fc"), keras.layers.Dense(3, name="out")])


def _ticket(seed=0):
    keras.utils.set_random_seed(seed)
    model = lottery_tf.wrap_model(build())
    masks = lottery_tf.get_masks(model)
    masks["fc/kernel"][:, :4] = 0
    masks["out/kernel"][::2] = 0
    lottery_tf.set_masks(model, masks)
    return model


def test_reinit_control_keeps_the_masks_on_a_new_initialization():
    ticket = _ticket(seed=0)
    masks = lottery_tf.get_masks(ticket)
    control = lottery_tf.reinit_control(build, masks, seed=1)
    for name, mask in lottery_tf.get_masks(control).items():
        np.testing.assert_array_equal(mask, masks[name])
    new, old = lottery_tf.get_prunable_weights(control), lottery_tf.get_prunable_weights(ticket)
    assert np.all(new["fc/kernel"][:, :4] == 0.0)
    assert not np.array_equal(new["fc/kernel"][:, 4:], old["fc/kernel"][:, 4:])  # another initialization
    # The same distribution: the builder's own initializer (glorot uniform: |w| <= sqrt(6 / (8 + 8))).
    assert np.abs(new["fc/kernel"]).max() <= np.sqrt(6 / 16)
    with pytest.raises(ValueError, match=r"^seed must be an integer >= 0; got -1\.$"):
        lottery_tf.reinit_control(build, masks, seed=-1)


def test_random_prune_control_keeps_each_weights_count_or_the_total_and_the_structure():
    masks = lottery_tf.get_masks(_ticket())
    layerwise = lottery_tf.random_prune_control(masks, seed=3)
    for name, mask in masks.items():
        assert layerwise[name].sum() == mask.sum() and layerwise[name].shape == mask.shape
    assert not all(np.array_equal(layerwise[n], masks[n]) for n in masks)
    pooled = lottery_tf.random_prune_control(masks, seed=3, scope="global")
    assert sum(m.sum() for m in pooled.values()) == sum(m.sum() for m in masks.values())
    two_four = lottery_tf.random_prune_control({"k": np.ones((8, 4))}, seed=0, n_m=(2, 4))
    assert two_four["k"].sum() == 32  # a dense mask stays dense
    half = np.tile(np.array([[1.0], [1.0], [0.0], [0.0]]), (2, 4))
    random_half = lottery_tf.random_prune_control({"k": half}, seed=0, n_m=(2, 4))
    assert satisfies_n_m(random_half["k"], (2, 4)) and random_half["k"].sum() == half.sum()
    with pytest.raises(ValueError, match=r"^scope must be one of layerwise, global; got 'all'\.$"):
        lottery_tf.random_prune_control(masks, seed=0, scope="all")


@pytest.mark.parametrize("summaries_first", [False, True])
def test_sparsity_summaries_write_each_weights_sparsity_to_tensorboard(tmp_path, summaries_first):
    model = lottery_tf.wrap_model(build())
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    imp = lottery_tf.PruneRewindCallback(lottery_tf.PruningSpec("layerwise", 0.5))
    summaries = lottery_tf.SparsitySummaries(str(tmp_path), update_freq=4)
    for _ in range(2):
        callbacks = [summaries, imp] if summaries_first else [imp, summaries]
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=callbacks)
    scalars = {}
    for path in tf.io.gfile.glob(str(tmp_path / "sparsity" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    assert set(scalars) == {"sparsity/fc/kernel", "sparsity/out/kernel", "sparsity/overall"}
    # Level 0 is dense; level 1 (from the second fit on) prunes half of each weight: 32 + 12 of 64 + 24.
    assert max(v for _, v in scalars["sparsity/overall"]) == pytest.approx(0.5)
    assert min(v for _, v in scalars["sparsity/overall"]) == 0.0
    assert scalars["sparsity/fc/kernel"][-1] == (4, pytest.approx(0.5))  # the last write: step 4 of level 1
    # Level 1's first write (step 0) shows its own sparsity, whichever callback comes first.
    assert [v for step, v in scalars["sparsity/overall"] if step == 0] == [0.0, pytest.approx(0.5)]
    with pytest.raises(ValueError, match="update_freq must be 'epoch' or an integer >= 1; got 0"):
        lottery_tf.SparsitySummaries(str(tmp_path), update_freq=0)


@pytest.mark.slow
def test_export_model_writes_checked_artifacts_from_python(tmp_path):
    pytest.importorskip("ai_edge_litert", reason="the litert extra (tools/setup.sh installs it)")
    model = _ticket()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, epochs=2, verbose=0)
    out = str(tmp_path / "export")
    record = lottery_tf.export_model(model, out, X, Y, quantize=("none", "dynamic"), latency_runs=2)
    assert sorted(os.listdir(out)) == ["export.json", "ticket.keras", "ticket.tflite", "ticket_dynamic.tflite"]
    assert json.load(open(os.path.join(out, "export.json")))["artifacts"].keys() == record["artifacts"].keys()
    keras_accuracy = record["artifacts"]["keras"]["accuracy"]
    litert = record["artifacts"]["ticket.tflite"]
    assert litert["without_default_delegates"]["accuracy"] == keras_accuracy
    assert litert["without_default_delegates"]["max_output_difference"] < 1e-4
    # Read back from the file: every masked weight is found, with the ticket's count of kept weights.
    assert {name: w["kept"] for name, w in litert["weights"].items()} == {"fc/kernel": 32, "out/kernel": 12}
    assert record["density"] == pytest.approx(44 / 88)
    plain = keras.models.load_model(os.path.join(out, "ticket.keras"))
    assert np.count_nonzero(plain.get_layer("fc").kernel.numpy()) == 32
    # Bad input: one line naming the argument, and nothing written.
    for kwargs, message in [
        ({"out": out}, r"^out: .* exists; pass overwrite=True to replace it$"),
        ({"out": str(tmp_path / "b"), "quantize": ("int8",)}, r"^x_train: quantize='int8' calibrates"),
        ({"out": str(tmp_path / "b"), "formats": ("onnx",)}, r"^formats: expected some of keras, litert"),
        ({"out": str(tmp_path / "b"), "x_test": X[:3]}, r"^x_test, y_test: expected examples and one"),
        # Labels that are not the model's classes scored 0.0 without a word; examples of another width gave
        # Keras's 9-line error.
        ({"out": str(tmp_path / "b"), "y_test": np.full(64, 7)}, r"^y_test: labels must be classes 0\.\.2 of"),
        ({"out": str(tmp_path / "b"), "y_test": np.full(64, 0.5)}, r"^y_test: expected integer class labels"),
        ({"out": str(tmp_path / "b"), "x_test": X[:, :4]}, r"^x_test: the model cannot take examples of shape"),
    ]:
        arguments = {"model": model, "x_test": X, "y_test": Y, "latency_runs": 1, **kwargs}
        with pytest.raises(ValueError, match=message) as caught:
            lottery_tf.export_model(**arguments)
        assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["export"]
    again = lottery_tf.export_model(model, out, X, Y, formats=("keras",), latency_runs=1, overwrite=True)
    assert sorted(os.listdir(out)) == ["export.json", "ticket.keras"] and "ticket.tflite" not in again["artifacts"]


def test_module_paths_of_earlier_releases_still_import_with_a_warning():
    code = (
        "import warnings; warnings.simplefilter('error', FutureWarning)\n"
        "import importlib\n"
        "for name in ('pruning', 'masking', 'gradual', 'saliency'):\n"
        "    try:\n"
        "        importlib.import_module('lottery_tf.' + name)\n"
        "        print(name, 'no warning')\n"
        "    except FutureWarning as warning:\n"
        "        print(name, 'warns:', 'lottery_tf.core.' + name in str(warning))\n"
        "warnings.simplefilter('ignore')\n"
        "import lottery_tf.core.pruning as moved\n"
        "from lottery_tf.pruning import PruningSpec\n"
        "print(PruningSpec is moved.PruningSpec)\n"
    )
    out = launcher.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split("\n")[:5] == [
        "pruning warns: True",
        "masking warns: True",
        "gradual warns: True",
        "saliency warns: True",
        "True",
    ]


class MaskedNet(keras.Model):
    """A subclassed model written with lottery_tf.MaskedLayer, as earlier releases taught."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc = lottery_tf.MaskedLayer(keras.layers.Dense(8, name="fc"))
        self.out = lottery_tf.MaskedLayer(keras.layers.Dense(3, name="out"))

    def call(self, x):
        return self.out(keras.ops.relu(self.fc(x)))


@pytest.mark.slow
def test_a_subclassed_ticket_built_from_masked_layers_is_refused_by_strip_and_exported_with_its_zeros(tmp_path):
    pytest.importorskip("ai_edge_litert", reason="the litert extra (tools/setup.sh installs it)")
    model = MaskedNet()
    model(X[:1])
    masks = lottery_tf.get_masks(model)
    masks["fc/kernel"][:4] = 0
    lottery_tf.set_masks(model, masks)
    # The old message told the user to build the model from MaskedLayer, which it already was.
    with pytest.raises(ValueError, match=r"creates lottery_tf.MaskedLayer in its own code, so any copy"):
        lottery_tf.strip_masks(model)
    record = lottery_tf.export_model(model, str(tmp_path / "e"), X, Y, latency_runs=1)
    assert "MaskedLayer" in record["masks_folded"]
    litert = record["artifacts"]["ticket.tflite"]
    assert litert["without_default_delegates"]["max_output_difference"] < 1e-4
    assert litert["weights"]["fc/kernel"]["nonzeros"] == 32 and litert["weights"]["fc/kernel"]["kept"] == 32
