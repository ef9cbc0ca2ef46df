"""The dataset registry and the arrays a dataset provides."""

from __future__ import annotations

import dataclasses

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


# Training-set sizes before the validation split, so lengths in epochs can be
# resolved (and checked) before any data is loaded.
TRAIN_EXAMPLES = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000}


def train_examples(config: DataConfig) -> int:
    """Examples left for training after the validation split."""
    if config.name == "synthetic":
        return config.synthetic_train_examples - min(config.validation_examples, config.synthetic_train_examples // 4)
    return TRAIN_EXAMPLES[config.name] - config.validation_examples


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
