"""The Keras library on Keras's JAX backend: what the guide teaches, with JAX's stateless training step.

Collected only in the JAX pass of tools/test.sh (KERAS_BACKEND=jax; tests/conftest.py leaves this file
out of the TensorFlow pass, where tests/test_masking.py, test_callbacks.py, test_gradual.py,
test_optimizer_rewind.py and test_custom_loops.py cover the same on TensorFlow). Those files run in the JAX
pass too; this one adds what only JAX can get wrong: a compiled step holds the masks and the schedule's
offset it was traced with, and JAX's ``fit`` takes the model's variables out while an epoch runs.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

import lottery_tf
from lottery_tf.core import rewind
from lottery_tf.core.keras_compat import BACKEND, keras
from lottery_tf.core.masking import MaskedLayer, retrace_training

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="run by tools/test.sh's JAX pass (KERAS_BACKEND=jax)")

RNG = np.random.default_rng(5)
X = RNG.normal(size=(32, 6)).astype("float32")
Y = RNG.integers(0, 3, size=32)


def _sequential():
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="fc1"), keras.layers.Dense(3, name="out")]
    )


def _functional_nested():
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="fc")], name="block")
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="fc1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(inner(x)))


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.fc1 = keras.layers.Dense(8, activation="relu", name="fc1")
        self.out = keras.layers.Dense(3, name="out")

    def call(self, x):
        return self.out(self.fc1(x))


def _subclassed():
    model = _Subclassed()
    model(X[:1])
    return model


def _masked_layers():
    return keras.Sequential(
        [keras.Input((6,)), MaskedLayer(keras.layers.Dense(8, name="fc1")), MaskedLayer(keras.layers.Dense(3))]
    )


MODELS = {
    "sequential": (_sequential, ["fc1/kernel", "out/kernel"]),
    "functional_nested": (_functional_nested, ["fc1/kernel", "block/fc/kernel", "out/kernel"]),
    "subclassed": (_subclassed, ["fc1/kernel", "out/kernel"]),
    "masked_layers": (_masked_layers, ["fc1/kernel", "dense/kernel"]),
}
OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.1),
    "momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
}


class ZerosEveryStep(keras.callbacks.Callback):
    """Counts pruned entries that are not exactly 0.0 after each training step."""

    def __init__(self):
        super().__init__()
        self.steps = self.nonzero = 0

    def on_train_batch_end(self, batch, logs=None):
        masks, weights = lottery_tf.get_masks(self.model), lottery_tf.get_prunable_weights(self.model)
        self.steps += 1
        self.nonzero += sum(int(np.count_nonzero(weights[n][masks[n] == 0])) for n in masks)


def _compile(model, optimizer, jit_compile=True):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_after_every_step_with_masks_set_after_the_step_was_traced(
    optimizer, jit_compile
):
    keras.utils.set_random_seed(0)
    model = _compile(lottery_tf.wrap_model(_sequential()), OPTIMIZERS[optimizer](), jit_compile)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)  # traces the step with dense masks
    masks = {n: (RNG.random(m.shape) < 0.5).astype("float32") for n, m in lottery_tf.get_masks(model).items()}
    lottery_tf.set_masks(model, masks)
    before = lottery_tf.get_prunable_weights(model)
    check = ZerosEveryStep()
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[check])
    assert check.steps == 8 and check.nonzero == 0
    after = lottery_tf.get_prunable_weights(model)
    assert all(np.any(after[n][masks[n] == 1] != before[n][masks[n] == 1]) for n in masks)  # the rest trained


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_guide_models_mask_by_unique_names_and_run_imp_with_rewinding_inside_fit(kind):
    build, names = MODELS[kind]
    keras.utils.set_random_seed(1)
    model = build()
    if kind != "masked_layers":
        lottery_tf.wrap_model(model)
    assert lottery_tf.mask_names(model) == names
    _compile(model, keras.optimizers.Adam(0.01))
    at_k = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if rewind.global_step(self.model.optimizer) == 2 and not at_k:
                at_k.update(lottery_tf.get_prunable_weights(self.model))

    imp = lottery_tf.PruneRewindCallback(lottery_tf.PruningSpec("layerwise", 0.5), rewind_step=2)
    check = ZerosEveryStep()
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[Record(), imp, check])
    imp.prune_and_rewind()
    masks, weights = lottery_tf.get_masks(model), lottery_tf.get_prunable_weights(model)
    for name in names:  # the rewind point, bit for bit, under the new masks
        np.testing.assert_array_equal(weights[name], at_k[name] * masks[name])
    for _ in range(2):
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[imp, check])
    assert lottery_tf.overall_density(model) == pytest.approx(0.25, abs=0.02)
    assert check.steps == 12 and check.nonzero == 0


@pytest.mark.parametrize("mode", ["fresh", "reset", "restore"])
def test_the_first_step_after_a_rewind_to_k_uses_the_learning_rate_of_step_k(mode):
    """One linear layer, mean squared error: the gradient is numpy arithmetic, so the step's rate is exact."""
    k, x, y = 3, X[:8], RNG.normal(size=(8, 3)).astype("float32")
    keras.utils.set_random_seed(2)
    model = lottery_tf.wrap_model(keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="fc")]))
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.7)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    imp = lottery_tf.PruneRewindCallback(lottery_tf.PruningSpec("layerwise", 0.5), rewind_step=k, rewind_optimizer=mode)
    model.fit(x, y, batch_size=8, epochs=6, verbose=0, shuffle=False, callbacks=[imp])
    imp.prune_and_rewind()
    kernel, bias = (v.numpy() for v in model.trainable_variables)
    mask = lottery_tf.get_masks(model)["fc/kernel"]
    gradient = 2.0 / y.size * x.T @ (x @ kernel + bias - y)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[imp])  # the traced step
    step = (kernel - lottery_tf.get_prunable_weights(model)["fc/kernel"])[mask == 1] / gradient[mask == 1]
    np.testing.assert_allclose(step, 0.1 * 0.7**k, rtol=1e-3)  # lr(k), not lr(0) = 0.1 nor lr(6)
    assert rewind.global_step(model.optimizer) == k + 1


