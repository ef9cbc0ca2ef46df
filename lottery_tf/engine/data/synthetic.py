"""A synthetic, learnable classification dataset for tests and smoke runs."""

from __future__ import annotations

import numpy as np

from lottery_tf.engine.config import DataConfig
from lottery_tf.engine.data.registry import DATASETS, Splits, hold_out_validation

NOISE = 6.0  # per-pixel noise std; prototypes have std 1


@DATASETS.register("synthetic")
def synthetic(config: DataConfig) -> Splits:
    """Noisy copies of one random prototype image per class (learnable, not trivial).

    Any image shape (``synthetic_shape``) and class count (``synthetic_classes``),
    so every model can be exercised without data.
    """
    rng = np.random.default_rng(1234)
    n_train, n_test = config.synthetic_train_examples, config.synthetic_test_examples
    shape, classes = tuple(config.synthetic_shape), config.synthetic_classes
    prototypes = rng.normal(size=(classes,) + shape).astype(np.float32)
    y = rng.integers(0, classes, size=n_train + n_test).astype(np.int64)
    noise = rng.normal(scale=NOISE, size=(n_train + n_test,) + shape).astype(np.float32)
    x = prototypes[y] + noise
    # Exactly the requested validation size (the run's identity records it); too
    # large a value is refused when the settings are checked.
    x_train, y_train, x_val, y_val = hold_out_validation(x[:n_train], y[:n_train], config.validation_examples)
    return Splits(x_train, y_train, x_val, y_val, x[n_train:], y[n_train:], classes, "synthetic")
