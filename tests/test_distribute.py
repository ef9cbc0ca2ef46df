"""tf.distribute: mirrored on two logical CPU devices through the CLI, ResNet-50 under mirrored."""

import glob
import json
import os
import sys

import launcher
import numpy as np
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # strategies on logical devices: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
# Same compile settings for both runs (distributed runs use one step per call, no XLA).
COMMON = [
    "--flagfile=flags/smoke.flags",
    "--branch=",
    "--branch_levels=",
    "--levels=1",
    "--optimizer=sgd",
    "--learning_rate=0.01",
    "--jit_compile=false",
    "--steps_per_execution=1",
]


def cli(out, *extra):
    result = launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *COMMON, f"--output_dir={out}", *extra],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def masks_of(out):
    found = {}
    for path in sorted(glob.glob(os.path.join(out, "lottery_*", "replicate_0", "level_*", "main", "masks.npz"))):
        with np.load(path) as data:
            found[os.path.relpath(path, out)] = {k: data[k] for k in data.files}
    return found


def test_mirrored_two_cpus_same_masks_as_default(tmp_path):
    default, mirrored = str(tmp_path / "default"), str(tmp_path / "mirrored")
    cli(default)
    result = cli(mirrored, "--strategy=mirrored", "--cpu_devices=2")
    assert "strategy: mirrored, 2 replica(s): " in result.stdout and "CPU:1" in result.stdout
    a, b = masks_of(default), masks_of(mirrored)
    assert sorted(a) == sorted(b) and len(a) == 3  # levels 0, 1 and the next level's masks
    for level in a:
        for name in a[level]:
            np.testing.assert_array_equal(a[level][name], b[level][name], err_msg=f"{level} {name}")


def test_one_device_strategy_runs(tmp_path):
    out = str(tmp_path / "one")
    cli(out, "--strategy=one_device")
    assert len(masks_of(out)) == 3


RESNET50_STEP = """
import json, numpy as np, tensorflow as tf
from lottery_tf.engine import experiment, recipe
from lottery_tf.engine.config import DataConfig, ExperimentConfig, ModelConfig, TrainingConfig
from lottery_tf.engine.data import get_splits
from lottery_tf.engine.distribute import make_strategy, split_cpu
from lottery_tf.core.masking import get_masks, get_prunable_weights, set_masks
split_cpu(2)
strategy = make_strategy("mirrored")
config = ExperimentConfig(
    data=DataConfig(name="synthetic", synthetic_shape=(224, 224, 3), synthetic_classes=1000,
                    synthetic_train_examples=8, synthetic_test_examples=2, validation_examples=2),
    model=ModelConfig(name="resnet50", initializer="he_normal"),
    training=TrainingConfig(optimizer="sgd", learning_rate=0.1, momentum=0.9, batch_size=2, iterations=1, eval_every=1),
)
splits = get_splits(config.data)
model = experiment.build_masked_model(config, splits, seed=0, strategy=strategy)
masks = get_masks(model)
rng = np.random.default_rng(0)
for name in masks:
    masks[name] = (rng.random(masks[name].shape) > 0.8).astype("float32")
set_masks(model, masks)
history = model.fit(recipe.train_pipeline(splits, 2, 0), epochs=1, steps_per_epoch=1, verbose=0)
weights = get_prunable_weights(model)
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "masks": len(masks),
    "loss": float(history.history["loss"][0]),
    "step": int(model.optimizer.iterations.numpy()),
    "pruned_nonzero": int(sum(np.count_nonzero(weights[n][masks[n] == 0]) for n in masks)),
}))
"""


def test_resnet50_one_step_under_mirrored_imagenet_shapes():
    # Own process: collectives of one MirroredStrategy can break the next one's in the same process.
    result = launcher.run(
        [sys.executable, "-c", RESNET50_STEP], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["masks"] == 54  # 53 convolutions + the classifier
    assert np.isfinite(report["loss"]) and report["step"] == 1
    assert report["pruned_nonzero"] == 0
