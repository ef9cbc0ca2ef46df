"""Pruning-at-initialization scores against hand-written gradients, Hessian-vector products and path sums."""

import numpy as np
import pytest

from lottery_tf.core import saliency
from lottery_tf.core.gradients import float64
from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks, set_masks, wrap_model
from lottery_tf.core.pruning import prune_to_density

X = np.array([[1.0, 2.0], [-1.0, 1.0]], np.float32)
Y = np.array([0, 1])


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _linear(*kernels):
    """A chain of bias-free Dense layers with the given kernels, wrapped with masks."""
    inputs = keras.Input((kernels[0].shape[0],))
    x = inputs
    for i, kernel in enumerate(kernels):
        x = keras.layers.Dense(kernel.shape[1], use_bias=False, name=f"d{i}")(x)
    model = wrap_model(keras.Model(inputs, x))
    for i, kernel in enumerate(kernels):
        model.get_layer(f"d{i}").kernel.assign(np.asarray(kernel, np.float32))
    return model


def test_prune_to_density_global_and_layerwise():
    scores = {"a": np.array([[3.0, 1.0], [2.0, 0.5]]), "b": np.array([4.0, 0.1])}
    masks = {"a": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}
    kept = prune_to_density(scores, masks, 0.5)  # 3 of 6: 4, 3, 2
    np.testing.assert_array_equal(kept["a"], [[1, 0], [1, 0]])
    np.testing.assert_array_equal(kept["b"], [1, 0])
    layerwise = prune_to_density(scores, masks, 0.5, scope="layerwise")  # 2 of a, 1 of b
    np.testing.assert_array_equal(layerwise["a"], [[1, 0], [1, 0]])
    np.testing.assert_array_equal(layerwise["b"], [1, 0])
    # A pruned weight stays pruned however high its score; of equal scores the earlier goes first (TIES).
    dead = {"a": np.array([[0, 1], [1, 1]], np.float32), "b": np.ones(2, np.float32)}
    np.testing.assert_array_equal(prune_to_density(scores, dead, 0.5)["a"], [[0, 1], [1, 0]])
    tied = prune_to_density({"c": np.ones(4)}, {"c": np.ones(4, np.float32)}, 0.5)
    np.testing.assert_array_equal(tied["c"], [0, 0, 1, 1])
    inverted = prune_to_density(saliency.invert(scores), masks, 0.5)  # keeps the lowest: 0.1, 0.5, 1
    np.testing.assert_array_equal(inverted["a"], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(inverted["b"], [0, 1])
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="density"):
            prune_to_density(scores, masks, bad)
    with pytest.raises(ValueError, match="scope"):
        prune_to_density(scores, masks, 0.5, scope="row")


def test_snip_is_weight_times_gradient_of_the_mean_loss():
    w1 = np.array([[0.5, -1.0, 0.2], [0.3, 0.8, -0.4]])
    w2 = np.array([[1.0, -0.5], [0.2, 0.3], [-0.7, 0.6]])
    model = _linear(w1, w2)
    h = X @ w1
    delta = (_softmax(h @ w2) - np.eye(2)[Y]) / len(Y)  # dL/dlogits of the mean cross-entropy
    g2, g1 = h.T @ delta, X.T @ (delta @ w2.T)
    scores = saliency.snip_scores(model, [(X, Y)])
    np.testing.assert_allclose(scores["d0/kernel"], np.abs(w1 * g1), rtol=1e-5)
    np.testing.assert_allclose(scores["d1/kernel"], np.abs(w2 * g2), rtol=1e-5)
    split = saliency.snip_scores(model, [(X[:1], Y[:1]), (X[1:], Y[1:])])  # the same examples in two batches
    for name in scores:
        np.testing.assert_allclose(split[name], scores[name], rtol=1e-5)


def test_grasp_is_weight_times_hessian_gradient_product_at_temperature():
    w = np.array([[0.5, -1.0], [0.3, 0.8]])
    model = _linear(w)
    t = saliency.GRASP_TEMPERATURE
    p = _softmax(X @ w / t)
    g = X.T @ (p - np.eye(2)[Y]) / (len(Y) * t)
    hg = np.zeros_like(w)
    for x_i, p_i in zip(X.astype(np.float64), p):  # H V = 1/(n T^2) sum_i x_i (J_i V^T x_i)^T, J = diag(p) - p p^T
        jacobian = np.diag(p_i) - np.outer(p_i, p_i)
        hg += np.outer(x_i, jacobian @ (g.T @ x_i))
    hg /= len(Y) * t * t
    importance = saliency.grasp_scores(model, [(X, Y)])["d0/kernel"]
    np.testing.assert_allclose(importance, w * hg, rtol=1e-4)
    # The paper's score is S = -w (H g) and it prunes the highest S: the lowest importance goes first.
    paper_score = -w * hg
    kept = prune_to_density({"d0/kernel": importance}, get_masks(model), 0.75)
    assert kept["d0/kernel"].ravel()[np.argmax(paper_score)] == 0


