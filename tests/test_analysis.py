"""The analysis maths with literal values: interpolation, instability, barrier, distances, BatchNorm."""

import math

import numpy as np
import pytest

from lottery_tf.core.analysis import (
    alphas,
    angle_degrees,
    barrier,
    batchnorm,
    compare_weights,
    error_along_path,
    instability,
    interpolate,
    l2_distance,
    normalized_l2_distance,
    summarize_path,
)
from lottery_tf.core.keras_compat import keras


def test_alphas_include_both_ends():
    np.testing.assert_allclose(alphas(5), [0.0, 0.25, 0.5, 0.75, 1.0])
    for bad in (1, 0, -3, 2.5, True):
        with pytest.raises(ValueError, match="interpolation points"):
            alphas(bad)


def test_interpolate_entry_by_entry_and_keeps_the_others():
    a = {"w": np.array([0.0, 2.0], np.float32), "bn/moving_mean": np.array([10.0], np.float32)}
    b = {"w": np.array([4.0, 6.0], np.float32), "bn/moving_mean": np.array([20.0], np.float32)}
    mid = interpolate(a, b, 0.25)
    np.testing.assert_array_equal(mid["w"], [1.0, 3.0])
    np.testing.assert_array_equal(mid["bn/moving_mean"], [12.5])
    assert mid["w"].dtype == np.float32
    kept = interpolate(a, b, 0.25, keys={"w"})
    np.testing.assert_array_equal(kept["bn/moving_mean"], [10.0])  # taken from the first state
    with pytest.raises(ValueError, match="different weights"):
        interpolate(a, {"w": b["w"]}, 0.5)
    with pytest.raises(ValueError, match="shapes"):
        interpolate({"w": np.zeros(2)}, {"w": np.zeros(3)}, 0.5)


def test_interpolating_two_pruned_states_stays_pruned():
    mask = np.array([1.0, 0.0, 1.0])
    a, b = {"w": np.array([1.0, 0.0, 3.0]) * mask}, {"w": np.array([5.0, 0.0, -1.0]) * mask}
    for alpha in alphas(7):
        assert interpolate(a, b, alpha)["w"][1] == 0.0


def test_instability_and_barrier_of_a_known_barrier():
    # One weight w on the line from -1 to +1, error(w) = 0.1 + 0.4 (1 - w^2): endpoints 0.1, midpoint 0.5.
    def evaluate(state):
        w = float(state["w"][0])
        return {"test_error": 0.1 + 0.4 * (1 - w * w)}

    coefficients, values = error_along_path({"w": np.array([-1.0])}, {"w": np.array([1.0])}, evaluate, points=5)
    np.testing.assert_allclose(values["test_error"], [0.1, 0.4, 0.5, 0.4, 0.1])
    assert instability(values["test_error"]) == pytest.approx(0.4)
    assert barrier(coefficients, values["test_error"]) == pytest.approx(0.4)
    summary = summarize_path(coefficients, values["test_error"])
    assert summary["max_error_alpha"] == 0.5
    assert summary["endpoint_errors"] == pytest.approx([0.1, 0.1])


def test_instability_is_max_minus_mean_of_the_endpoints():
    assert instability([0.1, 0.3, 0.2]) == pytest.approx(0.15)
    assert barrier([0.0, 0.5, 1.0], [0.1, 0.3, 0.2]) == pytest.approx(0.15)
    assert barrier([0.0, 0.5, 1.0], [0.1, 0.12, 0.2]) == 0.0  # below the chord: the endpoints' 0 is the maximum
    assert instability([0.1, 0.12, 0.2]) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        instability([0.1])


def _least_squares(state):
    """A linear model with a convex loss: mean squared error of X w against y (X = I, y = [1, 1])."""
    residual = np.asarray(state["w"]) - np.array([1.0, 1.0])
    return {"train_loss": float(np.mean(residual**2))}


def test_a_convex_loss_has_no_barrier_and_instability_half_the_endpoint_gap():
    # Loss along w(a) = [2a, a]: 2.5 a^2 - 3 a + 1, convex; endpoints 1 and 0.5.
    coefficients, values = error_along_path(
        {"w": np.array([0.0, 0.0])}, {"w": np.array([2.0, 1.0])}, _least_squares, points=5
    )
    np.testing.assert_allclose(values["train_loss"], [1.0, 0.40625, 0.125, 0.15625, 0.5])
    assert barrier(coefficients, values["train_loss"]) == pytest.approx(0.0)  # <= 0: never above the chord
    assert instability(values["train_loss"]) == pytest.approx(0.25)  # = |1 - 0.5| / 2, the maximum is an endpoint


