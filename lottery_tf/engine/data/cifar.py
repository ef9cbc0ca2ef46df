"""CIFAR-10 through TFDS, with the standard augmentation and per-channel normalization.

Training batches get a random 32x32 crop of the image padded by 4 pixels (the
padding is black, as in ``RandomCrop(32, padding=4)`` before normalization) and
a random horizontal flip. The randomness is stateless, keyed by (seed, step),
so a resumed run sees the same augmented batches. Images are normalized with the
training set's per-channel mean and standard deviation.
"""

from __future__ import annotations

import numpy as np

from lottery_tf.engine.config import DataConfig
from lottery_tf.engine.data.mnist import network_answers
from lottery_tf.engine.data.registry import DATASETS, DataUnavailableError, Splits, hold_out_validation, tfds_prepared

PAD = 4
HOW_TO_GET = (
    "prepare it with TFDS on a machine with network (`tfds build cifar10`, or "
    "`python -c \"import tensorflow_datasets as tfds; tfds.load('cifar10')\"`), copy its "
    "tensorflow_datasets folder here and pass --tfds_data_dir=FOLDER"
)


def make_augment(mean: np.ndarray, std: np.ndarray, pad: int = PAD):
    """The batch augmentation for normalized images of shape [B, H, W, C]."""
    import tensorflow as tf

    black = tf.constant((-mean / std).astype(np.float32))  # a black pixel after normalization

    def augment(images, seed):
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        # Zero padding plus black on the border only: interior pixels stay bit-exact.
        paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
        border = 1.0 - tf.pad(tf.ones_like(images[:1, :, :, :1]), paddings)
        padded = tf.pad(images, paddings) + border * black
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
        offsets = tf.random.stateless_uniform([batch, 2], seed=seeds[0], maxval=2 * pad + 1, dtype=tf.int32)
        rows = offsets[:, :1] + tf.range(height)[None, :]
        cols = offsets[:, 1:] + tf.range(width)[None, :]
        cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
        cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)
        flip = tf.random.stateless_uniform([batch], seed=seeds[1]) < 0.5
        return tf.where(flip[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)

    return augment


def _load_tfds(config: DataConfig):
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=config.tfds_data_dir or None)
    if not tfds_prepared(builder):
        if not (config.tfds_download and network_answers()):
            raise DataUnavailableError(f"cifar10 is not prepared in TFDS ({builder.data_dir}); {HOW_TO_GET}")
        try:
            builder.download_and_prepare()
        except Exception as error:  # TFDS raises many types; report any of them.
            raise DataUnavailableError(
                f"TFDS could not download cifar10 ({type(error).__name__}); {HOW_TO_GET}"
            ) from None
    arrays = {}
    for split in ("train", "test"):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        arrays[split] = (data["image"], data["label"].astype(np.int64))
    return arrays, f"tfds:cifar10 ({builder.data_dir})"


@DATASETS.register("cifar10")
def cifar10(config: DataConfig) -> Splits:
    arrays, source = _load_tfds(config)
    x_train, y_train = arrays["train"]
    x_test, y_test = arrays["test"]
    scaled = x_train.astype(np.float32) / 255.0
    mean = scaled.mean(axis=(0, 1, 2))
    std = scaled.std(axis=(0, 1, 2))

    def prep(images):
        return ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)

    x_train, y_train, x_val, y_val = hold_out_validation(prep(x_train), y_train, config.validation_examples)
    standardize = {"scale": 1 / 255, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    return Splits(
        x_train, y_train, x_val, y_val, prep(x_test), y_test, 10, source, make_augment(mean, std), x_test, standardize
    )
