"""The same numbers on TensorFlow and JAX: pruning-at-initialization scores, the instability analysis, LiteRT.

Keras's backend is chosen once per process, so this file is also the script: ``python
tests/test_backend_maths.py FOLDER`` (run with ``KERAS_BACKEND`` set) reads the literal weights, masks
and data the test wrote to ``FOLDER/inputs.npz``, computes SNIP, GraSP and SynFlow, the error and
loss along the linear path between two weight states (BatchNorm re-estimated) and the distances, and
writes them to ``FOLDER/<backend>.npz``. The JAX run also trains a pruned model with ``fit``, converts
it to LiteRT (through a TensorFlow process) and runs the ``.tflite`` file with the LiteRT interpreter.

Tolerances: both backends compute in float32 (SynFlow in float64), with different kernels and
summation orders, so gradients differ by float32 rounding: ~1e-7 relative per operation, a few
times that after a forward and a backward pass. SNIP and GraSP are compared with rtol 1e-5 plus an
absolute 1e-5 of the largest score (an entry whose gradient is a sum that cancels to near zero has
a larger relative error but an absolute one of the same size). SynFlow runs in float64, but Keras
on JAX computes BatchNormalization in float32 whatever its dtype, so its scores agree with rtol
1e-5 (the literal Dense-only case is float64 on both: rtol 1e-12). Errors along the path are counts of examples, so they must be equal; the losses are float32
sums (rtol 1e-5).
"""

import json
import os
import sys

import numpy as np
import pytest

# The literal linear model of tests/test_saliency.py: a 2x3 and a 3x2 bias-free Dense layer.
X_LITERAL = np.array([[1.0, 2.0], [-1.0, 1.0]], np.float32)
Y_LITERAL = np.array([0, 1])
W1 = np.array([[0.5, -1.0, 0.25], [0.375, 0.75, -0.5]])
W2 = np.array([[1.0, -0.5], [0.25, 0.125], [-0.75, 0.625]])
SHAPE, CLASSES, EXAMPLES = (6, 6, 2), 4, 40


def _cnn(keras):
    zeros = {"kernel_initializer": "zeros"}  # every value is assigned from the file (no random initializer to compile)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(3, 3, name="conv", **zeros)(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu", name="fc", **zeros)(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, name="out", **zeros)(x))


def _linear(keras):
    inputs = keras.Input((2,))
    x = keras.layers.Dense(3, use_bias=False, name="d0", kernel_initializer="zeros")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, use_bias=False, name="d1", kernel_initializer="zeros")(x))


def _litert_check(keras, inputs, out):
    """Trains a pruned copy under ``fit``, converts it to LiteRT and compares the interpreter's outputs."""
    import lottery_tf
    from lottery_tf.core import litert

    model = lottery_tf.wrap_model(_cnn(keras))
    for variable, value in zip(_cnn_variables(model), _weights(inputs, "a")):
        variable.assign(value)
    lottery_tf.set_masks(model, {name: inputs[f"mask/{name}"] for name in lottery_tf.mask_names(model)})
    start = lottery_tf.get_prunable_weights(model)["fc/kernel"]
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    model.fit(inputs["x"], inputs["y"], batch_size=8, epochs=2, verbose=0, shuffle=False)
    plain = lottery_tf.strip_masks(model)
    flatbuffer = litert.convert(plain)
    out["litert/keras"] = np.asarray(plain.predict(inputs["x"], verbose=0))
    out["litert/tflite"] = litert.Runner(flatbuffer, default_delegates=False).predict(inputs["x"])
    weights, masks = lottery_tf.get_prunable_weights(model), lottery_tf.get_masks(model)
    checked = litert.compare_weights(litert.decode(flatbuffer), weights, masks)
    out["litert/checks"] = np.array(json.dumps(checked))
    out["litert/pruned_nonzero_in_keras"] = sum(int(np.count_nonzero(weights[n][masks[n] == 0])) for n in masks)
    out["litert/trained_away_from_start"] = float(np.abs(weights["fc/kernel"] - start).max())


