"""ImageNet (ILSVRC 2012) through TFDS, streamed from disk with the standard ResNet preprocessing.

TFDS prepares ``imagenet2012`` once (hours for the full archives) from
``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` in
``--tfds_manual_dir`` into ``--tfds_data_dir``; later runs read the prepared
TFRecord shards. Splits: ``train`` = TFDS ``train`` minus its last
``--validation_examples`` examples, ``val`` = those examples (early stopping),
``test`` = TFDS ``validation`` (the 50,000 images every paper reports on).

The training stream is a pure function of (seed, step), like the in-memory
pipeline, so rewinding and resuming replay the same batches: each epoch reads
the shards in a stateless permutation keyed by (seed, epoch), interleaves them,
and permutes windows of :data:`SHUFFLE_WINDOW` serialized records with stateless
keys; the crop and flip of example i are keyed by (seed, i). Records are
skipped (not decoded) when a run starts at step k. Decoding and augmentation
run in parallel (``num_parallel_calls=AUTOTUNE``) and batches are prefetched.
"""

from __future__ import annotations

import os

from lottery_tf.engine.config import ConfigError, DataConfig
from lottery_tf.engine.data.registry import DATASETS, DataUnavailableError, StreamingSplits, tfds_prepared

NAME = "imagenet2012"
NUM_CLASSES = 1000
SHUFFLE_WINDOW = 4096  # serialized records (~110 KB each): ~450 MB of memory
INTERLEAVE = 16  # shards read at once
ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
HOW_TO_GET = (
    "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org "
    "(an account is needed) into a folder and pass --tfds_manual_dir=FOLDER; TFDS prepares them once "
    "into --tfds_data_dir (or ~/tensorflow_datasets), after which --tfds_manual_dir is no longer needed"
)


def _builder(config: DataConfig):
    """The TFDS builder, prepared from the manual archives if needed.

    Raises:
        DataUnavailableError: Saying how to get the archives.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(NAME, data_dir=config.tfds_data_dir or None)
    if tfds_prepared(builder):
        return builder
    manual = config.tfds_manual_dir
    missing = [a for a in ARCHIVES if not (manual and os.path.isfile(os.path.join(manual, a)))]
    if missing:
        where = f"--tfds_manual_dir={manual!r} lacks {', '.join(missing)}" if manual else "no --tfds_manual_dir"
        raise DataUnavailableError(f"{NAME} is not prepared in TFDS ({builder.data_dir}) and {where}; {HOW_TO_GET}")
    print(f"preparing {NAME} from {manual} into {builder.data_dir} (once; hours for the full archives)", flush=True)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    except Exception as error:  # TFDS raises many types; report any of them in one line.
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataUnavailableError(
            f"TFDS could not prepare {NAME} from {manual} ({type(error).__name__}: {first})"
        ) from None
    return builder


def _split_files(builder, split: str):
    """(filenames, skips, takes) of the TFRecord shards making up ``split``."""
    instructions = builder.info.splits[split].file_instructions
    return (
        [os.fspath(i.filename) for i in instructions],
        [i.skip for i in instructions],
        [i.take for i in instructions],
    )


def _records(files, order=None):
    """Serialized records of the shard slices, in ``order`` (a tensor of indices) or as listed."""
    import tensorflow as tf

    names = tf.constant(files[0])
    skips = tf.constant(files[1], tf.int64)
    takes = tf.constant(files[2], tf.int64)
    if order is None:
        order = tf.range(len(files[0]), dtype=tf.int64)

    def read(i):
        return tf.data.TFRecordDataset(names[i]).skip(skips[i]).take(takes[i])

    return tf.data.Dataset.from_tensor_slices(order).interleave(
        read, cycle_length=INTERLEAVE, block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _decoder(builder):
    """serialized record -> (uint8 image HxWx3, int64 label)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    features = builder.info.features

    def decode(record):
        example = features.deserialize_example(record, decoders={"image": tfds.decode.SkipDecoding()})
        image = tf.io.decode_jpeg(example["image"], channels=3)
        return image, tf.cast(example["label"], tf.int64)

    return decode


