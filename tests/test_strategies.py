"""Strategy plumbing: the custom training loop, per-worker input, chief-only writes, errors."""

import os
import sys

import launcher
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks, get_prunable_weights, set_masks, wrap_model
from lottery_tf.core.pruning import fingerprint
from lottery_tf.engine import loop
from lottery_tf.engine.config import ConfigError, StrategyError
from lottery_tf.engine.distribute import (
    cluster_from_environment,
    make_strategy,
    per_worker_batches,
)
from lottery_tf.store import atomic, checkpoint

pytestmark = pytest.mark.slow  # strategies on logical devices: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def global_batches():
    """Two global batches of 8: images are their example index, labels 100 + index."""
    x = tf.reshape(tf.range(16, dtype=tf.float32), (16, 1))
    y = tf.range(100, 116)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def test_per_worker_batches_takes_this_workers_slice_split_per_replica():
    # Worker 1 of 2, 4 replicas in all (2 on this worker): examples 4..7 of each global batch.
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4)
    batches = [
        (x.numpy().ravel().tolist(), y.numpy().tolist()) for x, y in per_worker_batches(global_batches(), 8, context)
    ]
    assert batches == [([4, 5], [104, 105]), ([6, 7], [106, 107]), ([12, 13], [112, 113]), ([14, 15], [114, 115])]


def test_per_worker_batches_one_pipeline_keeps_global_batches():
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)
    batches = [x.numpy().ravel().tolist() for x, _ in per_worker_batches(global_batches(), 8, context)]
    assert batches == [list(range(8)), list(range(8, 16))]


def test_per_worker_batches_rejects_uneven_split():
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=3)
    with pytest.raises(ValueError, match="--batch_size=8 is not divisible by the 3 replicas"):
        per_worker_batches(global_batches(), 8, context)


def masked_model(strategy, seed=0):
    with strategy.scope():
        keras.utils.set_random_seed(seed)
        model = wrap_model(
            keras.Sequential(
                [keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="a"), keras.layers.Dense(3, name="b")]
            )
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.optimizer.build(model.trainable_variables)
    masks = get_masks(model)
    masks["a/kernel"][::2] = 0.0
    set_masks(model, masks)
    return model


def data(batch=8):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, size=64).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch)


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append("begin")

    def on_train_batch_end(self, batch, logs=None):
        self.events.append((batch, int(self.model.optimizer.iterations.numpy()), round(logs["loss"], 6) > 0))

    def on_train_end(self, logs=None):
        self.events.append("end")


