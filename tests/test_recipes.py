"""Training recipes: schedules with warmup, label smoothing, Nesterov, mixed precision,
lengths in epochs, synthetic data of any shape."""

import os

import numpy as np
import pytest

from lottery_tf.core import rewind
from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks, get_prunable_weights, set_masks
from lottery_tf.core.schedules import LotterySchedule, learning_rate_at, make_schedule
from lottery_tf.engine import experiment, recipe
from lottery_tf.engine.config import DataConfig, ExperimentConfig, ModelConfig, TrainingConfig
from lottery_tf.engine.data import get_splits, train_examples
from lottery_tf.store import atomic


@pytest.mark.parametrize(
    "step, kwargs, expected",
    [
        (0, dict(kind="constant"), 0.1),
        (49, dict(kind="step", milestones=(50, 75)), 0.1),
        (50, dict(kind="step", milestones=(50, 75)), 0.01),
        (99, dict(kind="step", milestones=(50, 75)), 0.001),
        (0, dict(kind="step", milestones=(50,), warmup=10), 0.01),  # (0 + 1) / 10 of 0.1
        (9, dict(kind="step", milestones=(50,), warmup=10), 0.1),
        (10, dict(kind="cosine", total=110, warmup=10), 0.1),
        (60, dict(kind="cosine", total=110, warmup=10), 0.05),  # halfway: cos(pi/2) = 0
        (110, dict(kind="cosine", total=110, warmup=10), 0.0),
    ],
)
def test_learning_rate_literals(step, kwargs, expected):
    kwargs.setdefault("total", 100)
    assert learning_rate_at(step, 0.1, **kwargs) == pytest.approx(expected, abs=1e-12)


def test_keras_schedule_matches_definition_and_serializes():
    schedule = LotterySchedule(0.4, "step", 9000, milestones=(3000, 6000, 8000), gamma=0.1, warmup=500)
    for step in (0, 1, 250, 499, 500, 2999, 3000, 6500, 8999):
        assert float(schedule(step)) == pytest.approx(
            learning_rate_at(step, 0.4, "step", 9000, (3000, 6000, 8000), 0.1, 500), rel=1e-6
        )
    cosine = LotterySchedule(0.1, "cosine", 1000, warmup=100)
    for step in (0, 99, 100, 550, 1000):
        assert float(cosine(step)) == pytest.approx(learning_rate_at(step, 0.1, "cosine", 1000, (), 0.1, 100), abs=1e-7)
    again = LotterySchedule.from_config(schedule.get_config())
    assert again.get_config() == schedule.get_config()
    assert make_schedule(TrainingConfig(learning_rate=0.3)) == 0.3


def test_rewinding_the_step_counter_rewinds_the_schedule():
    optimizer = keras.optimizers.SGD(LotterySchedule(0.1, "step", 100, milestones=(10,)), momentum=0.9, nesterov=True)
    optimizer.build([keras.Variable(np.zeros(3, "float32"))])
    optimizer.iterations.assign(20)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.01)
    rewind.reset_optimizer(optimizer, 5, "reset")
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.1)
    assert optimizer.nesterov


def test_label_smoothing_loss_literal():
    # logits (2, 0): p = (0.8808, 0.1192); smoothed targets (0.9, 0.1):
    # -(0.9 ln 0.8808 + 0.1 ln 0.1192) = 0.32693
    loss = recipe.make_loss(TrainingConfig(label_smoothing=0.2), 2)
    value = float(np.mean(keras.ops.convert_to_numpy(loss(np.array([0]), np.array([[2.0, 0.0]], "float32")))))
    assert value == pytest.approx(0.9 * np.log1p(np.exp(-2.0)) + 0.1 * np.log1p(np.exp(2.0)), rel=1e-5)
    assert value == pytest.approx(0.32693, abs=1e-5)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_masks_exact(policy):
    config = ExperimentConfig(
        data=DataConfig(
            name="synthetic", synthetic_shape=(8, 8, 3), synthetic_train_examples=256, validation_examples=64
        ),
        model=ModelConfig(name="conv2"),
        training=TrainingConfig(
            iterations=20, eval_every=10, mixed_precision=policy, optimizer="sgd", learning_rate=0.05, momentum=0.9
        ),
    )
    splits = get_splits(config.data)
    model = experiment.build_masked_model(config, splits, seed=0)
    assert model.get_layer("conv1_1").compute_dtype == policy.split("_")[1]
    assert keras.ops.convert_to_numpy(model(splits.x_val[:2])).dtype == np.float32  # logits cast for the loss
    masks = get_masks(model)
    rng = np.random.default_rng(0)
    for name in masks:
        masks[name] = (rng.random(masks[name].shape) > 0.5).astype("float32")
        assert masks[name].dtype == np.float32
    set_masks(model, masks)
    model.fit(recipe.train_pipeline(splits, 32, 0), epochs=1, steps_per_epoch=20, verbose=0)
    for name, weights in get_prunable_weights(model).items():
        assert weights.dtype == np.float32
        assert np.all(weights[masks[name] == 0] == 0.0), name
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_synthetic_any_shape_and_epoch_lengths():
    config = DataConfig(
        name="synthetic",
        synthetic_shape=(32, 32, 3),
        synthetic_classes=100,
        synthetic_train_examples=1000,
        synthetic_test_examples=100,
        validation_examples=100,
    )
    splits = get_splits(config)
    assert splits.x_train.shape == (900, 32, 32, 3) and splits.num_classes == 100
    assert train_examples(config) == 900
    assert train_examples(DataConfig(name="cifar10", validation_examples=5000)) == 45000
    assert train_examples(DataConfig(name="fashion_mnist")) == 55000