def _cnn_variables(model):
    from lottery_tf.core import rewind

    return list(rewind.state_variables(model).values())


def _weights(inputs, which):
    return [inputs[f"{which}#{i}"] for i in range(int(inputs["count"]))]


def compute(folder: str) -> None:
    """The script: every number of one backend, from ``folder/inputs.npz`` to ``folder/<backend>.npz``."""
    from lottery_tf.core import rewind, saliency
    from lottery_tf.core.analysis import compare_weights
    from lottery_tf.core.analysis.evaluation import ModelEvaluator, linear_path
    from lottery_tf.core.gradients import float64
    from lottery_tf.core.keras_compat import BACKEND, keras
    from lottery_tf.core.masking import get_masks, get_prunable_weights, set_masks, wrap_model

    inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
    out = {}

    linear = wrap_model(_linear(keras))
    linear.get_layer("d0").kernel.assign(W1.astype(np.float32))
    linear.get_layer("d1").kernel.assign(W2.astype(np.float32))
    for name, value in saliency.snip_scores(linear, [(X_LITERAL, Y_LITERAL)]).items():
        out[f"literal/snip/{name}"] = value
    for name, value in saliency.grasp_scores(linear, [(X_LITERAL, Y_LITERAL)]).items():
        out[f"literal/grasp/{name}"] = value
    copy = saliency.float64_copy(linear)
    with float64():
        for variable in copy.variables:
            variable.assign(np.abs(variable.numpy()))
        out["literal/synflow_dtypes"] = np.array([str(np.asarray(v.numpy()).dtype) for v in copy.weights])
    for name, value in saliency.synflow_scores(copy, (2,)).items():
        out[f"literal/synflow/{name}"] = value

    model = wrap_model(_cnn(keras))
    variables = _cnn_variables(model)
    for variable, value in zip(variables, _weights(inputs, "a")):
        variable.assign(value)
    masks = {name: inputs[f"mask/{name}"] for name in get_masks(model)}
    set_masks(model, masks)
    x, y = inputs["x"], inputs["y"]
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]  # two batches: the mean over all 40 examples
    for method in ("snip", "grasp"):
        for name, value in saliency.scores(method, model, batches).items():
            out[f"{method}/{name}"] = value
    for name, value in saliency.synflow_masks(model, SHAPE, 0.3, rounds=3).items():
        out[f"synflow_masks/{name}"] = value
    copy = saliency.float64_copy(model)
    with float64():
        for variable in copy.variables:
            variable.assign(np.abs(variable.numpy()))
    for name, value in saliency.synflow_scores(copy, SHAPE).items():
        out[f"synflow/{name}"] = value

    state_a = rewind.capture(model)
    weights_a = get_prunable_weights(model)
    for variable, value in zip(variables, _weights(inputs, "b")):
        variable.assign(value)
    set_masks(model, masks)
    state_b, weights_b = rewind.capture(model), get_prunable_weights(model)
    evaluator = ModelEvaluator(model, {"test": (x, y)}, batchnorm_batches=[x[:20], x[20:]])
    path = linear_path(evaluator, state_a, state_b, points=5)
    out["path/error"], out["path/loss"] = np.array(path["test"]["error"]), np.array(path["test"]["loss"])
    out["path/instability"], out["path/barrier"] = path["test"]["instability"], path["test"]["barrier"]
    out["path/bn_moving_mean"] = np.asarray(model.get_layer("bn").moving_mean.numpy())  # re-estimated at α = 1
    distances = compare_weights(weights_a, weights_b, masks)
    for key in ("l2_distance", "normalized_l2_distance", "angle_degrees"):
        out[f"distance/{key}"] = distances[key]
    if BACKEND == "jax":
        _litert_check(keras, inputs, out)
    np.savez(os.path.join(folder, f"{BACKEND}.npz"), **out)


if __name__ == "__main__":
    compute(sys.argv[1])


# --- the tests (pytest imports this file; the script part above runs in the subprocesses) -----------------

