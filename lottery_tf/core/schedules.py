"""Learning-rate schedules: constant, step decay at milestones, cosine; linear warmup.

:func:`learning_rate_at` is the pure definition (tested with literal values);
:class:`LotterySchedule` computes the same thing inside Keras optimizers from
the optimizer's step counter, so rewinding that counter rewinds the schedule.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "step", "cosine")


def learning_rate_at(
    step: int, base: float, kind: str = "constant", total: int = 1, milestones=(), gamma: float = 0.1, warmup: int = 0
) -> float:
    """The learning rate at optimizer step ``step`` (0-based).

    Warmup: ``base * (step + 1) / warmup`` for the first ``warmup`` steps.
    ``step``: ``base * gamma ** (number of milestones <= step)``.
    ``cosine``: from ``base`` at the end of warmup to 0 at ``total``.
    """
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if kind == "step":
        return base * gamma ** sum(1 for m in milestones if step >= m)
    if kind == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


def make_schedule(training):
    """A Keras schedule for a TrainingConfig, or the float rate if constant without warmup."""
    if training.lr_schedule == "constant" and not training.warmup_iterations:
        return training.learning_rate
    return LotterySchedule(
        training.learning_rate,
        training.lr_schedule,
        training.iterations,
        tuple(training.lr_milestones),
        training.lr_gamma,
        training.warmup_iterations,
    )


from lottery_tf.core.keras_compat import keras, ops  # noqa: E402  (after the pure part on purpose)


@keras.saving.register_keras_serializable(package="lottery_tf")
class LotterySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """:func:`learning_rate_at` as a Keras schedule.

    Example:

    >>> schedule = LotterySchedule(0.1, "step", 64000, milestones=(32000, 48000), warmup=500)
    >>> optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    """

    def __init__(self, base, kind="constant", total=1, milestones=(), gamma=0.1, warmup=0):
        if kind not in SCHEDULES:
            raise ValueError(f"Unknown schedule {kind!r}; expected one of {SCHEDULES}.")
        self.base, self.kind, self.total = float(base), kind, int(total)
        self.milestones, self.gamma, self.warmup = tuple(int(m) for m in milestones), float(gamma), int(warmup)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.kind == "step":
            decays = sum(ops.cast(step >= m, "float32") for m in self.milestones) if self.milestones else 0.0
            rate = self.base * ops.power(self.gamma, decays)
        elif self.kind == "cosine":
            progress = ops.minimum(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            rate = self.base * 0.5 * (1.0 + ops.cos(math.pi * ops.maximum(progress, 0.0)))
        else:
            rate = ops.convert_to_tensor(self.base, "float32")
        if self.warmup:
            rate = ops.where(step < self.warmup, self.base * (step + 1.0) / self.warmup, rate)
        return rate

    def get_config(self):
        return {
            "base": self.base,
            "kind": self.kind,
            "total": self.total,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "warmup": self.warmup,
        }
