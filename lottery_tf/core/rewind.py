"""Capture and restore the state a lottery ticket is rewound to, optimizer included.

A rewind point is the value of every model variable except the masks (weights,
biases, BatchNorm statistics) at one training step, keyed by variable path so
it can be saved to disk and restored into a freshly built model.

The optimizer is rewound by :func:`reset_optimizer`, in one of three ways
(``REWIND_OPTIMIZER``):

* ``"fresh"`` (default, as open_lth): the optimizer state a newly built
  optimizer has (zero moments, Adam's own step counter at 0, the initial loss
  scale), with the learning-rate schedule *offset* by k, so the schedule and
  the data order continue at step k while Adam's bias correction starts over.
* ``"reset"``: the same fresh state, but the optimizer's step counter set to k
  (Adam's bias correction then treats zero moments as k steps old).
* ``"restore"``: the optimizer variables as they were at step k.

A *step* is one training batch: :func:`global_step` is the optimizer's counter
plus the offset ``"fresh"`` introduces. Under ``mixed_float16`` the recipe's
:class:`lottery_tf.core.optimizers.StepCountingLossScaleOptimizer` counts the steps
whose update the loss scaler skips, so batch i is still step i.

The reset understands Keras's optimizer wrappers: ``LossScaleOptimizer``
(dynamic scale back to its initial value, growth counter 0, learning rates
kept), exponential moving averages (``use_ema``: each average set to its
weight, which is already rewound and masked) and gradient accumulation
(accumulators zeroed).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

import numpy as np

from lottery_tf.core import naming
from lottery_tf.core.keras_compat import BACKEND, batch_counter, keras, learning_rate_object, moving_averages
from lottery_tf.core.masking import apply_masks, legacy_keras_paths, masked_weights

REWIND_OPTIMIZER = ("fresh", "reset", "restore")
# JAX computes in 32-bit integers unless jax_enable_x64 is set (int64 would be truncated, with a warning).
_STEP_DTYPE = "int32" if BACKEND == "jax" else "int64"


def _mask_ids(model) -> set:
    try:
        return {id(mask) for _, mask, _ in masked_weights(model)}
    except ValueError:  # nothing masked: every variable is state
        return set()


def state_variables(model) -> collections.OrderedDict[str, keras.Variable]:
    """Unique name (:mod:`lottery_tf.core.naming`) -> variable, for every non-mask model variable."""
    masks = _mask_ids(model)
    return collections.OrderedDict((name, v) for name, v in naming.variable_names(model).items() if id(v) not in masks)


def capture(model) -> collections.OrderedDict[str, np.ndarray]:
    """Copies every non-mask model variable: unique name -> numpy array."""
    return collections.OrderedDict(
        (name, np.array(variable.numpy(), copy=True)) for name, variable in state_variables(model).items()
    )


def check_matches(model, state: Mapping[str, np.ndarray]) -> dict:
    """``state`` by unique name (files keyed by Keras paths, written before names were unique, are translated).

    Raises:
        ValueError: Unless ``state`` covers exactly the model's non-mask variables.
    """
    return naming.rename_keys(dict(state), state_variables(model), "Rewind point", legacy_keras_paths(model))


def restore(model, state: Mapping[str, np.ndarray]) -> None:
    """Assigns a captured state to ``model`` and re-applies its current masks.

    Raises:
        ValueError: If the state does not cover exactly the model's variables.
    """
    variables = state_variables(model)
    state = naming.rename_keys(dict(state), variables, "Rewind point", legacy_keras_paths(model))
    for name, variable in variables.items():
        variable.assign(state[name])
    apply_masks(model)


# -- the optimizer ----------------------------------------------------------------


class OffsetSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule read at ``step + offset``.

    The offset is a variable, so a compiled training step sees a new value
    without being traced again. ``reset_optimizer(..., mode="fresh")`` sets it.
    """

    def __init__(self, schedule, offset=0):
        self.schedule = schedule
        self.offset = keras.Variable(int(offset), dtype=_STEP_DTYPE, trainable=False, name="step_offset")

    def __call__(self, step):
        return self.schedule(keras.ops.cast(step, _STEP_DTYPE) + self.offset)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "offset": int(self.offset.numpy())}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["offset"])


def optimizer_chain(optimizer) -> list:
    """The optimizer and the optimizers it wraps (``inner_optimizer``), outermost first."""
    chain = [optimizer]
    while getattr(chain[-1], "inner_optimizer", None) is not None:
        chain.append(chain[-1].inner_optimizer)
    return chain