def test_loop_matches_fit_and_keeps_pruned_weights_at_zero():
    strategy = tf.distribute.get_strategy()
    by_fit, by_loop = masked_model(strategy), masked_model(strategy)
    by_fit.fit(data(), epochs=1, steps_per_epoch=5, verbose=0)
    recorder = Recorder()
    logs = loop.fit(by_loop, strategy, lambda context: per_worker_batches(data(), 8, context), 5, [recorder])
    assert recorder.events == ["begin", *[(i, i + 1, True) for i in range(5)], "end"]
    assert np.isfinite(logs["loss"])
    for a, b in zip(by_fit.get_weights(), by_loop.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    kernel = get_prunable_weights(by_loop)["a/kernel"]
    assert np.count_nonzero(kernel[::2]) == 0 and np.count_nonzero(kernel[1::2]) > 0


LOOP_UNDER_MIRRORED = """
import sys
sys.path.insert(0, "tests")
import numpy as np, tensorflow as tf
from lottery_tf.engine import loop
from lottery_tf.engine.distribute import broadcast_from_chief, is_chief, is_multi_worker, make_strategy, per_worker_batches, split_cpu
from lottery_tf.core.masking import get_masks
split_cpu(2)
from test_strategies import data, masked_model
mirrored = make_strategy("mirrored")
assert mirrored.num_replicas_in_sync == 2
single, distributed = masked_model(tf.distribute.get_strategy()), masked_model(mirrored)
single.fit(data(), epochs=1, steps_per_epoch=4, verbose=0)
loop.fit(distributed, mirrored, lambda context: per_worker_batches(data(), 8, context), 4)
for a, b in zip(single.get_weights(), distributed.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
assert not is_multi_worker(mirrored) and is_chief(mirrored)
masks = get_masks(distributed)
agreed = broadcast_from_chief(mirrored, masks)  # one process: the values come back unchanged
assert sorted(agreed) == sorted(masks) and all(np.array_equal(agreed[k], masks[k]) for k in masks)
# Evaluation split across both replicas equals one device's, for tensors and datasets with a partial batch.
from lottery_tf.engine.monitor import make_evaluator
rng = np.random.default_rng(2)
x = tf.constant(rng.normal(size=(101, 6)).astype("float32"))
y = tf.constant(rng.integers(0, 3, size=101))
on_one, on_two = make_evaluator(distributed, jit_compile=False), make_evaluator(distributed, strategy=mirrored)
for split in ((x, y), tf.data.Dataset.from_tensor_slices((x, y)).batch(16)):
    np.testing.assert_allclose(on_one(split), on_two(split), rtol=1e-5)
np.testing.assert_allclose(make_evaluator(distributed, chunk=7, strategy=mirrored)((x, y)), on_one((x, y)), rtol=1e-5)
print("ok", int(distributed.optimizer.iterations.numpy()))
"""


def test_loop_and_evaluation_under_mirrored_two_cpus_match_single_device():
    # Own process: one MirroredStrategy's collectives can break the next one's in the same process.
    result = launcher.run(
        [sys.executable, "-c", LOOP_UNDER_MIRRORED], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok 4"


def test_fingerprint_depends_on_the_pattern_only():
    masks = {"a/kernel": np.array([[1.0, 0.0], [1.0, 1.0]]), "b/kernel": np.array([0.0, 1.0])}
    same_pattern = {"b/kernel": np.array([0, 7]), "a/kernel": np.array([[0.5, 0.0], [2.0, 1.0]])}
    assert fingerprint(masks) == fingerprint(same_pattern)
    assert len(fingerprint(masks)) == 16
    flipped = {**masks, "b/kernel": np.array([1.0, 1.0])}
    renamed = {"c/kernel": masks["a/kernel"], "b/kernel": masks["b/kernel"]}
    assert len({fingerprint(masks), fingerprint(flipped), fingerprint(renamed)}) == 3


def test_discarding_writes_drops_writes_and_deletions(tmp_path):
    keep = tmp_path / "ckpt-00000010.json"
    keep.write_text("{}")
    with atomic.discarding_writes():
        assert not atomic.writes_enabled()
        atomic.write_json(tmp_path / "a.json", {"x": 1})
        atomic.write_npz(tmp_path / "b.npz", {"x": np.zeros(2)})
        with atomic.discarding_writes(False):  # an inner block cannot re-enable writes
            atomic.write_text(tmp_path / "c.txt", "no")
        checkpoint.remove_all(str(tmp_path))
    assert atomic.writes_enabled()
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000010.json"]
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").exists()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("not json", "Expecting value"),
        ('{"cluster": {"worker": ["localhost:1"]}}', "'task'"),
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker"}}', "'index'"),
    ],
)
def test_bad_tf_config_is_one_clear_error(monkeypatch, text, fragment):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(StrategyError, match="TF_CONFIG: expected JSON like") as error:
        cluster_from_environment()
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_tf_config_parsed(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_from_environment() is None
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')
    assert cluster_from_environment()["task"] == {"type": "worker", "index": 1}


def test_unreachable_tpu_fails_fast():
    with pytest.raises(StrategyError, match=r"--tpu: cannot reach grpc://127.0.0.1:9: "):
        make_strategy("tpu", "grpc://127.0.0.1:9")
    with pytest.raises(StrategyError, match="--tpu: --strategy=tpu needs"):
        make_strategy("tpu", "")


def cli(*args, env=None):
    return launcher.run(
        [sys.executable, "-m", "lottery_tf.main", "--flagfile=flags/smoke.flags", *args],
        cwd=REPO,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--strategy=tpu"], None, "error: --tpu: --strategy=tpu needs --tpu"),
        (
            ["--tpu=local"],
            None,
            "error: --tpu: local is set, but only --strategy=tpu reads it (this run has --strategy=default); remove it",
        ),
        (["--strategy=tpu", "--tpu=grpc://127.0.0.1:9"], None, "error: --tpu: cannot reach grpc://127.0.0.1:9"),
        (["--strategy=multi_worker_mirrored"], {"TF_CONFIG": '{"cluster": 3}'}, "error: TF_CONFIG: expected JSON like"),
        (
            ["--strategy=mirrored", "--cpu_devices=2", "--batch_size=61"],
            None,
            "error: --batch_size: 61 does not split evenly across the 2 replicas of --strategy=mirrored",
        ),
    ],
)
def test_strategy_errors_through_the_cli(tmp_path, args, env, message):
    result = cli(f"--output_dir={tmp_path / 'out'}", *args, env=env)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # nothing written


def test_config_error_names_tpu_flag():
    from lottery_tf.engine.config import ExperimentConfig, RunConfig, validate
    from lottery_tf.engine.data import DATASETS
    from lottery_tf.engine.models import MODELS

    with pytest.raises(ConfigError, match="^--tpu: "):
        validate(ExperimentConfig(run=RunConfig(strategy="tpu")), DATASETS.names(), MODELS)
