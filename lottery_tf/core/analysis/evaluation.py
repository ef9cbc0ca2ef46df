"""Instability analysis of a Keras model: its error along the linear path between two weight states.

The states are what :func:`lottery_tf.core.rewind.capture` returns (variable path
-> array, masks excluded); restoring one re-applies the model's masks, so the
interpolation of two pruned states is evaluated pruned.
"""

from __future__ import annotations

import numpy as np

from lottery_tf.core import gradients, rewind
from lottery_tf.core.analysis import batchnorm as batchnorm_lib
from lottery_tf.core.analysis.interpolation import error_along_path, summarize_path

BATCHNORM_MODES = ("reestimate", "interpolate")


def error_and_loss(predict, data, batch_size: int = 1000) -> tuple[float, float]:
    """(error, mean cross-entropy loss) of ``predict`` (images -> logits) on ``data``.

    Args:
        predict: A callable returning logits, e.g. a Keras model.
        data: ``(x, y)`` arrays, or a ``tf.data.Dataset`` of ``(x, y)`` batches.
        batch_size: For arrays.
    """
    if isinstance(data, tuple):
        x, y = data
        batches = ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
    else:
        batches = iter(data)
    wrong, loss, count = 0.0, 0.0, 0
    for images, labels in batches:
        batch_wrong, batch_loss, batch_count = gradients.error_and_loss_sums(predict(images), labels)
        wrong, loss, count = wrong + batch_wrong, loss + batch_loss, count + batch_count
    if not count:
        raise ValueError("no examples to evaluate")
    return wrong / count, float(np.float64(loss) / count)


class ModelEvaluator:
    """Evaluates weight states of one (masked) model on named datasets.

    Args:
        model: A built Keras model with logits as outputs (masks set).
        datasets: Name -> ``(x, y)`` arrays or a dataset of batches, e.g.
            ``{"test": ..., "train": ...}``; results are ``<name>_error`` and
            ``<name>_loss``.
        batchnorm_batches: Input batches to re-estimate BatchNorm statistics
            from at every state (``batchnorm="reestimate"``).
        batchnorm: ``reestimate`` or ``interpolate`` (statistics taken from
            the state, i.e. interpolated like the weights).

    Attributes:
        batchnorm: What was done with BatchNorm statistics: ``reestimate``,
            ``interpolate``, or ``none`` (the model has no BatchNorm).
        interpolated_keys: The state entries to interpolate (all but the
            BatchNorm statistics when they are re-estimated).

    Raises:
        ValueError: For an unknown ``batchnorm`` mode, or ``reestimate``
            without batches on a model with BatchNorm.

    Example:

    >>> evaluate = ModelEvaluator(model, {"test": (x_test, y_test)})  # doctest: +SKIP
    >>> evaluate(rewind.capture(model))  # doctest: +SKIP
    {'test_error': 0.11, 'test_loss': 0.34}
    """

    def __init__(self, model, datasets: dict, batchnorm_batches=(), batchnorm: str = "reestimate"):
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {batchnorm!r}")
        self.model, self.datasets = model, dict(datasets)
        statistics = batchnorm_lib.statistic_paths(model)
        self.batchnorm = batchnorm if statistics else "none"
        self.batches = list(batchnorm_batches)
        if self.batchnorm == "reestimate" and not self.batches:
            raise ValueError("re-estimating BatchNorm statistics needs training batches (batchnorm_batches)")
        keys = set(rewind.capture(model))
        self.interpolated_keys = keys - statistics if self.batchnorm == "reestimate" else keys
        self._predict = gradients.predictor(model)  # compiled: tf.function or jax.jit

    def __call__(self, state: dict) -> dict:
        rewind.restore(self.model, state)  # re-applies the masks
        if self.batchnorm == "reestimate":
            batchnorm_lib.reestimate(self.model, self.batches)
        out = {}
        for name, data in self.datasets.items():
            out[f"{name}_error"], out[f"{name}_loss"] = error_and_loss(self._predict, data)
        return out


def linear_path(evaluator: ModelEvaluator, state_a: dict, state_b: dict, points: int = 30) -> dict:
    """The instability analysis of two states: per dataset, the error along the path and its summary.

    Returns:
        ``{"alphas": [...], "batchnorm_statistics": ..., <name>: {"error": [...],
        "endpoint_errors", "instability", "barrier", "max_error_alpha", "loss": [...]}}``.
    """
    # States from older run folders are keyed by Keras paths: both ends by unique name.
    state_a, state_b = (rewind.check_matches(evaluator.model, s) for s in (state_a, state_b))
    coefficients, values = error_along_path(state_a, state_b, evaluator, points, keys=evaluator.interpolated_keys)
    out = {"alphas": [float(a) for a in coefficients], "batchnorm_statistics": evaluator.batchnorm}
    for name in evaluator.datasets:
        out[name] = {
            **summarize_path(coefficients, values[f"{name}_error"]),
            "loss": [float(v) for v in values[f"{name}_loss"]],
        }
    return out