def test_synflow_score_is_the_path_sum_through_each_weight():
    # Values exactly representable in float32, so the float64 copy holds the same numbers.
    w1 = np.array([[0.5, -1.0, 0.25], [0.375, 0.75, -0.5]])
    w2 = np.array([[1.0, -0.5], [0.25, 0.125], [-0.75, 0.625]])
    model = _linear(w1, w2)
    copy = saliency.float64_copy(model)
    assert all(v.dtype == "float64" for v in copy.weights)
    with float64():  # JAX computes in float64 only inside jax.enable_x64
        for variable in copy.variables:
            variable.assign(np.abs(variable.numpy()))
        assert all(np.asarray(v.numpy()).dtype == np.float64 for v in copy.weights)
    scores = saliency.synflow_scores(copy, (2,))
    # All-ones input: a weight's score is |w| times the sum of |weights| on every path through it.
    np.testing.assert_allclose(scores["d0/kernel"], np.abs(w1) * np.abs(w2).sum(axis=1)[None, :], rtol=1e-12)
    np.testing.assert_allclose(scores["d1/kernel"], np.abs(w2) * np.abs(w1).sum(axis=0)[:, None], rtol=1e-12)
    np.testing.assert_array_equal(model.get_layer("d0").kernel.numpy(), w1.astype(np.float32))  # untouched


def test_synflow_rounds_follow_the_exponential_schedule():
    w1 = np.array([[0.5, -1.0, 0.2], [0.3, 0.8, -0.4]])
    w2 = np.array([[1.0, -0.5], [0.2, 0.3], [-0.7, 0.6]])
    model = _linear(w1, w2)
    masks = {"d0/kernel": np.ones((2, 3), np.float32), "d1/kernel": np.ones((3, 2), np.float32)}
    a1, a2 = np.abs(w1), np.abs(w2)
    for r in (1, 2):  # the reference by hand: prune to 0.25^(r/2), zero, rescore
        s1 = a1 * masks["d0/kernel"] * (a2 * masks["d1/kernel"]).sum(axis=1)[None, :]
        s2 = a2 * masks["d1/kernel"] * (a1 * masks["d0/kernel"]).sum(axis=0)[:, None]
        masks = prune_to_density({"d0/kernel": s1, "d1/kernel": s2}, masks, 0.25 ** (r / 2))
    found = saliency.synflow_masks(model, (2,), 0.25, rounds=2)
    for name in masks:
        np.testing.assert_array_equal(found[name], masks[name])
    assert sum(m.sum() for m in found.values()) == 3  # round(0.25 * 12)
    one_round = saliency.synflow_masks(model, (2,), 0.25, rounds=1)
    assert sum(m.sum() for m in one_round.values()) == 3
    with pytest.raises(ValueError, match="rounds"):
        saliency.synflow_masks(model, (2,), 0.25, rounds=0)


def test_magnitude_random_and_the_method_table():
    model = _linear(np.array([[0.5, -1.0], [0.3, 0.8]]))
    np.testing.assert_allclose(saliency.scores("magnitude", model)["d0/kernel"], [[0.5, 1.0], [0.3, 0.8]], rtol=1e-7)
    first, again = saliency.scores("random", model, seed=3), saliency.scores("random", model, seed=3)
    np.testing.assert_array_equal(first["d0/kernel"], again["d0/kernel"])
    assert not np.array_equal(first["d0/kernel"], saliency.scores("random", model, seed=4)["d0/kernel"])
    with pytest.raises(ValueError, match="unknown scoring method 'obd'"):
        saliency.scores("obd", model)
    # A pruned weight scores 0 by magnitude and SNIP (it is held at zero).
    set_masks(model, {"d0/kernel": np.array([[1, 0], [1, 1]], np.float32)})
    assert saliency.scores("snip", model, [(X, Y)])["d0/kernel"][0, 1] == 0


def test_balanced_scoring_examples():
    x = np.arange(8, dtype=np.float32)[:, None]
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    batches = saliency.balanced_batches(x, y, 2, seed=0, batch_size=4)
    labels = np.concatenate([b[1] for b in batches])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2] and [len(b[1]) for b in batches] == [4, 2]
    again = saliency.balanced_batches(x, y, 2, seed=0, batch_size=4)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in again]), np.concatenate([b[0] for b in batches]))
    with pytest.raises(ValueError, match="class 1 has 2 training examples"):
        saliency.balanced_batches(x, y, 3, seed=0)
    with pytest.raises(ValueError, match=">= 1"):
        saliency.balanced_batches(x, y, 0, seed=0)
