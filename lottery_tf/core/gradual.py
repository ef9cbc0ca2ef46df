"""Gradual magnitude pruning (Zhu & Gupta 2017) with TensorFlow Model Optimization's semantics.

The schedule is TFMOT's ``PolynomialDecay``: sparsity
s(t) = s_f + (s_i − s_f)·(1 − p)^power with p = clip((t − begin)/(end − begin), 0, 1),
masks updated when begin <= t <= end and (t − begin) % frequency == 0. As in
TFMOT, t counts training steps from 1: the update before the t-th batch uses
step t and the weights after t − 1 optimizer steps. Each masked weight is
pruned on its own to s(t) with TFMOT's rule: keep the k = max(round(n·(1 − s)), 1)
largest magnitudes, every weight tied with the k-th included.

The maths are pure functions (float32, as TFMOT computes them);
:class:`GradualPruningCallback` applies them inside ``model.fit``.
``schedule="tfmot"`` takes the sparsity values from TFMOT's own
``PolynomialDecay`` object, computed in a subprocess (TFMOT loads legacy
Keras, ``tf_keras``, into any process that imports it; the core never does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from lottery_tf.core import rewind
from lottery_tf.core.keras_compat import execution_problem, keras
from lottery_tf.core.masking import get_masks, masked_weights, retrace_training, set_masks

SCHEDULES = ("lottery_tf", "tfmot")


def should_prune(step: int, begin: int, end: int, frequency: int) -> bool:
    """Whether masks are updated at (1-based) step ``step``; ``end`` < 0 prunes forever."""
    return step >= begin and (step <= end or end < 0) and (step - begin) % frequency == 0


def polynomial_sparsity(step: int, initial: float, final: float, begin: int, end: int, power: int = 3) -> np.float32:
    """TFMOT's polynomial decay sparsity at ``step``, in float32 arithmetic as TFMOT computes it."""
    f32 = np.float32
    p = np.minimum(f32(1.0), np.maximum(f32(0.0), f32(step - begin) / f32(end - begin)))
    return f32(f32(initial - final) * np.power(f32(1.0) - p, f32(power)) + f32(final))


def tfmot_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """TFMOT's magnitude mask: the k = max(round(n·(1 − s)), 1) largest |w| and every weight tied with the k-th.

    Pruned weights are zero, so they stay pruned unless the threshold itself is
    zero (then TFMOT keeps the zeros too: fewer than k weights are non-zero).
    """
    magnitudes = np.abs(np.asarray(weights, np.float32)).ravel()
    k = max(int(np.round(np.float32(magnitudes.size) * (np.float32(1.0) - np.float32(sparsity)))), 1)
    order = np.argsort(-magnitudes, kind="stable")
    threshold = magnitudes[order[k - 1]]
    keep = magnitudes >= threshold
    keep[order[k - 1]] = True
    return keep.reshape(np.shape(weights)).astype(np.float32)


_TFMOT_TABLE = """
import json, sys
import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule
a = json.loads(sys.argv[1])
schedule = pruning_schedule.PolynomialDecay(a["initial"], a["final"], a["begin"], a["end"], power=a["power"], frequency=a["frequency"])
prune, sparsity = schedule(tf.range(a["steps"] + 2, dtype=tf.int64))
print(json.dumps({"prune": [bool(v) for v in prune.numpy()], "sparsity": [float(v) for v in sparsity.numpy()]}))
"""


class TfmotUnavailableError(ValueError):
    """``schedule="tfmot"`` without the optional extra ``lottery_tf[tfmot]``."""