def test_learning_rate_rewinding_prunes_the_trained_weights_and_keeps_them():
    keras.utils.set_random_seed(3)
    model = _compile(lottery_tf.wrap_model(_sequential()), keras.optimizers.SGD(0.1, momentum=0.9))
    imp = lottery_tf.PruneRewindCallback(lottery_tf.PruningSpec("global", 0.5), rewind_weights=False)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[imp])
    trained = lottery_tf.get_prunable_weights(model)
    imp.prune_and_rewind()
    masks, weights = lottery_tf.get_masks(model), lottery_tf.get_prunable_weights(model)
    for name in masks:
        np.testing.assert_array_equal(weights[name], trained[name] * masks[name])
    assert rewind.global_step(model.optimizer) == 0 and imp.rewind_point is None


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_exact_zeros_and_float32_masks(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(4)
        model = _compile(lottery_tf.wrap_model(_sequential()), keras.optimizers.Adam(0.01))
        imp = lottery_tf.PruneRewindCallback(lottery_tf.PruningSpec("layerwise", 0.5), rewind_step=1)
        check = ZerosEveryStep()
        for _ in range(2):
            model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[imp, check])
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert lottery_tf.overall_density(model) == pytest.approx(0.5, abs=0.02)
    assert check.steps == 8 and check.nonzero == 0
    assert {m.dtype for m in lottery_tf.get_masks(model).values()} == {np.dtype("float32")}


def test_a_mask_assigned_directly_is_seen_by_the_next_fit_with_a_callback_or_after_retrace_training():
    keras.utils.set_random_seed(6)
    model = _compile(lottery_tf.wrap_model(_sequential()), keras.optimizers.SGD(0.1))
    gmp = lottery_tf.GradualPruningCallback(0.5, begin_step=100, end_step=101, frequency=1)  # never prunes here
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[gmp])
    (name, mask, weight), *_ = lottery_tf.core.masking.masked_weights(model)
    half = (RNG.random(mask.shape) < 0.5).astype("float32")
    for fit_callbacks in ([gmp], []):
        mask.assign(half)
        weight.assign(weight.numpy() * half)
        if not fit_callbacks:
            retrace_training(model)  # what the docs tell users who assign masks themselves
        check = ZerosEveryStep()
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[*fit_callbacks, check])
        assert check.nonzero == 0, name
        half = half * (RNG.random(mask.shape) < 0.5)