BACKENDS = ("tensorflow", "jax")


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _write_inputs(folder) -> None:
    from lottery_tf.core.keras_compat import keras
    from lottery_tf.core.masking import get_masks, wrap_model

    rng = np.random.default_rng(31)
    model = wrap_model(_cnn(keras))
    inputs = {"x": rng.normal(size=(EXAMPLES, *SHAPE)).astype(np.float32), "y": rng.integers(0, CLASSES, EXAMPLES)}
    variables = _cnn_variables(model)
    inputs["count"] = np.array(len(variables))
    for i, variable in enumerate(variables):
        shape = tuple(variable.shape)
        if variable.path.endswith("moving_variance"):
            a = rng.uniform(0.5, 1.5, shape)
        elif variable.path.endswith("gamma"):
            a = rng.uniform(0.8, 1.2, shape)
        else:
            a = rng.normal(0.0, 0.5, shape)
        b = a + rng.normal(0.0, 0.3, shape) if not variable.path.endswith("moving_variance") else a * 1.2
        inputs[f"a#{i}"], inputs[f"b#{i}"] = a.astype(np.float32), b.astype(np.float32)
    for name, mask in get_masks(model).items():
        inputs[f"mask/{name}"] = (rng.random(mask.shape) < 0.7).astype(np.float32)
    np.savez(os.path.join(folder, "inputs.npz"), **inputs)


def _results(tmp_path_factory):
    import launcher

    folder = str(tmp_path_factory.mktemp("backend_maths"))
    _write_inputs(folder)
    processes = {}
    for backend in BACKENDS:  # both at once: most of each is the interpreter's start
        env = dict(os.environ, KERAS_BACKEND=backend)
        processes[backend] = launcher.popen(
            [sys.executable, os.path.abspath(__file__), folder], env=env, stdout=launcher.PIPE, stderr=launcher.STDOUT
        )
    for backend, process in processes.items():
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, f"{backend}: {output.decode(errors='replace')[-3000:]}"
    found = {backend: dict(np.load(os.path.join(folder, f"{backend}.npz"))) for backend in BACKENDS}
    return {**found, "inputs": dict(np.load(os.path.join(folder, "inputs.npz")))}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _results(tmp_path_factory)