def test_l2_weight_decay_is_added_to_the_gradient():
    variable = keras.Variable(np.array([1.0, -2.0], "float32"))
    optimizer = recipe.make_optimizer(
        TrainingConfig(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.5, weight_decay_mode="l2")
    )
    gradient = np.array([0.2, 0.0], "float32")
    optimizer.apply([gradient], [variable])
    # v1 = -(g + 0.5 w) * lr: w = 1 - 0.1 * (0.2 + 0.5) = 0.93;  -2 - 0.1 * (0 - 1) = -1.9
    np.testing.assert_allclose(variable.numpy(), [0.93, -1.9], rtol=1e-6)
    optimizer.apply([gradient], [variable])
    # momentum: v2 = 0.9 v1 - lr (g + 0.5 w1)
    v1 = np.array([-0.07, 0.1])
    v2 = 0.9 * v1 - 0.1 * (np.array([0.2, 0.0]) + 0.5 * np.array([0.93, -1.9]))
    np.testing.assert_allclose(variable.numpy(), np.array([0.93, -1.9]) + v2, rtol=1e-5)
    decoupled = recipe.make_optimizer(TrainingConfig(optimizer="sgd", learning_rate=0.1, weight_decay=0.5))
    assert type(decoupled).__name__ == "SGD" and decoupled.weight_decay == 0.5


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_two_levels_under_mixed_precision_train_after_the_rewind(tmp_path, policy):
    """Level 1 (after a prune and rewind) must train: the old reset zeroed the loss scale."""
    from lottery_tf.engine.config import PruningConfig, RunConfig, replicate_seed
    from lottery_tf.engine.run_dir import level_dir

    config = ExperimentConfig(
        data=DataConfig(
            name="synthetic", synthetic_train_examples=1024, synthetic_test_examples=256, validation_examples=256
        ),
        training=TrainingConfig(iterations=100, eval_every=50, mixed_precision=policy),
        pruning=PruningConfig(levels=1, rewind_step=50),
        run=RunConfig(output_dir=str(tmp_path), checkpoint_every=0, tensorboard=False),
    )
    ctx = experiment.Context(config, get_splits(config.data), 0, replicate_seed(0, 0), str(tmp_path / "rep"))
    keras.config.set_dtype_policy("float32")
    assert experiment.run_main_line(ctx)
    import json

    level1 = json.load(open(os.path.join(level_dir(ctx.folder, 1, "main"), "metrics.json")))
    losses = level1["curves"]["val"]["loss"]
    assert all(np.isfinite(losses)) and level1["final_test_accuracy"] > 0.3  # chance is 0.1
    masks = atomic.read_npz(os.path.join(level_dir(ctx.folder, 1, "main"), "masks.npz"))
    trained = atomic.read_npz(os.path.join(level_dir(ctx.folder, 1, "main"), "final_weights.npz"))
    for name, mask in masks.items():  # the trained state is keyed by the masks' names
        assert np.all(trained[name][mask == 0] == 0.0) and np.any(trained[name][mask == 1] != 0.0)


def test_build_masked_model_restores_the_callers_policy():
    config = ExperimentConfig(
        data=DataConfig(name="synthetic", synthetic_train_examples=256, validation_examples=64),
        training=TrainingConfig(iterations=20, eval_every=10, mixed_precision="mixed_bfloat16"),
    )
    keras.config.set_dtype_policy("mixed_float16")
    try:
        experiment.build_masked_model(config, get_splits(config.data), seed=0)
        assert keras.config.dtype_policy().name == "mixed_float16"  # not reset to float32
    finally:
        keras.config.set_dtype_policy("float32")