@pytest.mark.slow
def test_keras_hub_backbone_from_config_two_levels_with_exact_zeros():
    keras_hub = pytest.importorskip("keras_hub", reason="the hub extra: pip install 'lottery_tf[hub]'")
    keras.utils.set_random_seed(7)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16, max_sequence_length=6
    )
    pooled = keras.layers.GlobalAveragePooling1D()(backbone.output["sequence_output"])
    model = keras.Model(backbone.input, keras.layers.Dense(2, name="head")(pooled))
    lottery_tf.wrap_model(model)
    assert len(lottery_tf.mask_names(model)) >= 6
    data = {
        "token_ids": RNG.integers(0, 50, (8, 6)).astype("int32"),
        "segment_ids": np.zeros((8, 6), "int32"),
        "padding_mask": np.ones((8, 6), "int32"),
    }
    _compile(model, keras.optimizers.Adam(0.01))
    imp, check = lottery_tf.PruneRewindCallback(lottery_tf.PruningSpec("global", 0.5)), ZerosEveryStep()
    for _ in range(2):
        model.fit(data, RNG.integers(0, 2, 8), batch_size=4, epochs=1, verbose=0, callbacks=[imp, check])
    assert lottery_tf.overall_density(model) == pytest.approx(0.5, abs=0.01)
    assert check.steps == 4 and check.nonzero == 0


def test_keras_file_loads_in_a_fresh_jax_process_and_strip_masks_gives_the_plain_model(tmp_path):
    keras.utils.set_random_seed(8)
    model = _compile(lottery_tf.wrap_model(_functional_nested()), keras.optimizers.Adam(0.01))
    imp = lottery_tf.PruneRewindCallback(lottery_tf.PruningSpec("layerwise", 0.5))
    for _ in range(2):
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[imp])
    plain = lottery_tf.strip_masks(model)
    with pytest.raises(ValueError, match="has no masks"):
        lottery_tf.get_masks(plain)
    np.testing.assert_allclose(np.asarray(plain(X)), np.asarray(model(X)), rtol=1e-6, atol=1e-6)
    path = tmp_path / "ticket.keras"
    model.save(path)
    np.save(tmp_path / "expected.npy", np.asarray(model(X)))
    np.save(tmp_path / "x.npy", X)
    code = f"""
import numpy as np, keras, lottery_tf
assert keras.backend.backend() == "jax"
m = keras.models.load_model({str(path)!r})
np.testing.assert_allclose(np.asarray(m(np.load({str(tmp_path / "x.npy")!r}))), np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-6, atol=1e-6)
w = lottery_tf.get_prunable_weights(lottery_tf.wrap_model(m))  # the file is the plain model, with its zeros
print(round(sum(np.count_nonzero(v) for v in w.values()) / sum(v.size for v in w.values()), 4))
"""
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) == pytest.approx(lottery_tf.overall_density(model), abs=1e-4)


# The Keras guide's examples on JAX: each page's blocks as tests/test_docs.py runs them, outputs compared.
# Left out: the Keras guide's run-folder block, which runs the command line (the engine is TensorFlow's).
GUIDE_PAGES = {"docs/keras.md": ("lottery_tf.main",), "docs/guides/imp-in-fit.md": ()}


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(GUIDE_PAGES))
def test_the_keras_guides_examples_print_what_the_page_shows_on_jax(page, tmp_path):
    from tools import docs_outputs

    blocks = docs_outputs.parse(open(os.path.join(REPO, page)).read())
    kept = [b for b in blocks if not any(word in b.code for word in GUIDE_PAGES[page])]
    assert len(blocks) - len(kept) == len(GUIDE_PAGES[page])  # exactly the blocks named above are left out
    text = "".join(
        f'```python\n{b.code}\n```\n\n```text title="Output"\n{b.output}\n```\n\n' if b.output is not None else ""
        for b in kept
    )
    assert len(docs_outputs.parse(text)) == len(kept)  # every kept block shows its output
    copy = tmp_path / "page.md"
    copy.write_text(text)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, "KERAS_BACKEND": "jax"}
    printed = docs_outputs.run_page(str(copy), str(tmp_path / "blocks"), env=env)
    problems = [
        f"block {n}: {problem}"
        for n, (block, out) in enumerate(zip(kept, printed), start=1)
        if (problem := docs_outputs.output_problem(block.output, out))
    ]
    assert not problems, "\n".join(problems)