def tfmot_schedule_table(
    initial: float, final: float, begin: int, end: int, frequency: int, steps: int, power: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """TFMOT's own ``PolynomialDecay`` at steps 0..steps+1 (should-prune flags, sparsities), from a subprocess.

    Raises:
        TfmotUnavailableError: If ``tensorflow_model_optimization`` cannot be imported.
    """
    arguments = json.dumps(
        {
            "initial": initial,
            "final": final,
            "begin": begin,
            "end": end,
            "frequency": frequency,
            "steps": steps,
            "power": power,
        }
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}
    result = subprocess.run([sys.executable, "-c", _TFMOT_TABLE, arguments], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        missing = any(
            f"No module named '{name}" in result.stderr for name in ("tensorflow_model_optimization", "tf_keras")
        )
        raise TfmotUnavailableError(
            "TFMOT's schedule needs the optional extra: pip install 'lottery_tf[tfmot]' "
            "(tensorflow-model-optimization and tf-keras)"
            if missing
            else f"TFMOT's PolynomialDecay failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}"
        )
    table = json.loads(result.stdout.strip().splitlines()[-1])
    return np.asarray(table["prune"], bool), np.asarray(table["sparsity"], np.float32)


class GradualPruningCallback(keras.callbacks.Callback):
    """Gradual magnitude pruning inside ``model.fit``, beside :class:`~lottery_tf.core.callbacks.PruneRewindCallback`.

    Every masked weight is pruned on its own to the schedule's sparsity (as
    TFMOT does), at the steps the schedule says, before that step's batch.

    Args:
        final_sparsity: Sparsity at ``end_step`` and after, in [0, 1).
        begin_step: First (1-based) step that may prune.
        end_step: Last step that may prune.
        frequency: Prune every ``frequency`` steps from ``begin_step``.
        initial_sparsity: Sparsity of the schedule at ``begin_step``.
        power: The polynomial's exponent (3, as Zhu & Gupta and TFMOT).
        schedule: ``lottery_tf`` (the pure function) or ``tfmot`` (TFMOT's
            own ``PolynomialDecay``, evaluated in a subprocess; needs the
            ``tfmot`` extra) for the sparsity values.

    Raises:
        ValueError: For sparsities outside [0, 1) or decreasing, steps or
            frequency < 1, ``end_step`` <= ``begin_step``, a frequency that
            never lands on ``end_step``, ``power`` <= 0, an unknown schedule
            (one line each, as the command line's checks).

    Example:

    >>> model = lottery_tf.wrap_model(build())  # doctest: +SKIP
    >>> gmp = GradualPruningCallback(0.9, begin_step=100, end_step=1000, frequency=100)  # doctest: +SKIP
    >>> model.fit(data, epochs=3, callbacks=[gmp])  # doctest: +SKIP
    """

    def __init__(
        self,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        frequency: int,
        initial_sparsity: float = 0.0,
        power: int = 3,
        schedule: str = "lottery_tf",
    ):
        super().__init__()
        for name, value in (("final_sparsity", final_sparsity), ("initial_sparsity", initial_sparsity)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        for name, value in (("begin_step", begin_step), ("end_step", end_step), ("frequency", frequency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if end_step <= begin_step:
            raise ValueError(
                f"begin_step ({begin_step}) must be < end_step ({end_step}): the schedule runs between them"
            )
        if (end_step - begin_step) % frequency:
            raise ValueError(
                f"end_step - begin_step ({end_step - begin_step}) is not a multiple of frequency ({frequency}): "
                "the schedule would never reach final_sparsity (pruning happens only at begin_step + n * frequency)"
            )
        if initial_sparsity > final_sparsity:
            raise ValueError(f"initial_sparsity ({initial_sparsity}) must be <= final_sparsity ({final_sparsity})")
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
            raise ValueError(f"power must be a number > 0, got {power!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        self.final_sparsity, self.initial_sparsity = float(final_sparsity), float(initial_sparsity)
        self.begin_step, self.end_step, self.frequency, self.power = begin_step, end_step, frequency, power
        self.schedule = schedule
        self._table = None
        self.updates = []  # (step, sparsity) of every mask update made

    def sparsity_at(self, step: int) -> tuple[bool, float]:
        """(should prune, sparsity) at 1-based ``step``."""
        if self.schedule == "tfmot":
            if self._table is None or step >= len(self._table[0]):
                self._table = tfmot_schedule_table(
                    self.initial_sparsity,
                    self.final_sparsity,
                    self.begin_step,
                    self.end_step,
                    self.frequency,
                    max(step, self.end_step) + 1,
                    self.power,
                )
            return bool(self._table[0][step]), float(self._table[1][step])
        return (
            should_prune(step, self.begin_step, self.end_step, self.frequency),
            float(
                polynomial_sparsity(
                    step, self.initial_sparsity, self.final_sparsity, self.begin_step, self.end_step, self.power
                )
            ),
        )

    def on_train_begin(self, logs=None):
        masked_weights(self.model)  # a clear error now if nothing is masked
        retrace_training(self.model, only_if_stale=True)  # JAX: masks assigned since the step was traced
        # It prunes before 1-based step t = begin_step + j * frequency: at batch begin, after optimizer step t - 1.
        start = rewind.global_step(self.model.optimizer)
        params = self.params or {}
        last = self.end_step if self.end_step >= 0 else start + (params.get("steps") or 0) * (params.get("epochs") or 1)
        steps = range(self.begin_step - 1, last, self.frequency)
        if problem := execution_problem(self.model, self.params, start, steps, at_batch_begin=True):
            raise ValueError(
                f"GradualPruningCallback (frequency={self.frequency}, begin_step={self.begin_step}): {problem}"
            )
        if self.schedule == "tfmot" and self._table is None:
            self.sparsity_at(self.end_step)  # fails now, not mid-training, if TFMOT is missing

    def on_train_batch_begin(self, batch, logs=None):
        step = rewind.global_step(self.model.optimizer) + 1  # TFMOT's count: the t-th batch is step t
        prune, sparsity = self.sparsity_at(step)
        if not prune:
            return
        masks = get_masks(self.model)
        weights = {name: weight.numpy() for name, _, weight in masked_weights(self.model)}
        set_masks(self.model, {name: tfmot_mask(weights[name], sparsity) for name in masks})
        self.updates.append((step, sparsity))