def test_a_convex_loss_with_equal_endpoints_has_instability_at_most_zero():
    # w(a) = [2a, 2a]: loss (2a - 1)^2, both endpoints 1, minimum 0 in the middle.
    coefficients, values = error_along_path(
        {"w": np.array([0.0, 0.0])}, {"w": np.array([2.0, 2.0])}, _least_squares, points=5
    )
    np.testing.assert_allclose(values["train_loss"], [1.0, 0.25, 0.0, 0.25, 1.0])
    assert instability(values["train_loss"]) == pytest.approx(0.0)
    assert barrier(coefficients, values["train_loss"]) == pytest.approx(0.0)


def test_distances_with_and_without_masks():
    a, b = {"x": np.array([1.0, 0.0, 2.0])}, {"x": np.array([0.0, 1.0, 2.0])}
    assert l2_distance(a, b) == pytest.approx(math.sqrt(2))
    assert normalized_l2_distance(a, b) == pytest.approx(math.sqrt(2 / 5))
    assert angle_degrees(a, b) == pytest.approx(math.degrees(math.acos(4 / 5)))  # 36.87
    masks = {"x": np.array([1.0, 1.0, 0.0])}
    assert l2_distance(a, b, masks) == pytest.approx(math.sqrt(2))
    assert normalized_l2_distance(a, b, masks) == pytest.approx(math.sqrt(2))
    assert angle_degrees(a, b, masks) == pytest.approx(90.0)
    assert angle_degrees(a, a) == 0.0
    assert angle_degrees(a, {"x": 3 * a["x"]}) == pytest.approx(0.0, abs=1e-9)
    assert angle_degrees(a, {"x": -a["x"]}) == pytest.approx(180.0)


def test_distances_concatenate_every_layer():
    a = {"fc1": np.array([[3.0, 0.0]]), "fc2": np.array([4.0])}
    b = {"fc1": np.array([[0.0, 0.0]]), "fc2": np.array([0.0])}
    record = compare_weights(a, b)
    assert record["l2_distance"] == pytest.approx(5.0)
    assert record["normalized_l2_distance"] == pytest.approx(1.0)
    assert record["norm_a"] == pytest.approx(5.0) and record["norm_b"] == 0.0
    assert record["angle_degrees"] is None  # no direction to compare
    with pytest.raises(ValueError, match="all-zero"):
        angle_degrees(a, b)
    with pytest.raises(ValueError, match="different weights"):
        l2_distance(a, {"fc1": b["fc1"]})


def test_batchnorm_statistics_are_the_average_over_the_batches():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
    layer = model.get_layer("bn")
    assert batchnorm.statistic_paths(model) == {layer.moving_mean.path, layer.moving_variance.path}
    batches = [np.array([[0.0, 0.0], [2.0, 2.0]], np.float32), np.array([[4.0, 4.0], [6.0, 10.0]], np.float32)]
    assert batchnorm.reestimate(model, batches) == 2
    # Batch means [1, 1] and [5, 7]; batch variances (biased) [1, 1] and [1, 9].
    np.testing.assert_allclose(layer.moving_mean.numpy(), [3.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), [1.0, 5.0], rtol=1e-6)
    assert layer.momentum == 0.99  # restored


def test_batchnorm_inside_nested_models_is_found():
    inner_inputs = keras.Input((3,))
    inner = keras.Model(inner_inputs, keras.layers.BatchNormalization(name="inner_bn")(inner_inputs), name="inner")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    assert [layer.name for layer in batchnorm.batchnorm_layers(model)] == ["inner_bn"]
    assert batchnorm.reestimate(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), [np.ones((2, 3))]) == 0


