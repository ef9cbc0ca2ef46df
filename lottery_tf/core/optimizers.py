"""The optimizers a recipe builds: PyTorch-style L2 decay, and loss scaling that counts every step."""

from __future__ import annotations

from lottery_tf.core.keras_compat import batch_counter, keras
from lottery_tf.core.rewind import OffsetSchedule
from lottery_tf.core.schedules import make_schedule


def _with_l2(optimizer_class):
    """``optimizer_class`` with L2 weight decay added to every gradient (PyTorch's
    ``weight_decay``), which momentum and Adam's scaling then act on."""

    class WithL2(optimizer_class):
        def __init__(self, *args, l2=0.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.l2 = l2

        def update_step(self, gradient, variable, learning_rate):
            gradient = gradient + keras.ops.cast(self.l2, variable.dtype) * variable
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "l2": self.l2}

    WithL2.__name__ = WithL2.__qualname__ = f"{optimizer_class.__name__}WithL2"
    return keras.saving.register_keras_serializable(package="lottery_tf")(WithL2)


SGDWithL2 = _with_l2(keras.optimizers.SGD)
AdamWithL2 = _with_l2(keras.optimizers.Adam)


@keras.saving.register_keras_serializable(package="lottery_tf")
class StepCountingLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras's dynamic loss scaling, where a skipped update still counts as a step.

    Keras's ``LossScaleOptimizer`` skips the update when the scaled gradients
    overflow and leaves the step counter where it was, so the counter falls
    behind the batches consumed. lottery_tf defines a step as one training
    batch (as PyTorch's ``GradScaler`` loops do): the learning-rate schedule,
    the data order, evaluation points, checkpoints and rewind steps all count
    batches, whether or not the scaler skipped that batch's update.
    """

    def _stateful_handle_non_finite_grads(self):
        super()._stateful_handle_non_finite_grads()
        self.inner_optimizer.iterations.assign_add(1)

    def _stateless_handle_non_finite_grads(self, optimizer_variables, trainable_variables):
        # JAX's fit (and any stateless step): the same count, on the values the step carries.
        trainable_variables, values = super()._stateless_handle_non_finite_grads(
            optimizer_variables, trainable_variables
        )
        with keras.StatelessScope(state_mapping=list(zip(self.variables, values))) as scope:
            batch_counter(self.inner_optimizer).assign_add(1)
        return trainable_variables, [scope.get_current_value(v) for v in self.variables]


def make_optimizer(training):
    """The optimizer of a :class:`lottery_tf.engine.config.TrainingConfig`.

    A scheduled learning rate is wrapped in :class:`OffsetSchedule` so that
    ``rewind_optimizer="fresh"`` can restart the optimizer at step 0 while the
    schedule continues at step k. Under ``mixed_float16`` the optimizer is
    wrapped in :class:`StepCountingLossScaleOptimizer` (Keras would otherwise
    wrap it in its own loss scaler).
    """
    rate = make_schedule(training)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = OffsetSchedule(rate)
    l2 = training.weight_decay if training.weight_decay_mode == "l2" else 0.0
    decoupled = None if l2 else (training.weight_decay or None)
    if training.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=training.weight_decay)
    elif training.optimizer == "adam":
        optimizer = (
            AdamWithL2(rate, l2=l2, weight_decay=decoupled)
            if l2
            else keras.optimizers.Adam(rate, weight_decay=decoupled)
        )
    else:
        sgd = dict(momentum=training.momentum, nesterov=training.nesterov, weight_decay=decoupled)
        optimizer = SGDWithL2(rate, l2=l2, **sgd) if l2 else keras.optimizers.SGD(rate, **sgd)
    if training.mixed_precision == "mixed_float16":
        optimizer = StepCountingLossScaleOptimizer(optimizer)
    return optimizer
