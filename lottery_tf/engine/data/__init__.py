"""Dataset registry: ``get_splits(config)`` returns train/validation/test splits.

In memory (:class:`Splits`) for the small datasets; read from disk batch by
batch (:class:`StreamingSplits`) for ``imagenet2012``, which TFDS prepares
once from the ILSVRC2012 archives in ``--tfds_manual_dir``.
``cifar10`` comes from TFDS (prepared data, or a bounded download). MNIST-family
datasets are found, in order: an explicit ``--data_dir`` of IDX
files; data TFDS has already prepared; known local IDX folders (Debian's
``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``); and a
TFDS download, attempted only if the network answers within a few seconds.
"""

from lottery_tf.engine.data import cifar as _cifar  # noqa: F401  (registers datasets)
from lottery_tf.engine.data import imagenet as _imagenet  # noqa: F401
from lottery_tf.engine.data import mnist as _mnist  # noqa: F401
from lottery_tf.engine.data import synthetic as _synthetic  # noqa: F401
from lottery_tf.engine.data.registry import (
    DATASETS,
    DataUnavailableError,
    Splits,
    StreamingSplits,
    get_splits,
    train_examples,
)


def load(name: str = "fashion_mnist", validation_examples: int = 5000, **settings) -> Splits:
    """The train, validation and test arrays of a registered dataset, as the command line loads them.

    Args:
        name: A registered dataset (``fashion_mnist`` reads the IDX files Debian's
            ``dataset-fashion-mnist`` installs; no network needed).
        validation_examples: Training examples held out for validation.
        **settings: Other :class:`lottery_tf.engine.config.DataConfig` fields (``data_dir=...``).

    Returns:
        :class:`Splits`: ``x_train, y_train, x_val, y_val, x_test, y_test`` (float32
        images standardized with the training set's statistics, int64 labels).

    Raises:
        DataUnavailableError: If the data cannot be found; the message says how to get it.

    Example:

    >>> data = lottery_tf.engine.data.load("fashion_mnist")  # doctest: +SKIP
    >>> data.x_train.shape, data.x_test.shape  # doctest: +SKIP
    ((55000, 28, 28, 1), (10000, 28, 28, 1))
    """
    from lottery_tf.engine.config import DataConfig

    return get_splits(DataConfig(name=name, validation_examples=validation_examples, **settings))


__all__ = ["DATASETS", "DataUnavailableError", "Splits", "StreamingSplits", "get_splits", "load", "train_examples"]