def test_the_path_evaluator_reestimates_batchnorm_statistics_or_keeps_them(tmp_path):
    import dataclasses

    from lottery_tf.core import rewind
    from lottery_tf.core.masking import get_masks, get_prunable_weights
    from lottery_tf.engine.branches.analyses import PathEvaluator
    from lottery_tf.engine.config import (
        BranchConfig,
        DataConfig,
        ExperimentConfig,
        ModelConfig,
        RunConfig,
        TrainingConfig,
    )
    from lottery_tf.engine.data import get_splits
    from lottery_tf.engine.levels import Context
    from lottery_tf.engine.recipe import build_masked_model

    config = ExperimentConfig(
        data=DataConfig(
            name="synthetic",
            synthetic_train_examples=256,
            synthetic_test_examples=64,
            validation_examples=64,
            synthetic_shape=(8, 8, 3),
        ),
        model=ModelConfig(name="cifar_resnet_8_4"),
        training=TrainingConfig(batch_size=32, iterations=10, eval_every=10),
        branches=BranchConfig(batchnorm_batches=2, analysis_train_examples=50),
        run=RunConfig(output_dir=str(tmp_path), tensorboard=False),
    )
    ctx = Context(config, get_splits(config.data), 0, 123, str(tmp_path / "replicate_0"))
    masks = {
        name: np.where(np.arange(m.size).reshape(m.shape) % 2, 1.0, 0.0).astype(m.dtype)
        for name, m in get_masks(build_masked_model(config, ctx.splits, 1)).items()
    }
    evaluator = PathEvaluator(ctx, masks)
    assert evaluator.batchnorm == "reestimate" and len(evaluator.batches) == 2 and evaluator.train_examples == 50
    statistics = batchnorm.statistic_paths(evaluator.model)
    assert statistics and not statistics & evaluator.interpolated_keys  # re-estimated, not interpolated
    state = rewind.capture(evaluator.model)
    state.update({path: np.full_like(state[path], 1e3) for path in statistics})  # statistics no network has
    values = evaluator(state)
    assert set(values) == {"test_error", "test_loss", "train_error", "train_loss"}
    layer = batchnorm.batchnorm_layers(evaluator.model)[0]
    assert np.all(np.abs(layer.moving_mean.numpy()) < 1e2)  # recomputed from the batches
    # The masks stay applied to whatever state is evaluated.
    for name, weight in get_prunable_weights(evaluator.model).items():
        assert np.all(weight[masks[name] == 0] == 0)

    kept = PathEvaluator(
        dataclasses.replace(
            ctx,
            config=dataclasses.replace(
                config, branches=dataclasses.replace(config.branches, batchnorm_statistics="interpolate")
            ),
        ),
        masks,
    )
    assert kept.batchnorm == "interpolate" and statistics <= kept.interpolated_keys
    kept(state)
    np.testing.assert_array_equal(batchnorm.batchnorm_layers(kept.model)[0].moving_mean.numpy(), 1e3)


def test_linear_path_of_a_plain_keras_model_with_a_known_error_profile():
    from lottery_tf.core import rewind
    from lottery_tf.core.analysis.evaluation import ModelEvaluator, linear_path
    from lottery_tf.core.masking import wrap_model

    # A linear classifier on one feature: logits = [0, w * x]. Inputs +1 labelled 1, -1 labelled 0.
    inputs = keras.Input((1,))
    dense = keras.layers.Dense(2, use_bias=False, name="linear")
    model = wrap_model(keras.Model(inputs, dense(inputs)))  # masks all ones
    x = np.array([[1.0], [-1.0], [1.0], [-1.0]], np.float32)
    y = np.array([1, 0, 1, 0])
    state = rewind.capture(model)
    (path,) = [p for p in state if p.endswith("kernel")]
    right = {path: np.array([[0.0, 1.0]], np.float32)}  # every example right
    wrong = {path: np.array([[0.0, -1.0]], np.float32)}  # every example wrong
    evaluator = ModelEvaluator(model, {"test": (x, y)})
    assert evaluator.batchnorm == "none"
    result = linear_path(evaluator, right, wrong, points=3)
    assert result["alphas"] == [0.0, 0.5, 1.0]
    # At a = 0.5 the logits tie: argmax picks class 0, right for half the examples.
    assert result["test"]["error"] == [0.0, 0.5, 1.0]
    assert result["test"]["instability"] == pytest.approx(0.5) and result["test"]["barrier"] == pytest.approx(0.0)
    assert result["test"]["loss"][1] == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="batchnorm must be one of"):
        ModelEvaluator(model, {"test": (x, y)}, batchnorm="mean")
    bn_inputs = keras.Input((1,))
    with_bn = wrap_model(keras.Model(bn_inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(bn_inputs))))
    with pytest.raises(ValueError, match="needs training batches"):
        ModelEvaluator(with_bn, {"test": (x, y)})
