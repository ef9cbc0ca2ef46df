"""The dataset registry and the arrays a dataset provides."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping

import numpy as np

from lottery_tf.engine.config import DataConfig
from lottery_tf.engine.registry import Registry

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
    # The inputs as a user has them, for an exported model that takes them: the raw test images (uint8
    # pixels) and how the splits were made from them, x = (raw * scale - mean) / std (per channel).
    raw_x_test: np.ndarray | None = None
    standardize: dict | None = None  # {"scale": 1 / 255, "mean": [...], "std": [...]}

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


# What each dataset's loader returns, (input shape, classes), so the model can be checked before (or without)
# loading: ``--dry_run`` builds it for a study planned on a machine without the data.
_SHAPES = {"mnist": ((28, 28, 1), 10), "fashion_mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10)}


def nominal_shape(config: DataConfig) -> tuple[tuple, int] | None:
    """The (input shape, class count) ``config``'s dataset loads as, or None for a dataset that does not say.

    Example:

    >>> nominal_shape(DataConfig(name="cifar10"))
    ((32, 32, 3), 10)
    """
    if config.name == "synthetic":
        return tuple(config.synthetic_shape), config.synthetic_classes
    if config.name == "imagenet2012":
        return (config.image_size, config.image_size, 3), 1000
    return _SHAPES.get(config.name)


def train_examples(config: DataConfig) -> int:
    """Examples left for training after the validation split."""
    if config.name == "synthetic":
        return config.synthetic_train_examples - config.validation_examples
    return TRAIN_EXAMPLES[config.name] - config.validation_examples


def check_sizes(
    config: DataConfig,
    batch_size: int,
    branches=None,
    train: int | None = None,
    classes: int | None = None,
    class_counts=None,
) -> None:
    """The validation split must leave training data, and every batch and subset must fit in it.

    Before loading, the dataset's nominal size is used; after loading, pass
    ``train`` (the training examples actually loaded, after the validation
    split) and ``class_counts`` (training examples per class).

    Raises:
        ConfigError: Naming the flag, with the dataset's size.
    """
    from lottery_tf.engine.config import ConfigError

    if train is None:
        total = config.synthetic_train_examples if config.name == "synthetic" else TRAIN_EXAMPLES.get(config.name)
        if total is None:
            return
        if config.validation_examples >= total:
            raise ConfigError(
                "validation_examples",
                f"{config.validation_examples} leaves no training data: {config.name} has {total} training examples",
            )
        train = total - config.validation_examples
    where = f"the {train} training examples left after --validation_examples={config.validation_examples}"
    if batch_size > train:
        raise ConfigError("batch_size", f"{batch_size} is larger than {where}")
    if branches is None:
        return
    if branches.batch_size > train:
        raise ConfigError("branch_batch_size", f"{branches.batch_size} is larger than {where}")
    # The default (10,000) means "up to 10,000": only a size asked for explicitly must fit.
    default_subset = type(branches)().analysis_train_examples
    if (
        "instability" in branches.names
        and branches.analysis_train_examples != default_subset
        and branches.analysis_train_examples > train
    ):
        raise ConfigError("analysis_train_examples", f"{branches.analysis_train_examples} is more than {where}")
    if class_counts is not None and any(n in ("pai_snip", "pai_grasp") for n in branches.names):
        fewest = min(class_counts)
        if branches.scoring_examples_per_class > fewest:
            raise ConfigError(
                "scoring_examples_per_class",
                f"{branches.scoring_examples_per_class} per class is more "
                f"than the training split has: its smallest class has {fewest} examples",
            )


def check_content(splits) -> None:
    """What the loaded arrays must hold: examples in every split, finite inputs, integer labels in range.

    Raises:
        DataUnavailableError: Naming the split and where the data came from.
    """
    if not isinstance(splits, Splits):
        return  # streamed: checked by the reader, batch by batch
    for split, x, y in (
        ("training", splits.x_train, splits.y_train),
        ("validation", splits.x_val, splits.y_val),
        ("test", splits.x_test, splits.y_test),
    ):
        where = f"the {split} split of {splits.source}"
        if len(x) == 0:
            raise DataUnavailableError(f"{where} is empty")
        if len(x) != len(y):
            raise DataUnavailableError(f"{where} has {len(y)} labels for {len(x)} examples")
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise DataUnavailableError(f"{where} holds {bad} NaN or infinite input values")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataUnavailableError(f"{where} has labels of type {y.dtype}; expected integers")
        if y.size and (y.min() < 0 or y.max() >= splits.num_classes):
            raise DataUnavailableError(
                f"{where} has label values {int(y.min())}..{int(y.max())}, outside 0..{splits.num_classes - 1}"
            )


def class_counts(splits) -> list | None:
    """Training examples per class (in-memory splits), or None for streamed ones."""
    if not isinstance(splits, Splits):
        return None
    return [int(n) for n in np.bincount(splits.y_train, minlength=splits.num_classes)]


def tfds_prepared(builder) -> bool:
    """Whether TFDS holds a prepared copy of ``builder``'s dataset.

    TFDS's own check is asked only where the version folder exists: for a folder that does not,
    ``builder.is_prepared()`` logs "Variant folder ... has no dataset_info.json" (an absl warning the user
    would see at every load that then reads IDX files or says how to get the data).

    Args:
        builder: A ``tfds.core.DatasetBuilder``.

    Returns:
        True where ``builder.data_path`` exists and TFDS finds a prepared dataset in it.
    """
    return builder.data_path.exists() and builder.is_prepared()


def hold_out_validation(x, y, n_val: int, seed: int = 0):
    """Splits off ``n_val`` examples by a fixed permutation (same for all runs)."""
    if n_val >= len(x):
        raise ValueError(f"--validation_examples={n_val} leaves no training data ({len(x)} examples)")
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def get_splits(config: DataConfig) -> Splits:
    """Loads the dataset named by ``config.name``.

    Raises:
        ValueError: Unknown name (lists the valid names).
        DataUnavailableError: The data cannot be found or obtained, or what
            was found holds an empty split, NaN inputs or labels that are not
            integers of the classes.
    """
    splits = DATASETS.get(config.name)(config)
    check_content(splits)
    return splits


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
