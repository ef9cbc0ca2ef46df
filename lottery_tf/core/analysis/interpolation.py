"""Linear mode connectivity: the error on the straight line between two weight states.

Pure functions of weights (name -> array) and an evaluation function; nothing
here knows Keras or run folders. Definitions (Frankle et al. 2020, §2):

* the path: W(α) = (1 − α)·W1 + α·W2 at ``points`` evenly spaced α in [0, 1];
* **instability** = max over α of error(W(α)) − mean(error(W1), error(W2)),
  the paper's measure (its "error barrier height"); two networks are *stable*
  (linearly mode connected) when it is below 2 percentage points (0.02);
* **barrier** = max over α of [error(W(α)) − ((1 − α)·error(W1) + α·error(W2))],
  the rise above the straight line joining the endpoint errors; >= 0 by
  construction (the endpoints lie on that line). It differs from instability
  only when the endpoint errors differ: for a convex error along the path the
  barrier is 0 (never above the chord), while instability is then exactly
  |error(W1) − error(W2)| / 2 >= 0 (the maximum of a convex function on a
  segment is at an endpoint), and <= 0 only when the endpoint errors are
  equal. Both are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


def alphas(points: int) -> np.ndarray:
    """``points`` evenly spaced interpolation coefficients from 0 to 1, both included.

    Raises:
        ValueError: If ``points`` < 2 (the path needs both endpoints).
    """
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 2:
        raise ValueError(f"interpolation points must be an integer >= 2 (both endpoints), got {points!r}")
    return np.linspace(0.0, 1.0, int(points))


def interpolate(first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray], alpha: float, keys=None) -> dict:
    """(1 − α)·first + α·second, entry by entry.

    Args:
        first, second: Weight states with the same names and shapes.
        alpha: The coefficient; 0 gives ``first``, 1 gives ``second``.
        keys: Names to interpolate; the others are taken from ``first``
            (e.g. BatchNorm statistics that are re-estimated instead). None = all.

    Raises:
        ValueError: If the names or shapes differ.
    """
    if sorted(first) != sorted(second):
        raise ValueError(f"the two states hold different weights: {sorted(set(first) ^ set(second))}")
    out = {}
    for name, a in first.items():
        b = second[name]
        if np.shape(a) != np.shape(b):
            raise ValueError(f"{name}: shapes {np.shape(a)} and {np.shape(b)} differ")
        if keys is None or name in keys:
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            out[name] = ((1.0 - alpha) * a64 + alpha * b64).astype(np.asarray(a).dtype)
        else:
            out[name] = np.array(a, copy=True)
    return out


def error_along_path(
    first, second, evaluate: Callable[[dict], Mapping[str, float]], points: int = 30, keys=None
) -> tuple[np.ndarray, dict]:
    """Evaluates ``evaluate(W(α))`` at ``points`` evenly spaced α.

    Args:
        first, second: The endpoint states.
        evaluate: State -> named numbers (e.g. ``{"test_error": 0.1, "train_error": 0.05}``).
        points: How many α (>= 2).
        keys: Passed to :func:`interpolate`.

    Returns:
        (alphas, {name: array of values along the path}).
    """
    coefficients = alphas(points)
    values: dict = {}
    for alpha in coefficients:
        for name, value in evaluate(interpolate(first, second, float(alpha), keys)).items():
            values.setdefault(name, []).append(float(value))
    return coefficients, {name: np.asarray(v) for name, v in values.items()}


def instability(errors) -> float:
    """max(errors) − mean of the two endpoint errors (the first and last values)."""
    errors = np.asarray(errors, np.float64)
    if errors.ndim != 1 or len(errors) < 2:
        raise ValueError(f"expected the errors at >= 2 points of a path, got shape {errors.shape}")
    return float(errors.max() - 0.5 * (errors[0] + errors[-1]))


def barrier(coefficients, errors) -> float:
    """max over the path of the error above the straight line between the endpoint errors."""
    coefficients, errors = np.asarray(coefficients, np.float64), np.asarray(errors, np.float64)
    if coefficients.shape != errors.shape or len(errors) < 2:
        raise ValueError(f"expected as many coefficients as errors (>= 2), got {coefficients.shape} and {errors.shape}")
    line = (1.0 - coefficients) * errors[0] + coefficients * errors[-1]
    return float((errors - line).max())


def summarize_path(coefficients, errors) -> dict:
    """The numbers of one path: errors, endpoint errors, instability, barrier, where the maximum is."""
    errors = np.asarray(errors, np.float64)
    return {
        "error": [float(e) for e in errors],
        "endpoint_errors": [float(errors[0]), float(errors[-1])],
        "instability": instability(errors),
        "barrier": barrier(coefficients, errors),
        "max_error_alpha": float(np.asarray(coefficients)[int(errors.argmax())]),
    }
