"""The analysis maths of the later lottery-ticket papers, with no knowledge of run folders.

* :mod:`~lottery_tf.core.analysis.interpolation`: linear interpolation of two
  weight states, the error along the path, instability and barrier (Frankle
  et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", 2020).
* :mod:`~lottery_tf.core.analysis.distances`: L2 distance, normalized distance and
  angle between masked weights ("Stabilizing the Lottery Ticket Hypothesis",
  Frankle et al. 2019).
* :mod:`~lottery_tf.core.analysis.batchnorm`: re-estimating BatchNorm statistics
  of an interpolated network from fixed training batches.
"""

from lottery_tf.core.analysis.distances import angle_degrees, compare_weights, l2_distance, normalized_l2_distance
from lottery_tf.core.analysis.interpolation import (
    alphas,
    barrier,
    error_along_path,
    instability,
    interpolate,
    summarize_path,
)

__all__ = [
    "alphas",
    "angle_degrees",
    "barrier",
    "compare_weights",
    "error_along_path",
    "instability",
    "interpolate",
    "l2_distance",
    "normalized_l2_distance",
    "summarize_path",
]
