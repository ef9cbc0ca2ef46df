"""Datasets: IDX files, Debian's Fashion-MNIST, a real TFDS builder, synthetic, errors."""

import gzip
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from lottery_tf.engine.config import DataConfig
from lottery_tf.engine.data import DATASETS, DataUnavailableError, cifar, get_splits, idx, mnist

DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"


def write_idx_folder(folder, n_train=30, n_test=10, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    suffix = ".gz" if gz else ""
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) + 3) % 10,
    }
    for stem, array in data.items():
        idx.write_idx(os.path.join(folder, stem + suffix), array)
    return data


@pytest.fixture(autouse=True)
def no_network_no_default_folders(monkeypatch, tmp_path):
    # Tests never download and never see the machine's own data unless they ask.
    monkeypatch.setattr(mnist, "network_answers", lambda *a, **k: False)
    monkeypatch.setattr(cifar, "network_answers", lambda *a, **k: False)
    monkeypatch.setenv(mnist.SEARCH_ENV, str(tmp_path / "nowhere"))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    written = write_idx_folder(str(tmp_path), gz=gz)
    loaded = idx.load_folder(str(tmp_path))
    np.testing.assert_array_equal(loaded["train"][0], written["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(loaded["test"][1], written["t10k-labels-idx1-ubyte"])


def test_idx_header_literal(tmp_path):
    path = str(tmp_path / "x")
    idx.write_idx(path, np.array([[1, 2, 3], [4, 5, 6]]))
    assert open(path, "rb").read() == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])


def test_malformed_idx_files_named_in_errors(tmp_path):
    write_idx_folder(str(tmp_path))
    truncated = tmp_path / "train-labels-idx1-ubyte.gz"
    with gzip.open(truncated, "wb") as handle:
        handle.write(bytes([0, 0, 8, 1, 0, 0, 0, 30]) + bytes(5))
    with pytest.raises(idx.IdxError, match="train-labels-idx1-ubyte.gz has 13 bytes"):
        idx.load_folder(str(tmp_path))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(idx.IdxError, match="t10k-images"):
        idx.read_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"))
    os.remove(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(idx.IdxError, match=r"t10k-images-idx3-ubyte\[.gz\] not found"):
        idx.find_file(str(tmp_path), "t10k-images-idx3-ubyte")


def _write_float_images(path, images):
    array = np.ascontiguousarray(images, ">f4")
    header = bytes([0, 0, 0x0D, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def test_float_pixels_in_0_to_1_are_refused_and_0_to_255_read_as_uint8_pixels(tmp_path):
    """Issue 30, item 5a: 0..1 floats were read as 0..255 pixels; training matched (standardization undoes the
    scale) but the recorded preprocessing (mean 0.002 on a 0..255 scale) did not, so exports misread real pixels."""
    written = write_idx_folder(str(tmp_path / "unit"), n_train=30, n_test=10)
    _write_float_images(str(tmp_path / "unit" / "t10k-images-idx3-ubyte.gz"), written["t10k-images-idx3-ubyte"] / 255)
    with pytest.raises(idx.IdxError) as info:
        idx.load_folder(str(tmp_path / "unit"))
    assert str(info.value) == (
        f"{tmp_path / 'unit' / 't10k-images-idx3-ubyte.gz'}: the file holds 0..1 values (float32 pixels 0..1) where "
        "0..255 is expected (MNIST-format images are 8-bit pixels): multiply by 255 and write them as 0..255"
    )
    _write_float_images(str(tmp_path / "unit" / "t10k-images-idx3-ubyte.gz"), written["t10k-images-idx3-ubyte"])
    as_floats = get_splits(DataConfig(name="mnist", data_dir=str(tmp_path / "unit"), validation_examples=5))
    write_idx_folder(str(tmp_path / "bytes"), n_train=30, n_test=10)
    as_bytes = get_splits(DataConfig(name="mnist", data_dir=str(tmp_path / "bytes"), validation_examples=5))
    np.testing.assert_allclose(as_floats.x_test, as_bytes.x_test, atol=1e-6)
    assert as_floats.standardize == as_bytes.standardize


@pytest.mark.parametrize("same", [True, False])
def test_a_plain_and_a_gz_copy_must_hold_the_same_data(tmp_path, monkeypatch, same):
    """Issue 30, item 5b: the plain file was read and a different .gz beside it ignored."""
    folder = str(tmp_path / "data")
    written = write_idx_folder(folder, n_train=30, n_test=10)
    labels = written["train-labels-idx1-ubyte"] if same else (written["train-labels-idx1-ubyte"] + 1) % 10
    idx.write_idx(os.path.join(folder, "train-labels-idx1-ubyte"), labels)
    plain = os.path.join(folder, "train-labels-idx1-ubyte")
    if same:
        np.testing.assert_array_equal(idx.load_folder(folder)["train"][1], labels)
        return
    message = f"{plain} and {plain}.gz are both there and hold different data (the .gz file decompressed)"
    with pytest.raises(idx.IdxError, match=f"^{re.escape(message)}"):
        idx.load_folder(folder)
    assert idx.has_idx_files(folder)  # found by the search, then refused by name (not skipped silently)
    monkeypatch.setenv(mnist.SEARCH_ENV, folder)
    with pytest.raises(DataUnavailableError, match=f"^{re.escape(message)}.*; fix or remove it, or pass --data_dir$"):
        get_splits(DataConfig(name="mnist", validation_examples=5, tfds_data_dir=str(tmp_path / "tfds")))


def test_training_labels_of_one_class_are_refused(tmp_path):
    """Issue 30, item 5c: refused, not warned: a network trained on one class learns a constant output."""
    write_idx_folder(str(tmp_path), n_train=30, n_test=10)
    idx.write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.full(30, 4))
    one_class = r"train-labels-idx1-ubyte.gz: the training labels hold one class only \(all 30 are 4\)"
    with pytest.raises(idx.IdxError, match=one_class):
        idx.load_folder(str(tmp_path))
    idx.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.full(10, 4))  # a test split of one class is read
    idx.write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.arange(30) % 2)
    assert idx.load_folder(str(tmp_path))["test"][1].tolist() == [4] * 10