def make_train_batches(builder, files, count: int, image_size: int, window: int = SHUFFLE_WINDOW):
    """The ``train_batches`` function of :class:`StreamingSplits` for these shard slices."""
    import tensorflow as tf

    from lottery_tf.engine.data import imagenet_preprocessing

    decode = _decoder(builder)
    shards = len(files[0])

    def train_batches(batch_size: int, seed: int, skip_steps: int = 0, pipeline: tuple = (0, 1)):
        index, pipelines = pipeline
        if batch_size % pipelines:
            raise ValueError(f"--batch_size={batch_size} is not divisible by the {pipelines} input pipelines")
        share = batch_size // pipelines
        first = skip_steps * batch_size
        start_epoch, offset = divmod(first, count)
        base = tf.constant(seed, tf.int64)

        def epoch_records(epoch):
            epoch_seed = tf.stack([base, epoch])
            order = tf.argsort(tf.random.stateless_uniform([shards], seed=epoch_seed))
            records = _records(files, tf.cast(order, tf.int64))

            def permute(window_index, window):
                keys = tf.random.stateless_uniform(
                    [tf.shape(window)[0]], seed=tf.random.experimental.stateless_fold_in(epoch_seed, window_index)
                )
                return tf.data.Dataset.from_tensor_slices(tf.gather(window, tf.argsort(keys)))

            return records.batch(window).enumerate().flat_map(permute)

        stream = (
            tf.data.Dataset.range(start_epoch, 2**62)
            .flat_map(epoch_records)
            .skip(offset)
            .enumerate(start=first)  # example number since step 0: keys its augmentation
        )
        if pipelines > 1:  # keep this pipeline's contiguous share of each global batch, before decoding
            low = index * share
            stream = stream.filter(lambda i, _: tf.logical_and(i % batch_size >= low, i % batch_size < low + share))

        def load(i, record):
            image, label = decode(record)
            crop_seed = tf.random.experimental.stateless_fold_in(tf.stack([base, tf.constant(0, tf.int64)]), i)
            return imagenet_preprocessing.train_preprocess(image, crop_seed, image_size), label

        return (
            stream.map(load, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(share, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    return train_batches


def make_eval_batches(builder, files, image_size: int):
    """An ``eval_batches`` function of :class:`StreamingSplits`: fixed order, every example."""
    import tensorflow as tf

    from lottery_tf.engine.data import imagenet_preprocessing

    decode = _decoder(builder)

    def eval_batches(batch_size: int):
        def load(record):
            image, label = decode(record)
            # Shorter side to 256/224 of the crop (256 for 224), as the standard evaluation.
            resize = round(image_size * imagenet_preprocessing.RESIZE / imagenet_preprocessing.SIZE)
            return imagenet_preprocessing.eval_preprocess(image, image_size, resize), label

        return (
            _records(files).map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
        )

    return eval_batches


@DATASETS.register(NAME)
def imagenet2012(config: DataConfig) -> StreamingSplits:
    builder = _builder(config)
    total = builder.info.splits["train"].num_examples
    held_out = config.validation_examples
    if not 0 < held_out < total:
        raise ConfigError("validation_examples", f"{held_out} must be between 1 and {total - 1} for {NAME}")
    train_split, val_split = f"train[:-{held_out}]", f"train[-{held_out}:]"
    size = config.image_size
    train_files = _split_files(builder, train_split)
    return StreamingSplits(
        train_batches=make_train_batches(builder, train_files, total - held_out, size),
        eval_batches={
            "val": make_eval_batches(builder, _split_files(builder, val_split), size),
            "test": make_eval_batches(builder, _split_files(builder, "validation"), size),
        },
        counts=(total - held_out, held_out, builder.info.splits["validation"].num_examples),
        input_shape=(size, size, 3),
        num_classes=NUM_CLASSES,
        source=f"tfds:{NAME} ({builder.data_dir})",
    )