def _innermost(optimizer):
    return optimizer_chain(optimizer)[-1]


def step_offset(optimizer) -> int:
    """Steps between the optimizer's counter and the training step (``"fresh"`` rewinds)."""
    return int(getattr(_innermost(optimizer), "lottery_step_offset", 0))


def _batch_counter(optimizer):
    # The variable that counts batches; ``iterations`` counts updates, which differ
    # under gradient accumulation.
    return batch_counter(_innermost(optimizer))


def global_step(optimizer) -> int:
    """The training step (batches trained): the optimizer's counter plus its rewind offset."""
    return int(_batch_counter(optimizer).numpy()) + step_offset(optimizer)


def install_offset_schedule(optimizer) -> bool:
    """Makes a scheduled learning rate offsettable (wraps it in :class:`OffsetSchedule`).

    Returns:
        Whether the schedule was replaced (a training function traced before
        must then be traced again). A constant learning rate needs no offset.
    """
    inner = _innermost(optimizer)
    schedule = learning_rate_object(inner)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule) and not isinstance(
        schedule, OffsetSchedule
    ):
        inner.learning_rate = OffsetSchedule(schedule)  # the public setter takes a schedule
        return True
    return False


def _set_offset(optimizer, offset: int) -> None:
    inner = _innermost(optimizer)
    schedule = learning_rate_object(inner)
    if isinstance(schedule, OffsetSchedule):
        schedule.offset.assign(offset)
    elif isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule) and offset:
        raise ValueError(
            "rewind_optimizer='fresh' with a learning-rate schedule needs an offsettable "
            "schedule: call lottery_tf.core.rewind.install_offset_schedule(optimizer) before training"
        )
    inner.lottery_step_offset = int(offset)


def fresh_values(optimizer) -> list[np.ndarray]:
    """What a newly built optimizer of this configuration holds, in ``optimizer.variables`` order.

    Moments, velocities and gradient accumulators are zero, step counters 0,
    a loss scaler's scale is its initial scale, learning-rate variables keep
    their value, and moving averages (``use_ema``) equal the current weights.
    """
    special = {}
    for opt in optimizer_chain(optimizer):
        rate = learning_rate_object(opt)
        if isinstance(rate, keras.Variable):
            special[id(rate)] = np.array(rate.numpy())
        if isinstance(opt, keras.optimizers.LossScaleOptimizer):
            special[id(opt.dynamic_scale)] = np.asarray(opt.initial_scale, opt.dynamic_scale.dtype)
        for weight, average in moving_averages(opt):
            special[id(average)] = np.array(weight.numpy())
    return [special[id(v)] if id(v) in special else np.zeros(v.shape, v.dtype) for v in optimizer.variables]


def optimizer_values(optimizer) -> list[np.ndarray]:
    """Copies of every optimizer variable (for ``"restore"``)."""
    return [np.array(v.numpy(), copy=True) for v in optimizer.variables]


def reset_optimizer(optimizer, step: int, mode: str = "fresh", saved: Sequence[np.ndarray] | None = None) -> None:
    """Rewinds a built optimizer to training step ``step``.

    Args:
        optimizer: A built Keras optimizer, wrappers included.
        step: The training step training continues from (k).
        mode: ``"fresh"``, ``"reset"`` or ``"restore"`` (see the module docstring).
        saved: For ``"restore"``: :func:`optimizer_values` taken at ``step``;
            ``None`` at step 0 means the fresh state.

    Raises:
        ValueError: For an unknown mode, or ``saved`` that does not match.
    """
    if mode not in REWIND_OPTIMIZER:
        raise ValueError(f"rewind_optimizer must be one of {', '.join(REWIND_OPTIMIZER)}; got {mode!r}.")
    variables = optimizer.variables
    if mode == "restore" and (saved is not None or step):
        if saved is None:
            raise ValueError(f"rewind_optimizer='restore' needs the optimizer state saved at step {step}.")
        if len(saved) != len(variables) or any(tuple(v.shape) != np.shape(s) for v, s in zip(variables, saved)):
            raise ValueError("The saved optimizer state does not match the optimizer's variables.")
        values = list(saved)
    else:
        values = fresh_values(optimizer)
    for variable, value in zip(variables, values):
        variable.assign(value)
    if mode == "fresh":
        _set_offset(optimizer, step)
        _batch_counter(optimizer).assign(0)
    else:
        _set_offset(optimizer, 0)
        if mode == "reset":
            _batch_counter(optimizer).assign(step)