def test_explicit_data_dir_is_used_with_validation_split(tmp_path):
    write_idx_folder(str(tmp_path), n_train=30, n_test=10)
    splits = get_splits(DataConfig(name="mnist", data_dir=str(tmp_path), validation_examples=5))
    assert splits.x_train.shape == (25, 28, 28, 1) and splits.x_val.shape == (5, 28, 28, 1)
    assert splits.x_test.shape == (10, 28, 28, 1)
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int64
    # Standardized with the training set's statistics.
    full = np.concatenate([splits.x_train, splits.x_val])
    assert abs(full.mean()) < 1e-5 and abs(full.std() - 1) < 1e-4
    np.testing.assert_array_equal(splits.y_test, (np.arange(10) + 3) % 10)
    assert splits.source == f"idx:{tmp_path}"


def test_bad_explicit_data_dir_names_the_flag(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataUnavailableError, match="--data_dir: .*train-images-idx3-ubyte.*not found"):
        get_splits(DataConfig(name="fashion_mnist", data_dir=str(tmp_path / "empty")))


def test_folder_found_without_a_path(tmp_path, monkeypatch):
    write_idx_folder(str(tmp_path / "datasets" / "fashion-mnist"))
    monkeypatch.setenv(mnist.SEARCH_ENV, str(tmp_path / "datasets"))
    splits = get_splits(DataConfig(name="fashion_mnist", validation_examples=5, tfds_data_dir=str(tmp_path / "tfds")))
    assert splits.source == f"idx:{tmp_path / 'datasets' / 'fashion-mnist'}"