@pytest.mark.parametrize("backend", BACKENDS)
def test_literal_scores_are_the_hand_computed_ones_on_each_backend(results, backend):
    found = results[backend]
    h = X_LITERAL @ W1
    delta = (_softmax(h @ W2) - np.eye(2)[Y_LITERAL]) / len(Y_LITERAL)  # dL/dlogits of the mean cross-entropy
    g2, g1 = h.T @ delta, X_LITERAL.T @ (delta @ W2.T)
    np.testing.assert_allclose(found["literal/snip/d0/kernel"], np.abs(W1 * g1), rtol=1e-5)
    np.testing.assert_allclose(found["literal/snip/d1/kernel"], np.abs(W2 * g2), rtol=1e-5)
    # GraSP on the two-layer chain: H g by finite differences of the exact float64 gradient.
    t = 200.0

    def gradient(w1, w2):
        hidden = X_LITERAL.astype(np.float64) @ w1
        d = (_softmax(hidden @ w2 / t) - np.eye(2)[Y_LITERAL]) / (len(Y_LITERAL) * t)
        return X_LITERAL.T @ (d @ w2.T), hidden.T @ d

    g = gradient(W1, W2)
    eps = 1e-3
    plus, minus = gradient(W1 + eps * g[0], W2 + eps * g[1]), gradient(W1 - eps * g[0], W2 - eps * g[1])
    hg = [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
    for name, w, product in (("d0/kernel", W1, hg[0]), ("d1/kernel", W2, hg[1])):
        expected = w * product
        np.testing.assert_allclose(
            found[f"literal/grasp/{name}"], expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max()
        )
    # SynFlow, all-ones input: a weight's score is |w| times the sum of |weights| on every path through it.
    assert set(found["literal/synflow_dtypes"]) == {"float64"}
    np.testing.assert_allclose(
        found["literal/synflow/d0/kernel"], np.abs(W1) * np.abs(W2).sum(axis=1)[None, :], rtol=1e-12
    )
    np.testing.assert_allclose(
        found["literal/synflow/d1/kernel"], np.abs(W2) * np.abs(W1).sum(axis=0)[:, None], rtol=1e-12
    )


def _names(found, prefix):
    return sorted(k for k in found if k.startswith(prefix + "/"))


def test_scores_are_the_same_on_both_backends(results):
    tf_found, jax_found = results["tensorflow"], results["jax"]
    for method in ("snip", "grasp"):
        names = _names(tf_found, method)
        assert names and names == _names(jax_found, method)
        largest = max(np.abs(tf_found[n]).max() for n in names)
        for name in names:
            assert tf_found[name].dtype == jax_found[name].dtype == np.float64
            np.testing.assert_allclose(jax_found[name], tf_found[name], rtol=1e-5, atol=1e-5 * largest, err_msg=name)
    # SynFlow runs a float64 copy, but Keras on JAX computes BatchNormalization in float32 whatever its dtype
    # (keras.backend.result_type maps float64 to float32 there), so the scores agree to float32 rounding.
    names = _names(tf_found, "synflow")
    assert names == _names(jax_found, "synflow")
    for name in names:
        np.testing.assert_allclose(jax_found[name], tf_found[name], rtol=1e-5, err_msg=name)
    names = _names(tf_found, "synflow_masks")
    assert names == _names(jax_found, "synflow_masks")
    kept = sum(tf_found[n].sum() for n in names)
    assert kept == round(0.3 * sum(tf_found[n].size for n in names))
    for name in names:
        np.testing.assert_array_equal(jax_found[name], tf_found[name], err_msg=name)


def test_the_linear_path_and_distances_are_the_same_on_both_backends(results):
    tf_found, jax_found = results["tensorflow"], results["jax"]
    errors = tf_found["path/error"]
    assert len(errors) == 5 and len(set(errors.tolist())) > 1  # the path changes the predictions
    np.testing.assert_array_equal(jax_found["path/error"], errors)
    np.testing.assert_array_equal(np.round(errors * EXAMPLES), errors * EXAMPLES)  # counts of examples
    np.testing.assert_allclose(jax_found["path/loss"], tf_found["path/loss"], rtol=1e-5)
    for key in ("path/instability", "path/barrier"):
        assert float(jax_found[key]) == float(tf_found[key])
    # BatchNorm re-estimated from the same two batches at the last state.
    np.testing.assert_allclose(jax_found["path/bn_moving_mean"], tf_found["path/bn_moving_mean"], rtol=1e-5, atol=1e-6)
    for key in ("distance/l2_distance", "distance/normalized_l2_distance", "distance/angle_degrees"):
        assert float(jax_found[key]) == float(tf_found[key]) > 0  # numpy in float64: the same bits


def test_a_jax_trained_pruned_model_converts_to_litert_and_computes_the_same(results):
    found = results["jax"]
    assert float(found["litert/trained_away_from_start"]) > 1e-3  # fit changed the weights
    assert int(found["litert/pruned_nonzero_in_keras"]) == 0
    np.testing.assert_allclose(found["litert/tflite"], found["litert/keras"], rtol=1e-4, atol=1e-4)
    checks = json.loads(str(found["litert/checks"]))
    assert sorted(checks) == ["conv/kernel", "fc/kernel", "out/kernel"]
    for name, check in checks.items():
        assert check["tensor"] is not None, name
        assert check["kept"] == int(results["inputs"][f"mask/{name}"].sum()), name
        assert check["pruned_stored_nonzero"] == 0, (name, check)  # every pruned weight is stored as 0
        if name != "conv/kernel":  # the converter folds the BatchNorm after conv into its kernel
            assert check["lost"] == 0 and check["max_error"] == 0.0, (name, check)
