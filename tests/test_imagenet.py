"""imagenet2012: the real TFDS builder prepared from tiny archives in the ILSVRC2012 layout; streaming input."""

import glob
import json
import os
import sys

import launcher
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from lottery_tf.engine import recipe
from lottery_tf.engine.config import ConfigError, DataConfig
from lottery_tf.engine.data import DataUnavailableError, StreamingSplits, get_splits
from lottery_tf.engine.data.fake_imagenet import make_archives
from lottery_tf.engine.data.imagenet_preprocessing import MEAN, STD

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
LOW = float(np.min((0 - np.array(MEAN)) / np.array(STD)))
HIGH = float(np.max((1 - np.array(MEAN)) / np.array(STD)))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(manual_dir, tfds_data_dir) with imagenet2012 prepared by TFDS from 24 training and 6 validation JPEGs."""
    root = tmp_path_factory.mktemp("imagenet")
    manual = make_archives(root / "manual")
    data_dir = str(root / "tfds")
    get_splits(DataConfig(name="imagenet2012", tfds_data_dir=data_dir, tfds_manual_dir=manual, validation_examples=4))
    return manual, data_dir


def splits_of(prepared, image_size=32, validation=4):
    return get_splits(
        DataConfig(
            name="imagenet2012", tfds_data_dir=prepared[1], validation_examples=validation, image_size=image_size
        )
    )


def test_the_nominal_shape_a_dry_run_checks_the_model_with_is_what_loads(prepared):
    from lottery_tf.engine.data.registry import nominal_shape

    for side in (32, 48):
        splits = splits_of(prepared, image_size=side)
        config = DataConfig(name="imagenet2012", image_size=side)
        assert nominal_shape(config) == (splits.input_shape, splits.num_classes) == ((side, side, 3), 1000)


def labels(batches):
    return [y.numpy().tolist() for _, y in batches]


def test_splits_sizes_shapes_and_labels(prepared):
    splits = splits_of(prepared)
    assert isinstance(splits, StreamingSplits)
    assert splits.sizes() == (20, 4, 6) and splits.input_shape == (32, 32, 3) and splits.num_classes == 1000
    assert splits.source.startswith("tfds:imagenet2012 (")
    test = list(splits.eval_batches["test"](4))
    assert [x.shape[0] for x, _ in test] == [4, 2] and test[0][0].shape[1:] == (32, 32, 3)
    # TFDS's validation label list, in file-name order (the first six lines of validation_labels.txt).
    test_labels = sorted(np.concatenate([y.numpy() for _, y in test]).tolist())
    assert len(test_labels) == 6 and all(0 <= label < 1000 for label in test_labels)
    val = np.concatenate([y.numpy() for _, y in splits.eval_batches["val"](3)])
    assert len(val) == 4 and set(val.tolist()) <= {0, 1, 2}
    for x, _ in test:
        assert LOW - 1e-4 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= HIGH + 1e-4


def test_train_stream_is_a_function_of_seed_and_step(prepared):
    splits = splits_of(prepared)
    first = list(splits.train_batches(4, 0).take(8))  # 5 batches per epoch: crosses into epoch 2
    again = list(splits.train_batches(4, 0).take(8))
    resumed = list(splits.train_batches(4, 0, skip_steps=3).take(5))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
    for a, b in zip(first[3:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # One epoch holds every training example once: 8 of each class minus the 4 held out.
    epoch = np.concatenate(labels(first[:5]))
    assert len(epoch) == 20 and sorted(np.bincount(epoch, minlength=3).tolist()) == sorted(
        np.bincount(
            np.concatenate(labels(first[5:8] + list(splits.train_batches(4, 0, 8).take(2)))), minlength=3
        ).tolist()
    )
    assert labels(first[:5]) != labels(first[5:8] + list(splits.train_batches(4, 0, 8).take(2)))  # reshuffled
    assert labels(list(splits.train_batches(4, 1).take(5))) != labels(first[:5])  # another seed
    # Augmentation: an example's crop depends on its position in the stream, not only on the image.
    assert first[0][0].shape == (4, 32, 32, 3)


def test_input_pipelines_decode_their_own_share(prepared):
    splits = splits_of(prepared)
    whole = list(splits.train_batches(4, 0, skip_steps=2).take(3))
    shares = [list(splits.train_batches(4, 0, skip_steps=2, pipeline=(p, 2)).take(3)) for p in (0, 1)]
    for step in range(3):
        np.testing.assert_array_equal(np.concatenate([shares[0][step][0], shares[1][step][0]]), whole[step][0])
    with pytest.raises(ValueError, match="--batch_size=5 is not divisible by the 2 input pipelines"):
        splits.train_batches(5, 0, pipeline=(0, 2))


def test_training_batches_and_evaluation_dispatch(prepared):
    splits = splits_of(prepared)
    x, y = next(iter(recipe.training_batches(splits, 4, 0, 1)))
    assert x.shape == (4, 32, 32, 3) and y.dtype == tf.int64
    evaluation = recipe.evaluation_splits(splits, 4)
    assert set(evaluation) == {"val", "test"} and all(isinstance(d, tf.data.Dataset) for d in evaluation.values())


def test_validation_size_checked(prepared):
    with pytest.raises(ConfigError, match="--validation_examples: 24 must be between 1 and 23"):
        splits_of(prepared, validation=24)


def test_missing_archives_say_how_to_get_them(tmp_path):
    config = DataConfig(name="imagenet2012", tfds_data_dir=str(tmp_path / "tfds"), tfds_manual_dir=str(tmp_path))
    with pytest.raises(DataUnavailableError) as error:
        get_splits(config)
    message = str(error.value)
    assert "lacks ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar" in message
    assert "--tfds_manual_dir=FOLDER" in message and "image-net.org" in message and "\n" not in message


def test_cli_trains_two_levels_on_prepared_imagenet(prepared, tmp_path):
    out = tmp_path / "runs"
    result = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            "--dataset=imagenet2012",
            f"--tfds_data_dir={prepared[1]}",
            "--validation_examples=4",
            "--image_size=32",
            "--model=resnet20",
            "--initializer=he_normal",
            "--optimizer=sgd",
            "--learning_rate=0.05",
            "--momentum=0.9",
            "--batch_size=4",
            "--iterations=12",
            "--eval_every=4",
            "--checkpoint_every=4",
            "--levels=1",
            "--pruning_method=global",
            "--output_pruning_fraction=0",
            "--rewind_step=4",
            "--jit_compile=false",
            f"--output_dir={out}",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: tfds:imagenet2012" in result.stdout and "train 20  val 4  test 6" in result.stdout
    (rep,) = glob.glob(str(out / "lottery_*" / "replicate_0"))
    level1 = json.load(open(os.path.join(rep, "level_01", "main", "metrics.json")))
    assert abs(level1["density"] - 0.8) < 0.01 and level1["iterations"] == [4, 8, 12]
    assert len(level1["curves"]["test"]["accuracy"]) == 3


def test_two_workers_decode_their_shares_and_match_one_process(prepared, tmp_path):
    from test_multi_worker import printed_masks, run_workers

    flags = (
        f"--tfds_data_dir={prepared[1]}",
        "--dataset=imagenet2012",
        "--validation_examples=4",
        "--image_size=32",
        "--model=lenet_300_100",
        "--optimizer=sgd",
        "--learning_rate=0.1",
        "--batch_size=4",
        "--iterations=12",
        "--eval_every=4",
        "--checkpoint_every=4",
        "--levels=1",
        "--rewind_step=4",
        "--jit_compile=false",
        "--steps_per_execution=1",
    )
    workers = run_workers(tmp_path, tmp_path / "multi", "imagenet", flags=flags)
    for code, log, _, _ in workers:
        assert code == 0, log[-3000:]
    single = launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *flags, f"--output_dir={tmp_path / 'single'}"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    expected = printed_masks(single.stdout)
    assert set(expected) == {(0, "main"), (1, "main")}
    assert printed_masks(workers[0][1]) == printed_masks(workers[1][1]) == expected


def test_no_archives_through_the_cli(tmp_path):
    result = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            "--flagfile=flags/imagenet_resnet50_rewind.flags",
            f"--tfds_data_dir={tmp_path / 'tfds'}",
            f"--output_dir={tmp_path / 'runs'}",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: --dataset=imagenet2012: imagenet2012 is not prepared in TFDS"
    )
    assert "no --tfds_manual_dir" in errors[0]