def test_nothing_found_error_says_both_ways(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        get_splits(DataConfig(name="fashion_mnist", tfds_data_dir=str(tmp_path / "tfds")))
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data_dir" in message
    assert "tfds build fashion_mnist" in message


def test_debian_fashion_mnist_found_by_default(monkeypatch, tmp_path):
    # The project's setup installs Debian's dataset-fashion-mnist; this is the real file set.
    assert idx.has_idx_files(DEBIAN_FOLDER), "run tools/setup.sh (installs dataset-fashion-mnist)"
    monkeypatch.delenv(mnist.SEARCH_ENV)
    splits = get_splits(DataConfig(name="fashion_mnist", tfds_data_dir=str(tmp_path / "tfds")))
    assert splits.source == f"idx:{DEBIAN_FOLDER}"
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (55000, 5000, 10000)
    assert np.bincount(splits.y_test).tolist() == [1000] * 10


def test_keras_imported_first_then_fashion_mnist_from_idx_files_prints_nothing(tmp_path):
    # A user's script: keras, then lottery_tf, then the Debian IDX files. TensorFlow's own start-up lines come
    # with `import keras`, before lottery_tf runs; from `import lottery_tf` on, stderr stays empty: TFDS is
    # not asked about a folder that does not exist (it logged "Variant folder ... has no dataset_info.json").
    script = (
        "import sys\n"
        "import keras\n"
        "print('== lottery_tf', file=sys.stderr, flush=True)\n"
        "import lottery_tf\n"
        "print(lottery_tf.load_data('fashion_mnist').source)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (mnist.SEARCH_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "TFDS_DATA_DIR": str(tmp_path / "tfds")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == f"idx:{DEBIAN_FOLDER}\n"
    assert result.stderr.split("== lottery_tf\n", 1)[1] == ""


def test_real_tfds_builder_reads_prepared_data(tmp_path):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    builder = tfds.builder("mnist")

    def split(n):
        return tf.data.Dataset.from_tensor_slices(
            {"image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), "label": np.arange(n) % 10}
        )

    data_dir = str(tmp_path / "tfds")
    tfds.dataset_builders.store_as_tfds_dataset(
        name="mnist",
        version=str(builder.version),
        features=builder.info.features,
        split_datasets={"train": split(40), "test": split(20)},
        data_dir=data_dir,
    )
    write_idx_folder(str(tmp_path / "idx"))  # TFDS's prepared copy wins over the search path
    splits = get_splits(DataConfig(name="mnist", tfds_data_dir=data_dir, validation_examples=10))
    assert splits.source.startswith("tfds:mnist")
    assert len(splits.x_train) == 30 and len(splits.x_test) == 20
    assert sorted(splits.y_test.tolist()) == sorted((np.arange(20) % 10).tolist())


def test_synthetic_is_deterministic_and_learnable_shape():
    config = DataConfig(
        name="synthetic", synthetic_train_examples=200, synthetic_test_examples=50, validation_examples=40
    )
    a, b = get_splits(config), get_splits(config)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert (
        a.x_train.shape == (160, 28, 28, 1) and a.x_val.shape == (40, 28, 28, 1) and a.x_test.shape == (50, 28, 28, 1)
    )
    assert a.num_classes == 10 and set(np.unique(a.y_train)) <= set(range(10))


def test_registry_lists_valid_names():
    assert DATASETS.names() == ["cifar10", "fashion_mnist", "imagenet2012", "mnist", "synthetic"]
    with pytest.raises(
        ValueError,
        match="unknown dataset 'cifar'; expected one of: cifar10, fashion_mnist, imagenet2012, mnist, synthetic",
    ):
        DATASETS.get("cifar")


def test_cifar_augmentation_crops_flips_deterministically():
    import tensorflow as tf

    mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    augment = cifar.make_augment(mean, std)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 32, 32, 3)).astype(np.float32)
    seed = tf.constant([7, 3], tf.int64)
    out = augment(tf.constant(images), seed).numpy()
    assert out.shape == images.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, augment(tf.constant(images), seed).numpy())  # stateless
    assert not np.array_equal(out, augment(tf.constant(images), tf.constant([7, 4], tf.int64)).numpy())
    black = -mean / std
    padded = np.broadcast_to(black, (64, 40, 40, 3)).copy()
    padded[:, 4:36, 4:36] = images
    flips = 0
    offsets = set()
    for i in range(64):
        matches = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (False, True)
            if np.array_equal(
                out[i], (padded[i, dy : dy + 32, dx : dx + 32][:, ::-1] if f else padded[i, dy : dy + 32, dx : dx + 32])
            )
        ]
        assert matches, f"image {i} is not a (flipped) 32x32 window of the padded image"
        flips += matches[0][2]
        offsets.add(matches[0][:2])
    assert 16 < flips < 48  # about half
    assert len(offsets) > 20  # crops vary per image
    # Values come only from the image or the black border.
    assert set(np.unique(out[..., 0])) <= set(np.unique(images[..., 0])) | {np.float32(black[0])}


