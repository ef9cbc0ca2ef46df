"""Distances between two sets of masked weights (Frankle et al. 2019, "Stabilizing the LTH").

Weights are name -> array (the prunable weights, e.g.
:func:`lottery_tf.core.masking.get_prunable_weights`); ``masks`` (same names)
selects the entries compared: the distance is between m ⊙ W_a and m ⊙ W_b
over every masked layer, concatenated. Pure numpy, float64. Norms are summed by
numpy's own pairwise summation, not BLAS, whose result depends on its thread
count: the same weights give the same bits in any process (``--executor=ray``
workers run single-threaded BLAS).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _vector(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray] | None, names) -> np.ndarray:
    parts = []
    for name in names:
        w = np.asarray(weights[name], np.float64)
        if masks is not None:
            w = w * np.asarray(masks[name], np.float64)
        parts.append(w.ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def _norm(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(x * x)))


def _pair(a, b, masks):
    if sorted(a) != sorted(b):
        raise ValueError(f"the two weight sets name different weights: {sorted(set(a) ^ set(b))}")
    if masks is not None and not set(a) <= set(masks):
        raise ValueError(f"no mask for {sorted(set(a) - set(masks))}")
    names = sorted(a)
    return _vector(a, masks, names), _vector(b, masks, names)


def l2_distance(a: Mapping, b: Mapping, masks: Mapping | None = None) -> float:
    """‖m ⊙ a − m ⊙ b‖₂ over all named weights."""
    x, y = _pair(a, b, masks)
    return _norm(x - y)


def normalized_l2_distance(a: Mapping, b: Mapping, masks: Mapping | None = None) -> float:
    """‖m ⊙ a − m ⊙ b‖₂ / ‖m ⊙ a‖₂: the distance relative to the reference ``a``'s norm.

    Raises:
        ValueError: If the reference is all zero.
    """
    x, y = _pair(a, b, masks)
    norm = _norm(x)
    if norm == 0:
        raise ValueError("the reference weights are all zero: no normalized distance")
    return _norm(x - y) / norm


def angle_degrees(a: Mapping, b: Mapping, masks: Mapping | None = None) -> float:
    """The angle between m ⊙ a and m ⊙ b, in degrees (0 = same direction, 90 = orthogonal).

    Raises:
        ValueError: If either vector is all zero.
    """
    x, y = _pair(a, b, masks)
    nx, ny = _norm(x), _norm(y)
    if nx == 0 or ny == 0:
        raise ValueError("an all-zero weight vector has no angle")
    # 2·atan2(|u − v|, |u + v|) of the unit vectors: exact near 0 and 180 degrees, where arccos is not.
    u, v = x / nx, y / ny
    return float(np.degrees(2.0 * np.arctan2(_norm(u - v), _norm(u + v))))


def compare_weights(a: Mapping, b: Mapping, masks: Mapping | None = None) -> dict:
    """``l2_distance``, ``normalized_l2_distance`` (by ``a``'s norm), ``angle_degrees`` and both norms.

    The normalized distance and the angle are None where a vector is all zero.
    """
    x, y = _pair(a, b, masks)
    nx, ny = _norm(x), _norm(y)
    return {
        "l2_distance": l2_distance(a, b, masks),
        "normalized_l2_distance": normalized_l2_distance(a, b, masks) if nx else None,
        "angle_degrees": angle_degrees(a, b, masks) if nx and ny else None,
        "norm_a": float(nx),
        "norm_b": float(ny),
    }
