"""The dataset registry and the arrays a dataset provides."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Mapping

import numpy as np

from lottery_tf.config import DataConfig
from lottery_tf.registry import Registry

DATASETS = Registry("dataset")


class DataUnavailableError(RuntimeError):
    """The data cannot be found or obtained; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class Splits:
    """In-memory splits: float32 inputs, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str  # where the data came from, for the run's log
    # Optional training augmentation ``augment(images, seed) -> images`` on a batch,
    # with stateless randomness keyed by ``seed`` (a pair of int64s).
    augment: object = None

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> tuple[int, int, int]:
        """(train, validation, test) example counts."""
        return len(self.x_train), len(self.x_val), len(self.x_test)


@dataclasses.dataclass(frozen=True)
class StreamingSplits:
    """Splits read from disk batch by batch (datasets too large for memory).

    ``train_batches(batch_size, seed, skip_steps, pipeline=(0, 1))`` returns an
    endless ``tf.data.Dataset`` whose element i is global batch
    ``skip_steps + i``, a pure function of (seed, step); with ``pipeline=(p,
    n)`` it holds only input pipeline p's contiguous 1/n share of each global
    batch (multi-worker runs decode only their own examples).
    ``eval_batches[split](batch_size)`` returns the finite, fixed-order
    ``val`` or ``test`` split.
    """

    train_batches: Callable
    eval_batches: Mapping[str, Callable]
    counts: tuple  # (train, validation, test) example counts
    input_shape: tuple
    num_classes: int
    source: str  # augmentation happens inside train_batches

    def sizes(self) -> tuple[int, int, int]:
        return tuple(self.counts)


# Training-set sizes before the validation split, so lengths in epochs can be
# resolved (and checked) before any data is loaded.
TRAIN_EXAMPLES = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000, "imagenet2012": 1281167}


def train_examples(config: DataConfig) -> int:
    """Examples left for training after the validation split."""
    if config.name == "synthetic":
        return config.synthetic_train_examples - config.validation_examples
    return TRAIN_EXAMPLES[config.name] - config.validation_examples


def check_sizes(config: DataConfig, batch_size: int) -> None:
    """The validation split must leave training data, and a batch must fit in it.

    Raises:
        ConfigError: Naming the flag, with the dataset's size.
    """
    from lottery_tf.config import ConfigError

    total = config.synthetic_train_examples if config.name == "synthetic" else TRAIN_EXAMPLES.get(config.name)
    if total is None:
        return
    if config.validation_examples >= total:
        raise ConfigError("validation_examples", f"{config.validation_examples} leaves no training data: "
                          f"{config.name} has {total} training examples")
    if batch_size > total - config.validation_examples:
        raise ConfigError("batch_size", f"{batch_size} is larger than the {total - config.validation_examples} "
                          f"training examples left after --validation_examples={config.validation_examples}")


def hold_out_validation(x, y, n_val: int, seed: int = 0):
    """Splits off ``n_val`` examples by a fixed permutation (same for all runs)."""
    if n_val >= len(x):
        raise ValueError(
            f"--validation_examples={n_val} leaves no training data ({len(x)} examples)"
        )
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def get_splits(config: DataConfig) -> Splits:
    """Loads the dataset named by ``config.name``.

    Raises:
        ValueError: Unknown name (lists the valid names).
        DataUnavailableError: The data cannot be found or obtained.
    """
    return DATASETS.get(config.name)(config)


def splits_fingerprint(splits) -> str:
    """A short hash of the data a run trains and evaluates on.

    In-memory splits hash every array (values, shapes, dtypes, order), so the
    same files from another folder give the same fingerprint and a different
    copy, order or split gives another. Streamed splits hash their sizes and
    shapes (reading every image is too costly).
    """
    digest = hashlib.sha256()
    if isinstance(splits, Splits):
        for array in (splits.x_train, splits.y_train, splits.x_val, splits.y_val, splits.x_test, splits.y_test):
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(str(splits.num_classes).encode())
    else:
        digest.update(repr((tuple(splits.counts), tuple(splits.input_shape), splits.num_classes)).encode())
    return digest.hexdigest()[:16]
