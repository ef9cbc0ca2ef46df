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

from lottery_tf.data.registry import DATASETS, DataUnavailableError, Splits, StreamingSplits, get_splits, train_examples
from lottery_tf.data import cifar as _cifar  # noqa: F401  (registers datasets)
from lottery_tf.data import imagenet as _imagenet  # noqa: F401
from lottery_tf.data import mnist as _mnist  # noqa: F401
from lottery_tf.data import synthetic as _synthetic  # noqa: F401

__all__ = ["DATASETS", "DataUnavailableError", "Splits", "StreamingSplits", "get_splits", "train_examples"]