def test_cifar10_through_a_real_tfds_builder(tmp_path):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    builder = tfds.builder("cifar10")

    def split(n):
        return tf.data.Dataset.from_tensor_slices(
            {
                "id": [f"x{i}" for i in range(n)],
                "image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                "label": np.arange(n) % 10,
            }
        )

    data_dir = str(tmp_path / "tfds")
    tfds.dataset_builders.store_as_tfds_dataset(
        name="cifar10",
        version=str(builder.version),
        features=builder.info.features,
        split_datasets={"train": split(60), "test": split(20)},
        data_dir=data_dir,
    )
    splits = get_splits(DataConfig(name="cifar10", tfds_data_dir=data_dir, validation_examples=10))
    assert splits.source.startswith("tfds:cifar10")
    assert splits.x_train.shape == (50, 32, 32, 3) and splits.x_test.shape == (20, 32, 32, 3)
    full = np.concatenate([splits.x_train, splits.x_val])
    np.testing.assert_allclose(full.mean(axis=(0, 1, 2)), 0, atol=1e-5)  # per-channel normalization
    np.testing.assert_allclose(full.std(axis=(0, 1, 2)), 1, atol=1e-4)
    assert splits.augment is not None


def test_cifar10_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        get_splits(DataConfig(name="cifar10", tfds_data_dir=str(tmp_path / "tfds")))
    assert "tfds build cifar10" in str(info.value) and "--tfds_data_dir" in str(info.value)


def test_nominal_shapes_are_what_the_loaders_return(tmp_path):
    """``--dry_run`` builds the model for these shapes without loading: each must be what a run loads."""
    import tensorflow_datasets as tfds

    from lottery_tf.engine.data import DATASETS
    from lottery_tf.engine.data.registry import nominal_shape

    assert all(nominal_shape(DataConfig(name=name)) is not None for name in DATASETS.names())  # a new one says
    odd = DataConfig(name="synthetic", synthetic_shape=(5, 7, 2), synthetic_classes=3, validation_examples=5)
    splits = get_splits(odd)
    assert nominal_shape(odd) == (splits.input_shape, splits.num_classes) == ((5, 7, 2), 3)
    for name in ("mnist", "fashion_mnist"):
        write_idx_folder(tmp_path / name)
        config = DataConfig(name=name, data_dir=str(tmp_path / name), validation_examples=5)
        splits = get_splits(config)
        assert nominal_shape(config) == (splits.input_shape, splits.num_classes) == ((28, 28, 1), 10)
    features = tfds.builder("cifar10").info.features  # no CIFAR-10 here: TFDS's description of what it holds
    assert nominal_shape(DataConfig(name="cifar10")) == (features["image"].shape, features["label"].num_classes)
